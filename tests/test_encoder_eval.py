"""evaluate-encoder: health and cross-batch metrics on embeddings built by hand (in arrays and
written into a real store), against copairs, and the CLI on a small real store."""

import json
import shutil
from datetime import datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from click.testing import CliRunner

from clanet_store.cli import main
from clanet_store.learn.encoder_metrics import (
    cross_batch_metrics,
    exclusion_groups,
    expected_ap,
    field_bootstrap_ci,
)
from clanet_store.models.health import embedding_health
from clanet_store.pipelines.evaluate_encoder import (
    evaluate_encoders,
    latest_evaluations,
)
from clanet_store.schemas import load_schema
from clanet_store.stores import lance
from clanet_store.stores.embedding_store import EmbeddingStore, embeddings_schema
from clanet_store.stores.patch_store import PatchStore

LINES, BATCHES, WELLS, FIELDS, FRAMES = 4, 3, 2, 2, 6


def _layout(
    batches: int = BATCHES, lines: int = LINES, frames: int = FRAMES
) -> dict[str, np.ndarray]:
    """Labels of lines x batches x WELLS wells x FIELDS fields x frames images (one patch each)."""
    rows = [
        (line, b, w, f, t)
        for line in range(lines)
        for b in range(batches)
        for w in range(WELLS)
        for f in range(FIELDS)
        for t in range(frames)
    ]
    a = np.array(rows)
    return {
        "line_id": a[:, 0],
        "batch_id": a[:, 0] * batches + a[:, 1],  # every (line, batch) its own experiment
        "cell_line": np.array([f"L{v}" for v in a[:, 0]]),
        "batch": np.array([f"b{v}" for v in a[:, 1]]),
        "well": np.array([f"W{v}" for v in a[:, 2]]),
        "sequence_id": np.array(["-".join(map(str, r[:4])) for r in rows]),
        "image_id": np.array(["-".join(map(str, r)) for r in rows]),
    }


