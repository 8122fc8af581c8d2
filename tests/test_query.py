"""The store's one query shape (`stores.query`), the typed `EncoderRecord` and `EmbeddingStore`
holding its `PatchStore` (issue 20), on a small store written by hand (no images needed)."""

from __future__ import annotations

import json
from datetime import datetime

import numpy as np
import pyarrow as pa
import pytest
from lancedb.expr import col

from clanet_store.errors import ClanetError
from clanet_store.pipelines.encode import META_COLUMNS, embedding_rows
from clanet_store.stores import lance
from clanet_store.stores.embedding_store import EmbeddingStore, embeddings_schema
from clanet_store.stores.encoder_record import EncoderRecord
from clanet_store.stores.patch_store import PatchStore

DIM, N = 4, 6
LINES = ["A549", "O'Brien", "A549", "x; DROP TABLE", "A549", "O'Brien"]


def _model(model_id: str, created: int, config: dict) -> dict:
    return {"model_id": model_id, "arch": "hand", "img_size": 112, "embedding_dim": DIM,
            "config": json.dumps(config), "weights_source": "by hand", "weights_format": "timm",
            "random_init": False, "table": f"embeddings_{DIM}",
            "created_at": datetime(2026, 1, created)}  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[EmbeddingStore, dict[str, np.ndarray]]:
    """Three encoders sharing one table: ``old``, ``new`` and ``fitted`` (fitted to a split's
    training side: never the default), each with N vectors."""
    path = tmp_path_factory.mktemp("query") / "store"
    patch_store = PatchStore(path, create=True)
    models = lance.open_table(patch_store.db, "models", create=True)
    patch_store.register_table("models")
    rows = [_model("old", 1, {}), _model("new", 2, {}), _model("fitted", 3, {"fit_sequences": []})]
    lance.upsert(models, lance.to_arrow(rows, "models"), "model_id")
    schema = embeddings_schema(DIM)
    table = lance.open_table(patch_store.db, f"embeddings_{DIM}", create=True, schema=schema)
    patch_store.register_table(f"embeddings_{DIM}")
    filler = {pa.string(): "x", pa.int32(): 1, pa.float64(): 0.0, pa.float32(): 0.0}
    meta = {f.name: [filler.get(f.type)] * N for f in schema if f.name in META_COLUMNS}
    meta |= {"patch_id": [f"p{i}" for i in range(N)], "cell_line": LINES, "rank": range(N)}
    keys = pa.table({name: pa.array(meta[name], schema.field(name).type) for name in META_COLUMNS})
    vectors = {}
    for seed, model in enumerate(("old", "new", "fitted")):
        vectors[model] = np.random.default_rng(seed).standard_normal((N, DIM), dtype=np.float32)
        table.add(embedding_rows(keys, vectors[model], model, schema))
    return EmbeddingStore(path), vectors


def test_embeddings_query_reads_one_encoders_rows(store):
    es, vectors = store
    np.testing.assert_array_equal(es.query("embeddings").to_numpy(), vectors["new"])
    np.testing.assert_array_equal(es.query("embeddings", "old").to_numpy(), vectors["old"])
    rows = es.query("embeddings", "fitted").select("patch_id", "model_id").to_polars()
    assert rows.columns == ["patch_id", "model_id"] and set(rows["model_id"]) == {"fitted"}
    arrow = es.query("embeddings").select("embedding").to_arrow()
    assert arrow.column_names == ["embedding"] and arrow.num_rows == N


def test_query_is_immutable_and_conditions_add_up(store):
    es, vectors = store
    base = es.query("embeddings")
    a549 = base.where(col("cell_line") == "A549")
    both = a549.where(col("rank") >= 2).where(None)
    assert base.condition is None and base.columns is None
    assert a549.select("patch_id").columns == ("patch_id",) and a549.columns is None
    assert both.select("patch_id").to_polars()["patch_id"].to_list() == ["p2", "p4"]
    np.testing.assert_array_equal(a549.to_numpy(), vectors["new"][[0, 2, 4]])
    assert a549.to_numpy("rank").tolist() == [0, 2, 4]  # a scalar column: one value per row


def test_values_with_quotes_or_sql_match_literally(store):
    es, _ = store
    for value in ("O'Brien", "x; DROP TABLE"):
        query = es.query("embeddings").where(col("cell_line") == value).select("cell_line")
        found = query.to_polars()["cell_line"].to_list()
        assert found == [v for v in LINES if v == value]
    assert es.query("embeddings").to_arrow().num_rows == N  # nothing was dropped


def test_encoder_records_are_the_models_rows(store):
    es, _ = store
    records = es.encoders()
    assert [r.model_id for r in records] == ["old", "new", "fitted"]  # oldest first
    stored = lance.read(es.table("models")).sort("created_at").to_dicts()
    assert [r.as_dict() for r in records] == stored
    assert all(isinstance(r, EncoderRecord) for r in records)
    assert [r.fitted_to_split for r in records] == [False, False, True]
    assert es.encoder().model_id == "new"  # the latest not fitted to one split
    assert es.encoder("fitted").settings == {"fit_sequences": []}
    with pytest.raises(ClanetError, match=r"no embeddings of model nope .*known: old, new, fitted"):
        es.encoder("nope")


def test_embedding_store_holds_a_patch_store(store):
    es, _ = store
    assert not isinstance(es, PatchStore) and isinstance(es.patch_store, PatchStore)
    assert es.path == es.patch_store.path
    assert es.query("images").to_polars().height == 0  # every table through one query
    with pytest.raises(ClanetError, match="model_id applies to embeddings only"):
        es.query("images", "old")
