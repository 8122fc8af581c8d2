"""Where the benchmarks read real images: ``../shared/data`` beside the repository, never copied
into it (``../shared/data/README.md`` describes the sets)."""

from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
AZGCB = SHARED_DATA / "azgcb_sample"
LIVECELL = SHARED_DATA / "livecell_shsy5y"