def _vectors(labels: np.ndarray, dim: int = 32, noise: float = 0.3, seed: int = 0) -> np.ndarray:
    """A random direction per label value plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(labels.max() + 1, dim))
    return (directions[labels] + noise * rng.normal(size=(len(labels), dim))).astype(np.float32)


def _metrics(x: np.ndarray, lab: dict[str, np.ndarray]):
    return cross_batch_metrics(
        x, lab["cell_line"], lab["batch"], lab["well"], lab["sequence_id"], seed=0
    )


def test_identical_vectors_are_collapsed_and_spread_ones_are_not():
    same = np.tile(np.random.default_rng(0).normal(size=64), (500, 1))
    h = embedding_health(same)
    assert h.collapsed and h.cosine_distance_median < 1e-6 and h.effective_rank == 0.0
    assert "COLLAPSED" in h.summary() and h.warning() is not None
    # Nearly identical (a random-init ViT: median ~0.001) is collapsed too.
    near = same + 0.01 * np.random.default_rng(1).normal(size=same.shape)
    assert embedding_health(near).collapsed
    # Variation along one direction only: far apart, but rank 1.
    line = np.outer(np.linspace(-1, 1, 500), np.ones(64)) + 0.5
    h = embedding_health(line)
    assert h.effective_rank < 2 and h.collapsed
    spread = embedding_health(np.random.default_rng(2).normal(size=(500, 64)))
    assert not spread.collapsed and spread.warning() is None
    assert spread.effective_rank > 40 and 0.8 < spread.cosine_distance_median < 1.2


def test_identical_vectors_retrieve_nothing():
    """Ties never rank a positive above a negative: identical vectors score below chance,
    whatever the order of the rows."""
    lab = _layout()
    m = _metrics(np.ones((len(lab["line_id"]), 8), np.float32), lab)
    assert m.map_cross_batch < m.map_cross_batch_chance


def test_vectors_of_the_line_give_knn_and_map_one():
    lab = _layout()
    m = _metrics(_vectors(lab["line_id"]), lab)
    assert m.knn_accuracy_cross_batch == 1.0 and m.map_cross_batch == pytest.approx(1.0)
    assert m.knn_accuracy_cross_batch_ci95 == (1.0, 1.0)  # every field's queries are right
    assert m.map_cross_batch_ci95 == pytest.approx((1.0, 1.0))
    assert m.knn_accuracy_cross_batch_chance < 0.5 and m.map_cross_batch_chance < 0.5
    assert abs(m.batch_effect_index) < 0.15  # batches of a line are alike
    assert m.group_by == "batch" and m.lines_by_well == ()
    assert m.queries == len(lab["line_id"])


def test_vectors_of_the_batch_give_chance_and_a_high_batch_effect():
    """Averaged over five draws of the batches' directions: one draw places a few dozen batches
    at random, and its retrieval scores vary around chance by that much."""
    lab = _layout(batches=6, lines=6, frames=2)
    runs = [_metrics(_vectors(lab["batch_id"], seed=s), lab) for s in range(5)]
    mean = {
        key: np.mean([getattr(m, key) for m in runs])
        for key in runs[0].as_dict()
        if key.startswith(("knn", "map", "batch_effect_index"))
    }
    assert abs(mean["knn_accuracy_cross_batch"] - mean["knn_accuracy_cross_batch_chance"]) < 0.05
    assert abs(mean["map_cross_batch"] - mean["map_cross_batch_chance"]) < 0.03
    assert mean["knn_accuracy_cross_batch_chance"] < 0.3
    assert min(m.batch_effect_index for m in runs) > 0.9


def test_noise_scores_chance():
    lab = _layout()
    x = np.random.default_rng(5).normal(size=(len(lab["line_id"]), 32))
    m = _metrics(x, lab)
    assert abs(m.knn_accuracy_cross_batch - m.knn_accuracy_cross_batch_chance) < 0.06
    assert abs(m.map_cross_batch - m.map_cross_batch_chance) < 0.03
    assert abs(m.batch_effect_index) < 0.1


def test_single_batch_lines_use_other_wells_never_their_own_field():
    """With one batch per line, groups are wells; a row's own well (and field) never answers:
    vectors that encode the well exactly retrieve the line far below 1.0 (at chance, give or take
    the spread of a draw of eight wells)."""
    lab = _layout(batches=1)
    groups, by_well = exclusion_groups(lab["cell_line"], lab["batch"], lab["well"])
    assert by_well == tuple(f"L{i}" for i in range(LINES))
    assert len(np.unique(groups)) == LINES * WELLS
    well_id = lab["line_id"] * WELLS + np.unique(lab["well"], return_inverse=True)[1]
    m = _metrics(_vectors(well_id), lab)
    assert m.group_by == "well"
    assert m.knn_accuracy_cross_batch < 0.5 and m.map_cross_batch < 0.5
    m = _metrics(_vectors(lab["line_id"]), lab)
    assert m.knn_accuracy_cross_batch == 1.0


def test_average_precision_and_chance_agree_with_copairs():
    """copairs' AP with positives = same line from other groups, negatives = other lines (the
    candidates of our queries), and its expected AP of a random ranking, averaged."""
    from copairs.map import average_precision
    from copairs.map.normalization import expected_ap as copairs_expected_ap

    lab = _layout()
    x = _vectors(lab["line_id"], noise=3.0, seed=3)
    groups, _ = exclusion_groups(lab["cell_line"], lab["batch"], lab["well"])
    meta = pd.DataFrame({"line": lab["cell_line"], "group": groups})
    theirs = average_precision(meta, x, ["line"], ["group"], [], ["line"], progress_bar=False)
    ours = _metrics(x, lab)
    assert ours.queries == len(theirs)
    assert 0.3 < ours.map_cross_batch < 0.9  # neither trivial nor chance
    assert ours.map_cross_batch == pytest.approx(theirs["average_precision"].mean(), abs=1e-6)
    m, n = theirs["n_pos_pairs"].to_numpy(), theirs["n_total_pairs"].to_numpy()
    expected = [copairs_expected_ap(int(a), int(b - a)) for a, b in zip(m, n, strict=True)]
    np.testing.assert_allclose(expected_ap(m, n), expected, rtol=1e-9)
    assert ours.map_cross_batch_chance == pytest.approx(np.mean(expected), rel=1e-9)


def _hand_store(path, x: np.ndarray, lab: dict[str, np.ndarray], model_id: str) -> None:
    """A real store holding ``x`` as the embeddings of ``model_id`` (one patch per image)."""
    store = PatchStore(path, create=True)
    n, dim = x.shape
    now = datetime(2026, 1, 1)
    models = lance.open_table(store.db, "models", create=True)
    store.register_table("models")
    model = {
        "model_id": model_id,
        "arch": "hand",
        "img_size": 112,
        "embedding_dim": dim,
        "config": "{}",
        "weights_source": "by hand",
        "weights_format": "timm",
        "random_init": False,
        "table": f"embeddings_{dim}",
        "created_at": now,
    }
    lance.upsert(models, lance.to_arrow([model], "models"), "model_id")
    schema = embeddings_schema(dim)
    table = lance.open_table(store.db, f"embeddings_{dim}", create=True, schema=schema)
    store.register_table(f"embeddings_{dim}")
    rows = {
        "patch_id": [f"{model_id}-{i}" for i in lab["image_id"]],
        "image_id": lab["image_id"],
        "cell_line": lab["cell_line"],
        "batch": lab["batch"],
        "experiment": lab["batch"],
        "well": lab["well"],
        "location": np.zeros(n, np.int32),
        "crop": [None] * n,
        "sequence_id": lab["sequence_id"],
        "timepoint_h": np.zeros(n),
        "rank": np.zeros(n, np.int16),
        "density": np.ones(n, np.float32),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), dim),
        "model_id": [model_id] * n,
        "created_at": [now] * n,
    }
    table.add(pa.table(rows).cast(schema))


def test_evaluations_from_a_store_are_appended_by_time(tmp_path):
    lab = _layout()
    path = tmp_path / "store"
    _hand_store(path, _vectors(lab["line_id"]), lab, "line-model")
    (first,) = evaluate_encoders(path, top_k=10)
    image = first.levels["image"]
    assert image.metrics.knn_accuracy_cross_batch == 1.0
    assert image.metrics.map_cross_batch == pytest.approx(1.0)
    assert first.levels["sequence"].rows == LINES * BATCHES * WELLS * FIELDS
    assert not first.levels["patch"].health.collapsed
    table = EmbeddingStore(path).table("encoder_evals")
    assert table.count_rows() == 3
    assert set(table.schema.names) == set(load_schema("encoder_evals").names)
    evaluate_encoders(path, ["line-model"])
    assert table.count_rows() == 6  # a second run: three more rows, none replaced
    latest = latest_evaluations(EmbeddingStore(path))
    assert latest["level"].to_list() == ["patch", "image", "sequence"]
    assert latest["evaluated_at"].n_unique() == 1
    assert latest["evaluated_at"][0] == table.to_arrow()["evaluated_at"].to_pylist()[-1]


def _ok(args: list[str]):
    """Run the CLI in-process; it must succeed. Returns click's result."""
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return result


