"""export-profiles: Parquet and AnnData read back equal the store's embeddings and keys at every
level; pycytominer's aggregate and normalize run on the Parquet output."""

import json
from datetime import datetime

import anndata
import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from click.testing import CliRunner

from clanet_store.cli import main
from clanet_store.learn.encoder_metrics import level_rows
from clanet_store.pipelines.encode import META_COLUMNS, embedding_rows
from clanet_store.pipelines.export_profiles import (
    LEVEL_METADATA,
    METADATA_PREFIX,
    export_profiles,
    feature_names,
)
from clanet_store.pipelines.prefetch import prefetched
from clanet_store.stores import lance
from clanet_store.stores.embedding_store import EmbeddingStore, embeddings_schema
from clanet_store.stores.patch_store import PatchStore

DIM, PATCHES, TOP_K = 24, 5, 3
MODEL = "hand-model"


def _store(path, images: int = 36) -> None:
    """A store with ``images`` x PATCHES embeddings of one model: 3 lines x 2 batches, wells of
    two fields, three time points per field (no images table rows: paths are null)."""
    store = PatchStore(path, create=True)
    models = lance.open_table(store.db, "models", create=True)
    store.register_table("models")
    now = datetime(2026, 1, 1)
    row = {"model_id": MODEL, "arch": "hand", "img_size": 112, "embedding_dim": DIM,
           "config": "{}", "weights_source": "by hand", "weights_format": "timm",
           "random_init": False, "table": f"embeddings_{DIM}", "created_at": now}  # fmt: skip
    lance.upsert(models, lance.to_arrow([row], "models"), "model_id")
    schema = embeddings_schema(DIM)
    table = lance.open_table(store.db, f"embeddings_{DIM}", create=True, schema=schema)
    store.register_table(f"embeddings_{DIM}")
    image = np.repeat(np.arange(images), PATCHES)
    field = image // 3  # three time points per field
    n = len(image)
    meta = {
        "patch_id": [f"p{i:04d}" for i in range(n)],
        "image_id": [f"i{v:03d}" for v in image],
        "cell_line": [f"L{v % 3}" for v in field],
        "batch": [f"b{v // 6 % 2}" for v in field],
        "experiment": [f"e{v // 6 % 2}" for v in field],
        "well": [f"A{v // 2 + 1}" for v in field],
        "location": (field % 2 + 1).astype(np.int32),
        "crop": pa.nulls(n, pa.int32()),
        "sequence_id": [f"s{v:02d}" for v in field],
        "timepoint_h": (image % 3 * 6.0),
        "rank": np.tile(np.arange(PATCHES, dtype=np.int16), images),
        "density": np.linspace(0, 1, n, dtype=np.float32),
    }
    x = np.random.default_rng(0).standard_normal((n, DIM), dtype=np.float32)
    # Two commits, so the table has two fragments and chunks cross them.
    half = n // 2
    for part in (slice(0, half), slice(half, n)):
        rows = pa.table(meta).select(META_COLUMNS).slice(part.start, part.stop - part.start)
        table.add(embedding_rows(rows, x[part], MODEL, schema))


def _expected(path, level: str) -> tuple[np.ndarray, pl.DataFrame]:
    """The level's vectors and keys computed from the whole store at once (evaluate-encoder's
    way), sorted by the level's id."""
    table = EmbeddingStore(path).query("embeddings").select(*META_COLUMNS, "embedding").to_arrow()
    keys = pl.from_arrow(table.drop_columns(["embedding"]))
    x = np.asarray(table["embedding"].to_pylist(), np.float32)
    vectors, rows = level_rows(x, keys, TOP_K)[level]
    rows = keys if level == "patch" else rows
    key = {"patch": "patch_id", "image": "image_id", "sequence": "sequence_id"}[level]
    order = np.argsort(rows[key].to_numpy())
    return vectors[order], rows[order]


@pytest.mark.parametrize("level", ["patch", "image", "sequence"])
def test_parquet_and_anndata_equal_the_store(tmp_path, level):
    path = tmp_path / "store"
    _store(path)
    x, rows = _expected(path, level)
    key = {"patch": "patch_id", "image": "image_id", "sequence": "sequence_id"}[level]
    features = feature_names(DIM)

    out = tmp_path / f"{level}.parquet"
    # Small chunks: several per export, sequences never split.
    result = export_profiles(path, out, level, "parquet", top_k=TOP_K, chunk_rows=16)
    assert result.rows == len(x) and result.features == DIM and result.model_id == MODEL
    frame = pl.read_parquet(out).sort(METADATA_PREFIX + key)
    meta = [METADATA_PREFIX + c for c in LEVEL_METADATA[level]]
    assert frame.columns == [*meta, *features]
    np.testing.assert_allclose(frame.select(features).to_numpy(), x, rtol=1e-6)
    for c in ("sequence_id", "cell_line", "batch", "well"):
        assert frame[METADATA_PREFIX + c].to_list() == rows[c].to_list()
    assert (
        frame[METADATA_PREFIX + "path"].null_count() == frame.height
        if level != "sequence"
        else True
    )

    out = tmp_path / f"{level}.h5ad"
    export_profiles(path, out, level, "anndata", top_k=TOP_K, chunk_rows=16)
    adata = anndata.read_h5ad(out)
    order = np.argsort(adata.obs_names.to_numpy())
    np.testing.assert_allclose(adata.X[order], x, rtol=1e-6)
    assert list(adata.var_names) == features
    assert list(adata.obs_names[order]) == rows[key].to_list()
    for c in {"cell_line", "batch", "well", "sequence_id"} - {key}:
        assert adata.obs[c].to_numpy()[order].tolist() == rows[c].to_list()


