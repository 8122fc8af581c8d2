"""``--format json`` of every command, byte for byte, against golden files (issue 20).

One small synthetic store (3 lines x 2 batches x 2 positions x 3 time points, random-init ViT-Ti)
goes through every command that prints JSON, in an order where each reads what the one before
wrote. The golden files in ``tests/data/json_golden/`` were written by the code before the issue
20 refactor (typed results, one progress protocol, thin CLI), so a refactor that changes any
output fails here. Only what differs between two runs of the same code is masked, in the text
(the code prints it unmasked): the temporary folder, wall-clock times, timestamps and versions.
Floats are compared to 8 significant digits: results of BLAS reductions (an SVD's effective rank)
differ in their last digits with the number of threads (CI runs 2, the golden files were written
with 1), and that is no change of output.

To rewrite the golden files after an intended output change: ``CLANET_WRITE_GOLDEN=1 pytest
tests/test_json_golden.py`` (then read the diff).
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_runs import SMALL as DEMO  # the demo at its tests' reduced size

from clanet_store import __version__
from clanet_store.cli import main
from clanet_store.stores.embedding_store import EmbeddingStore

GOLDEN = Path(__file__).parent / "data" / "json_golden"
WRITE = os.environ.get("CLANET_WRITE_GOLDEN") == "1"
ARCH = "vit_tiny_patch16_224"
# Keys whose values change from run to run of the same code: times, rates, timestamps, sizes on
# disk (LanceDB's files carry ids and timestamps, the report's PNGs t-SNE layouts) and table
# versions (how many commits an ingest made depends on when its Dask tasks finished).
VOLATILE = re.compile(
    r'("(?:[a-z_]*seconds|[a-z_]*_per_s|[a-z_]*_at|size_bytes|bytes|[a-z_]*_time|table_version)": )'
    r'(-?[0-9.eE+-]+|"[^"\n]*")'
)
VOLATILE_BLOCKS = re.compile(r'("table_versions": )\{[^{}]*\}')
# The demo's one-epoch DINO run differs in its last digits from run to run, and its search stage
# draws query patches from the table's row order (the order ingest's Dask tasks finished in): its
# floats, patch ids and search neighbours are masked; its keys, counts, names, model ids and
# verdicts are not.
FLOAT = re.compile(r'^(\s*(?:"[^"\n]*": )?)-?\d+\.\d+(?:[eE][-+]?\d+)?(,?)$', re.MULTILINE)
NUMBER = re.compile(r'^(\s*(?:"[^"\n]*": )?)(-?\d+\.\d+(?:[eE][-+]?\d+)?)(,?)$', re.MULTILINE)
PATCH_ID = re.compile(r'("patch_id": )"[0-9a-f]+"')
RUN_TO_RUN = {"demo"}
REPO = Path(__file__).resolve().parents[1]


def _commands(paths: dict[str, Path], patch_id: str) -> list[tuple[str, str]]:
    """(name, command line) in order; ``{name}`` is replaced by ``paths[name]``."""
    train = "train --store {store} --split batch-separated --repeat 1 --epochs 3"
    demo = " ".join(f"--set {shlex.quote(s)}" for s in DEMO).replace("{", "{{").replace("}", "}}")
    return [
        ("synth", "synth {export} --lines 3 --batches 2 --positions 2 --timepoints 3"),
        ("scan", "scan {export} --out {tmp}/manifest.parquet"),
        ("patches", "patches {image} --k 5 --out {tmp}/patches.png"),
        ("ingest", "ingest --store {store} {export} --workers 1"),
        ("ingest-again", "ingest --store {store} {export} --workers 1"),
        ("encode", f"encode --store {{store}} --arch {ARCH} --seed 0"),
        ("encode-classic", "encode --store {store} --encoder classic"),
        ("info", "info --store {store}"),
        ("evaluate-encoder", "evaluate-encoder --store {store}"),
        ("search", f"search --store {{store}} --patch-id {patch_id} -k 5 --other-batches"),
        ("search-image", "search --store {store} --image {image} --box 0,0 -k 3"),
        ("export-profiles", "export-profiles --store {store} --level image --out {tmp}/p.parquet"),
        ("train", train + " --out {tmp}/models/gated.pt"),
        ("train-mean", train + " --aggregator mean --no-tss --out {tmp}/models/mean.pt"),
        ("evaluate", "evaluate --store {store} --model {tmp}/models/gated.pt"),
        ("predict", "predict --store {store} --model {tmp}/models/gated.pt --where batch=VID1501"),
        (
            "ablation",
            "ablation --store {store} --repeats 1 --epochs 2 --out {tmp}/ablation/results.md",
        ),
        (
            "ablation-transductive",
            "ablation --store {store} --repeats 1 --epochs 2 --transductive "
            "--out {tmp}/ablation-t/results.md",
        ),
        (
            "qc",
            "qc --store {store} --reference batch=VID1501 --new batch=VID1502 --window 2 "
            "--permutations 50 --heatmap {tmp}/heatmap.png",
        ),
        ("authenticate-evaluate", "authenticate --store {store} --evaluate --false-alarm 0.5"),
        (
            "authenticate",
            "authenticate --store {store} --new batch=VID1501 --claimed-from-labels "
            "--false-alarm 0.5",
        ),
        ("corrupt", "corrupt {export} {tmp}/defocus --kind defocus --severity 2"),
        (
            "ssl-train",
            "ssl-train --store {store} --out {tmp}/ssl.pt --epochs 1 --batch-size 8 --k 1 "
            f"--arch {ARCH}",
        ),
        ("index", "index --store {store}"),
        ("report", "report --store {store} --model {tmp}/models/gated.pt --out {tmp}/r.html"),
        ("repair", "repair --store {store}"),
        ("demo", f"demo --out {{tmp}}/demo {demo}"),
    ]


# The 1-epoch ssl-train collapses (a random init): exit 1 after its JSON summary.
EXIT_CODES = {"ssl-train": 1}


def _invoke(name: str, command: str, paths: dict[str, Path]) -> str:
    args = shlex.split(command.format(**{k: shlex.quote(str(p)) for k, p in paths.items()}))
    result = CliRunner().invoke(main, [*args, "--format", "json"])
    assert result.exit_code == EXIT_CODES.get(name, 0), f"{command}: {result.output}"
    return result.stdout


def _mask(name: str, text: str, tmp: Path, data: Path) -> str:
    """The output with what differs between runs of the same code replaced by placeholders."""
    for path, placeholder in ((tmp, "<TMP>"), (data, "<DATA>"), (REPO, "<REPO>")):
        text = text.replace(str(path), placeholder)
    text = VOLATILE.sub(r'\1"<MASKED>"', text.replace(__version__, "<VERSION>"))
    text = VOLATILE_BLOCKS.sub(r'\1"<MASKED>"', text)
    if name in RUN_TO_RUN:
        text = PATCH_ID.sub(r'\1"<ID>"', FLOAT.sub(r'\1"<FLOAT>"\2', text))
        run = json.loads(text)
        for stage in run["stages"]:
            if stage["stage"] == "search":
                stage["summary"]["queries"] = "<VARIES>"
        text = json.dumps(run, indent=2) + "\n"
    return text


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, shared_data) -> dict[str, str]:
    """Every command's masked JSON output, by name."""
    tmp = tmp_path_factory.mktemp("golden")
    image = shared_data / "azgcb_sample" / "A431" / "A431_B1_1_00d00h00m.jpg"
    paths = {"tmp": tmp, "export": tmp / "export", "store": tmp / "store", "image": image}
    result: dict[str, str] = {}
    patch_id = ""
    for name, command in _commands(paths, "{patch_id}"):
        if "{patch_id}" in command:
            command = command.replace("{patch_id}", patch_id)
        if name == "repair":  # a store whose store.json was lost
            (paths["store"] / "store.json").unlink()
        result[name] = _mask(name, _invoke(name, command, paths), tmp, shared_data)
        if name == "encode-classic":
            patches = EmbeddingStore(paths["store"]).query("patches").select("patch_id").to_polars()
            patch_id = patches.sort("patch_id")["patch_id"][0]
    return result


NAMES = [name for name, _ in _commands({}, "")]


def _digits(text: str) -> str:
    """Every float of the JSON text written to 8 significant digits."""
    return NUMBER.sub(lambda m: f"{m[1]}{float(m[2]):.8g}{m[3]}", text)


@pytest.mark.realdata
@pytest.mark.parametrize("name", NAMES)
def test_json_output_is_unchanged(outputs, name):
    path = GOLDEN / f"{name}.json"
    if WRITE:
        GOLDEN.mkdir(parents=True, exist_ok=True)
        path.write_text(outputs[name])
    golden, output = _digits(path.read_text()), _digits(outputs[name])
    diff = difflib.unified_diff(golden.splitlines(), output.splitlines(), lineterm="")
    assert output == golden, f"{name}: --format json differs from {path}:\n" + "\n".join(
        list(diff)[:60]
    )
    json.loads(outputs[name])  # still JSON after masking