def test_cli_on_a_collapsed_store(tmp_path):
    lab = _layout()
    path = tmp_path / "store"
    _hand_store(path, np.ones((len(lab["line_id"]), 16), np.float32), lab, "flat")
    out = _ok(["evaluate-encoder", "--store", str(path)]).output
    assert "COLLAPSED" in out and "batch_effect" in out
    info = _ok(["info", "--store", str(path)]).output
    assert "flat" in info and "COLLAPSED" in info


@pytest.mark.realdata
def test_cli_on_a_small_real_store(tmp_path, shared_data):
    """ingest + encode (tiny random-init ViT) of two lines x two wells, then evaluate-encoder,
    info and encode's health line."""
    root = tmp_path / "export"
    for rel in (
        "A431/A431_B1_1_00d06h00m.jpg",
        "A431/A431_C6_1_04d00h00m.jpg",
        "A549/A549_A1_1_00d00h00m.jpg",
        "A549/A549_G7_1_00d12h00m.jpg",
    ):
        src = shared_data / "azgcb_sample" / rel
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, root / rel)
    store = str(tmp_path / "store")
    _ok(["ingest", str(root), "--store", store, "--workers", "1"])
    out = _ok(["encode", "--store", store, "--arch", "vit_tiny_patch16_224", "--device", "cpu"])
    assert "health: median cosine distance" in out.output
    r = json.loads(_ok(["evaluate-encoder", "--store", store, "--format", "json"]).output)
    (e,) = r["encoders"]
    assert e["random_init"] and set(e) >= {"patch", "image", "sequence"}
    image = e["image"]
    assert image["group_by"] == "well" and image["lines_by_well"] == ["A431", "A549"]
    assert image["rows"] == 4 and image["queries"] == 4
    for key in ("knn_accuracy_cross_batch", "map_cross_batch"):
        assert 0.0 <= image[key] <= 1.0 and 0.0 <= image[f"{key}_chance"] <= 1.0
    assert "RANDOMLY INITIALISED" in _ok(["evaluate-encoder", "--store", store]).output
    info = json.loads(_ok(["info", "--store", store, "--format", "json"]).output)
    (enc,) = info["encoders"]
    assert (
        enc["model_id"] == e["model_id"]
        and enc["image"]["knn_accuracy_cross_batch"] == (image["knn_accuracy_cross_batch"])
    )
    assert enc["health"]["rows"] == e["patch"]["rows"]


def test_the_bootstrap_resamples_whole_fields():
    rng = np.random.default_rng(1)
    fields = np.repeat(np.arange(12), 10)  # 12 fields of 10 frames each
    hits = np.repeat(rng.random(12) < 0.5, 10).astype(float)  # frames of a field agree
    low, high = field_bootstrap_ci(hits, fields)
    assert low < hits.mean() < high
    frame_low, frame_high = field_bootstrap_ci(hits, np.arange(len(hits)))  # as if independent
    assert high - low > 2 * (frame_high - frame_low)  # 12 fields carry less than 120 frames
    assert field_bootstrap_ci(hits, fields) == (low, high)  # seeded
    assert field_bootstrap_ci(np.full(30, 0.25), fields[:30]) == pytest.approx((0.25, 0.25))
    assert field_bootstrap_ci(np.array([1.0, 0.0]), np.zeros(2)) == (0.5, 0.5)  # one field