def test_image_keys_and_time(tmp_path):
    """The image level carries the image's location and time, the patch level its rank."""
    path = tmp_path / "store"
    _store(path, images=6)
    out = tmp_path / "i.parquet"
    export_profiles(path, out, "image", top_k=TOP_K)
    frame = pl.read_parquet(out).sort("Metadata_image_id")
    assert frame["Metadata_timepoint_h"].to_list() == [0.0, 6.0, 12.0] * 2
    assert frame["Metadata_location"].to_list() == [1, 1, 1, 2, 2, 2]
    assert frame.height == 6


def test_pycytominer_aggregate_and_normalize_run_on_the_parquet(tmp_path):
    from pycytominer import aggregate, normalize

    path = tmp_path / "store"
    _store(path)
    out = tmp_path / "p.parquet"
    export_profiles(path, out, "patch")
    profiles = pl.read_parquet(out).to_pandas()
    features = feature_names(DIM)
    wells = aggregate(
        profiles,
        strata=["Metadata_cell_line", "Metadata_batch", "Metadata_well"],
        features=features,
        operation="median",
    )
    assert (
        len(wells)
        == profiles[["Metadata_cell_line", "Metadata_batch", "Metadata_well"]]
        .drop_duplicates()
        .shape[0]
    )
    expected = profiles.groupby(["Metadata_cell_line", "Metadata_batch", "Metadata_well"])[
        features[0]
    ].median()
    got = wells.set_index(["Metadata_cell_line", "Metadata_batch", "Metadata_well"])[features[0]]
    np.testing.assert_allclose(
        got.sort_index().to_numpy(), expected.sort_index().to_numpy(), rtol=1e-5
    )
    normal = normalize(profiles, features=features, meta_features="infer", method="standardize")
    values = normal[features].to_numpy()
    np.testing.assert_allclose(values.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(values.std(axis=0), 1, atol=1e-2)
    assert "Metadata_patch_id" in normal.columns


def _ok(args: list[str]):
    """Run the CLI in-process; it must succeed. Returns click's result."""
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return result


def test_cli_writes_and_reports(tmp_path):
    path = tmp_path / "store"
    _store(path, images=6)
    out = tmp_path / "s.h5ad"
    args = ["export-profiles", "--store", str(path), "--level", "sequence", "--to"]
    report = json.loads(_ok([*args, "anndata", "--out", str(out), "--format", "json"]).output)
    assert report["rows"] == 2 and report["level"] == "sequence" and report["features"] == DIM
    assert anndata.read_h5ad(out).shape == (2, DIM)
    text = _ok([*args, "parquet", "--out", str(tmp_path / "s.parquet")]).output
    assert "2 sequence rows" in text
    bad = CliRunner().invoke(
        main, [*args, "parquet", "--out", str(tmp_path / "x.parquet"), "--model-id", "nope"]
    )
    assert bad.exit_code == 1 and "no embeddings of model nope" in bad.output
    assert not (tmp_path / "x.parquet").exists()
    for fmt in ("parquet", "anndata"):
        missing = tmp_path / "no" / "such" / "folder.out"
        bad = CliRunner().invoke(main, [*args, fmt, "--out", str(missing)])
        assert bad.exit_code == 1 and "cannot write" in bad.output, bad.output
        assert len(bad.output.strip().splitlines()) == 1


def test_prefetched_keeps_order_raises_and_stops():
    """The read-ahead thread of export-profiles (and encode): items in order, an error of the
    producer raised in the consumer, and a consumer that stops early ends the thread."""
    assert list(prefetched(iter(range(50)), 2)) == list(range(50))

    def failing():
        yield 1
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(prefetched(failing(), 1))
    produced = []

    def endless():
        for i in range(10**9):
            produced.append(i)
            yield i

    items = prefetched(endless(), 1)
    assert next(items) == 0
    items.close()  # returns once the thread has ended
    assert len(produced) <= 3  # the item taken, the queued one and the one blocked on put
