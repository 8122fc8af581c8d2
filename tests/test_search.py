"""Search: exact results equal NumPy brute force, filters and --other-batches hold, quoting and
injection attempts match literally, and patches added after an index build are found."""

import asyncio
import json
import shutil
from datetime import datetime
from math import isqrt

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from click.testing import CliRunner
from lancedb.expr import col

from clanet_store.cli import main
from clanet_store.pipelines.encode import encode, load_encoder
from clanet_store.pipelines.ingest import ingest
from clanet_store.pipelines.search import build_index
from clanet_store.stores import lance
from clanet_store.stores.embedding_store import EmbeddingStore, embeddings_schema
from clanet_store.stores.filters import parse_filters
from clanet_store.stores.query import vectors

# Three "cell lines" (one with a quote in its name), each one image of a real export.
IMAGES = {
    "A431": "A431/A431_B1_1_00d00h00m.jpg",
    "O'Neil-1": "A549/A549_A1_1_00d00h00m.jpg",
    "BT474": "BT474/BT474_B1_1_00d00h00m.jpg",
}


@pytest.fixture(scope="module")
def store_path(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("export")
    for line, rel in IMAGES.items():
        (root / line).mkdir()
        shutil.copy(shared_data / "azgcb_sample" / rel, root / line / rel.split("/")[1])
    path = tmp_path_factory.mktemp("store") / "store"
    ingest(root, path, workers=1)
    encode(path, load_encoder(None, "vit_tiny_patch16_224", "cpu"), batch_size=32)
    return path


def _brute_force(matrix: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    sims = matrix @ query / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(query))
    return np.argsort(1 - sims, kind="stable")[:k], 1 - np.sort(sims)[::-1][:k]


@pytest.mark.realdata
def test_exact_search_equals_brute_force(store_path):
    es = EmbeddingStore(store_path)
    table = es.query("embeddings").to_arrow()
    matrix = vectors(table)
    ids = table.column("patch_id").to_pylist()
    for q in (0, 17, len(ids) - 1):
        found = es.search(matrix[q], k=8)
        order, dist = _brute_force(matrix, matrix[q], 8)
        assert set(found["patch_id"]) == {ids[i] for i in order}
        np.testing.assert_allclose(found["distance"].to_numpy(), dist, atol=1e-4)


@pytest.mark.realdata
def test_filters_and_other_batches(store_path):
    es = EmbeddingStore(store_path)
    pid = (
        es.query("embeddings")
        .where(col("cell_line") == "A431")
        .select("patch_id")
        .to_polars()["patch_id"][0]
    )
    assert es.patch_keys(pid)["cell_line"] == "A431"
    found = es.search(pid, k=50, other_batches=True)
    assert found.height > 0 and "A431" not in set(found["cell_line"])
    assert pid not in set(found["patch_id"])
    schema = es.table(es.encoder().table).schema
    only = parse_filters(["cell_line=O'Neil-1"], schema)
    found = es.search(pid, k=50, where=only)
    assert found.height > 0 and set(found["cell_line"]) == {"O'Neil-1"}
    found = es.search(pid, k=5, where=parse_filters(["rank<2"], schema))
    assert set(found["rank"]) <= {0, 1}


@pytest.mark.realdata
@pytest.mark.parametrize(
    "value",
    ["A431' OR '1'='1", "%", "A431; DROP TABLE embeddings", "' OR cell_line != '", "A4%"],
)
def test_injection_attempts_match_literally(store_path, value):
    es = EmbeddingStore(store_path)
    pid = es.query("embeddings").select("patch_id").to_polars()["patch_id"][0]
    condition = parse_filters([f"cell_line={value}"], es.table(es.encoder().table).schema)
    found = es.search(pid, k=10, where=condition)
    assert found.height == 0
    rows = es.table(es.encoder().table).count_rows()
    assert rows == es.query("patches").to_polars().height  # nothing dropped


@pytest.mark.realdata
def test_cli_search_json_parquet_and_gallery(store_path, tmp_path):
    es = EmbeddingStore(store_path)
    pid = es.query("embeddings").select("patch_id").to_polars()["patch_id"][3]
    runner = CliRunner()
    args = ["search", "--store", str(store_path), "--patch-id", pid, "-k", "4"]
    res = runner.invoke(
        main,
        [
            *args,
            "--where",
            "cell_line!=BT474",
            "--format",
            "json",
            "--show",
            str(tmp_path / "g.png"),
        ],
    )
    assert res.exit_code == 0, res.output
    payload = json.loads(res.output)
    assert len(payload["results"]) == 4
    assert {
        "patch_id",
        "cell_line",
        "batch",
        "well",
        "location",
        "timepoint_h",
        "distance",
        "path",
    } <= set(payload["results"][0])
    assert all(r["cell_line"] != "BT474" for r in payload["results"])
    assert (tmp_path / "g.png").stat().st_size > 0
    res = runner.invoke(main, [*args, "--format", "parquet", "--out", str(tmp_path / "r.parquet")])
    assert res.exit_code == 0, res.output
    assert pl.read_parquet(tmp_path / "r.parquet").height == 4
    res = runner.invoke(main, [*args, "--where", "nonsense"])
    assert res.exit_code != 0 and "column=value" in res.output


@pytest.mark.realdata
def test_patch_added_after_index_is_found(store_path, tmp_path):
    path = tmp_path / "store"
    shutil.copytree(store_path, path)
    es = EmbeddingStore(path)
    model = es.encoder()
    table = es.table(model.table)
    rng = np.random.default_rng(0)
    n, dim = 2000, model.embedding_dim
    filler = pa.table(
        {
            "patch_id": [f"filler{i}" for i in range(n)],
            "image_id": ["filler"] * n,
            "cell_line": ["Filler"] * n,
            "batch": [f"b{i % 7}" for i in range(n)],
            "experiment": ["x"] * n,
            "well": ["A1"] * n,
            "location": pa.array([1] * n, pa.int32()),
            "crop": pa.array([None] * n, pa.int32()),
            "sequence_id": ["s"] * n,
            "timepoint_h": [0.0] * n,
            "rank": pa.array([0] * n, pa.int16()),
            "density": pa.array([1.0] * n, pa.float32()),
            "embedding": pa.FixedSizeListArray.from_arrays(
                pa.array(rng.normal(size=n * dim).astype(np.float32)), dim
            ),
            "model_id": [model.model_id] * n,
            "created_at": [datetime(2026, 1, 1)] * n,
        }
    ).cast(embeddings_schema(dim))
    old = table.to_arrow().filter(pa.compute.field("cell_line") == "A431")
    table.delete((col("cell_line") == "A431").to_sql())
    table.add(filler)
    report = build_index(path, exact_below=0)
    assert report.vector_index and report.vector_params["num_partitions"] == isqrt(report.rows) // 2
    table.add(old)  # after the index build: these rows are not in the index yet
    q = vectors(old)[5]
    found = es.search(q, k=3)
    assert found["patch_id"][0] == old.column("patch_id")[5].as_py()
    assert found["distance"][0] == pytest.approx(0.0, abs=1e-4)


@pytest.mark.realdata
def test_second_model_in_the_same_table(store_path, tmp_path):
    """search leaves the model_id condition out while one model owns the table: a second model's
    rows never come back, whether written before its models row (a search racing encode) or
    after it (seen by a store object that searched before)."""
    path = tmp_path / "store"
    shutil.copytree(store_path, path)
    es = EmbeddingStore(path)
    first = es.encoder()
    table = es.table(first.table)
    rows = table.to_arrow()
    q = vectors(rows)[0]
    assert es.search(q, k=1, model_id=first.model_id)["patch_id"][0] == rows["patch_id"][0].as_py()
    copy = rows.drop_columns(["model_id", "patch_id"])
    copy = copy.append_column("model_id", pa.array(["second"] * rows.num_rows)).append_column(
        "patch_id", pa.array([f"second-{p}" for p in rows["patch_id"].to_pylist()])
    )
    table.add(copy.select(rows.schema.names).cast(rows.schema))
    found = es.search(q, k=6, model_id=first.model_id)
    assert found.height == 6 and not any(p.startswith("second") for p in found["patch_id"])
    models = es.table("models")
    lance.upsert(
        models, lance.to_arrow([{**first.as_dict(), "model_id": "second"}], "models"), "model_id"
    )
    found = es.search(q, k=6, model_id=first.model_id)
    assert found.height == 6 and not any(p.startswith("second") for p in found["patch_id"])
    found = es.search(q, k=6, model_id="second")
    assert found.height == 6 and all(p.startswith("second") for p in found["patch_id"])
    assert found["path"].null_count() == 0


@pytest.mark.realdata
def test_result_keys_from_the_images_table_and_later_images_found(store_path, tmp_path):
    """A hit's line, batch, well, location, time and path come from its image's row (a memo of
    the images table) and equal its embedding row's; an image ingested after a store object's
    first search is read when it first shows up; a hit without an images row gets nulls."""
    path = tmp_path / "store"
    shutil.copytree(store_path, path)
    es = EmbeddingStore(path)
    rows = es.query("embeddings").to_arrow()
    q = vectors(rows)[0]
    found = es.search(q, k=12)
    keys = ["patch_id", "cell_line", "batch", "well", "location", "timepoint_h", "rank"]
    stored = pl.from_arrow(rows.select(keys))
    expected = found.select("patch_id").join(stored, on="patch_id").sort("patch_id")
    assert found.select(keys).sort("patch_id").equals(expected)
    paths = dict(es.query("images").select("image_id", "path").to_polars().iter_rows())
    assert found["path"].to_list() == [paths[i] for i in found["image_id"]]

    image = es.table("images").to_arrow().slice(0, 1)
    new = {"image_id": "new-image", "path": "NewLine/new.jpg", "cell_line": "NewLine"}
    for name, value in new.items():
        image = image.set_column(image.schema.get_field_index(name), name, pa.array([value]))
    es.table("images").add(image)
    first = rows.slice(0, 1)
    for image_id, patch_id in (("new-image", "new-patch"), ("no-such-image", "orphan-patch")):
        row = first.set_column(first.schema.get_field_index("image_id"), "image_id", [[image_id]])
        row = row.set_column(row.schema.get_field_index("patch_id"), "patch_id", [[patch_id]])
        es.table(es.encoder().table).add(row)
    hit = es.search(q, k=1, where=col("patch_id") == "new-patch").row(0, named=True)
    assert (hit["path"], hit["cell_line"], hit["image_id"]) == (new["path"], "NewLine", "new-image")
    orphan = es.search(q, k=1, where=col("patch_id") == "orphan-patch").row(0, named=True)
    assert orphan["path"] is None and orphan["cell_line"] is None


@pytest.mark.realdata
def test_search_inside_a_running_event_loop(store_path):
    """search runs LanceDB's async API on LanceDB's own background loop, so it also works where
    an event loop is already running (a Jupyter notebook, an async web handler)."""
    es = EmbeddingStore(store_path)
    q = vectors(es.query("embeddings").to_arrow())[3]

    async def inside() -> pl.DataFrame:
        return es.search(q, k=4)

    assert asyncio.run(inside()).equals(es.search(q, k=4))
