"""Declared pipelines: config files, the stage runner, and the demo end to end (issue 9).

The demo runs once per module at a reduced size on real LanceDB / Zarr / a Dask LocalCluster;
the tests then check every stage's output, the skipping of up-to-date stages, and the report in
headless Chromium.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from browser import chromium, render
from click.testing import CliRunner
from PIL import Image

from clanet_store.cli import main
from clanet_store.errors import ClanetError
from clanet_store.pipelines.evaluate_encoder import latest_evaluations
from clanet_store.runs.config import DEFAULTS, STAGES, load_config, parse_override
from clanet_store.runs.runner import PIPELINE_DIR, export_fingerprint, store_fingerprint
from clanet_store.stores.embedding_store import EmbeddingStore

# 3 lines x 2 batches x 2 positions x 3 time points = 36 images; a 4-step DINO run.
SMALL = (
    "synth.lines=3",
    "synth.batches=2",
    "synth.positions=2",
    "synth.timepoints=3",
    "ssl_train.epochs=1",
    "ssl_train.batch_size=8",
    "ssl_train.k=1",
    "ssl_train.dino={out_dim = 256, n_local = 2}",
    "train.mil={epochs = 3, k = 10}",
    "report.k=3",
)


def _ok(args: list[str]):
    """Run the CLI in-process; it must succeed. Returns click's result."""
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return result


def _sets(overrides: tuple[str, ...]) -> list[str]:
    return [arg for text in overrides for arg in ("--set", text)]


def _demo(out: Path, *extra: str) -> dict:
    result = _ok(["demo", "--out", str(out), *_sets(SMALL), *extra, "--format", "json"])
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("demo")
    return {"out": out, "first": _demo(out)}


def _stage(result: dict, name: str) -> dict:
    return next(s for s in result["stages"] if s["stage"] == name)


# --- config files ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["demo.toml", "paper.toml"])
def test_shipped_configs_load_with_every_stage(name):
    config = load_config(PIPELINE_DIR / name)
    assert list(config.stages) == list(STAGES)
    assert config.name == name.removesuffix(".toml")


def test_paper_config_holds_the_papers_numbers():
    stages = load_config(PIPELINE_DIR / "paper.toml").stages
    assert stages["ssl_train"]["arch"] == "vit_small_patch8_224"
    assert (stages["ssl_train"]["epochs"], stages["ssl_train"]["batch_size"]) == (200, 256)
    assert stages["train"]["mil"]["epochs"] == 2000 and stages["train"]["mil"]["lr"] == 5e-4
    assert set(stages["train"]["splits"]) == {"batch-separated", "batch-stratified"}
    assert stages["train"]["repeats"] == 3


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.toml"
    path.write_text('[pipeline]\nname = "t"\nversion = 1\n' + text)
    return path


def test_unknown_key_is_an_error_naming_file_and_key(tmp_path):
    path = _write(tmp_path, "[train]\nrepeat = 3\n")
    with pytest.raises(ClanetError, match=r"p\.toml: unknown key train\.repeat"):
        load_config(path)


def test_unknown_stage_wrong_type_and_version_are_errors(tmp_path):
    with pytest.raises(ClanetError, match=r"unknown stage \[trian\]"):
        load_config(_write(tmp_path, "[trian]\n"))
    with pytest.raises(ClanetError, match=r"train\.repeats must be int"):
        load_config(_write(tmp_path, '[train]\nrepeats = "3"\n'))
    (tmp_path / "v.toml").write_text("[pipeline]\nversion = 7\n")
    with pytest.raises(ClanetError, match="version must be 1"):
        load_config(tmp_path / "v.toml")
    (tmp_path / "bad.toml").write_text("[pipeline\n")
    with pytest.raises(ClanetError, match=r"bad\.toml: not valid TOML"):
        load_config(tmp_path / "bad.toml")


def test_missing_keys_take_defaults_and_overrides_apply(tmp_path):
    config = load_config(_write(tmp_path, "[search]\nk = 4\n"), ["train.repeats=2"])
    assert config.stages["search"] == {"queries": DEFAULTS["search"]["queries"], "k": 4}
    assert config.stages["train"]["repeats"] == 2
    assert config.stages["report"] == DEFAULTS["report"]


def test_parse_override_types():
    assert parse_override("train.repeats=3") == ("train", "repeats", 3)
    assert parse_override("encode.weights=/data/dino.pth") == (
        "encode",
        "weights",
        "/data/dino.pth",
    )
    assert parse_override("ssl_train.enabled=false") == ("ssl_train", "enabled", False)
    assert parse_override("train.splits=['batch-stratified']")[2] == ["batch-stratified"]
    with pytest.raises(ClanetError, match=r"expected stage\.key=value"):
        parse_override("repeats=3")


def test_export_fingerprint_changes_with_a_file(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"1")
    before = export_fingerprint(tmp_path)
    assert export_fingerprint(tmp_path) == before
    (tmp_path / "b.jpg").write_bytes(b"2")
    assert export_fingerprint(tmp_path) != before
    assert store_fingerprint(tmp_path / "nowhere") == "missing"


# --- the demo end to end --------------------------------------------------------------------


def test_demo_runs_every_stage(demo):
    first = demo["first"]
    assert [s["stage"] for s in first["stages"]] == list(STAGES)
    assert all(s["status"] == "ran" for s in first["stages"])
    assert first["report"] == str(demo["out"] / "report.html")


def test_demo_stage_outputs(demo):
    out, first = demo["out"], demo["first"]
    images = sorted((out / "export").rglob("*.jpg"))
    assert len(images) == 36
    ingest = _stage(first, "ingest")["summary"]
    assert ingest["images_added"] == 36 and ingest["images_rejected"] == 0
    ssl = _stage(first, "ssl_train")["summary"]
    assert len(ssl["losses"]) == len(ssl["probes"]) == 1 and np.isfinite(ssl["losses"]).all()
    # 4 steps from a random init cannot spread its features: the probe stops the run, the stage
    # says why, no checkpoint is kept, and encode embeds with a random init of the same arch.
    assert ssl["recipe"] == "scratch" and ssl["checkpoint"] is None
    assert ssl["collapsed"]["batch-separated-r1"].startswith("training collapsed after epoch 1: ")
    encode = _stage(first, "encode")["summary"]
    store = EmbeddingStore(out / "store")
    patches = store.table("patches").count_rows()
    assert encode["patches_encoded"] == patches > 0
    assert encode["random_init"] is True and encode["arch"] == ssl["arch"]
    classic = encode["extra_model_ids"]["classic"]
    assert store.encoder(classic).arch == "classic"
    assert store.query("embeddings", classic).select("patch_id").to_polars().height == patches
    # the random init is set aside: the models are trained on classic, and the reason says why
    choice = _stage(first, "choose_encoder")["summary"]
    assert choice["model_id"] == choice["model_ids"]["batch-separated-r1"] == classic
    (only,) = choice["choices"]
    assert "the only healthy candidate" in only["reason"] and "random init" in only["reason"]
    assert [c["usable"] for c in only["candidates"]] == [False, True]
    assert set(latest_evaluations(store)["model_id"]) == {encode["model_id"], classic}
    index = _stage(first, "index")["summary"]
    assert index["rows"] == patches and index["model_id"] == classic


def test_demo_models_and_evaluations(demo):
    out, first = demo["out"], demo["first"]
    models = _stage(first, "train")["summary"]["models"]
    assert {m["name"] for m in models} == {"clanet", "mean-pooling"}
    for model in models:
        assert Path(model["model"]).exists()
        assert model["train_sequences"] > 0 and model["test_sequences"] > 0
    evaluations = _stage(first, "evaluate")["summary"]["evaluations"]
    for item in evaluations:
        scores = json.loads(Path(item["model"]).with_suffix(".eval.json").read_text())
        assert 0 <= scores["sequence_accuracy"] <= 1
        assert np.sum(scores["confusion"]) == scores["test_sequences"]
    assert sorted(p.name for p in (out / "models").glob("split-*.json")) == [
        "split-batch-separated-r1.json"
    ]
    # inductive by default: the encoder trained on the split's training side only (issue 19)
    ssl = _stage(first, "ssl_train")["summary"]
    assert ssl["protocol"] == "inductive" and list(ssl["checkpoints"]) == ["batch-separated-r1"]
    # the 4-step run collapsed and kept no checkpoint (test_demo_stage_outputs), but it trained
    # on the training side only: the patches of one batch of each line's two (k = 1)
    split = json.loads((out / "models" / "split-batch-separated-r1.json").read_text())
    assert ssl["checkpoints"] == {"batch-separated-r1": None}
    assert ssl["patches_per_split"] == [ssl["patches"]] and 0 < ssl["patches"] <= 36 // 2
    assert split["kind"] == "batch-separated"  # drawn before encoding, reused by train
    # trained on classic, whose feature standardisation saw every stored patch (no labels)
    assert all(item["encoder_training"] == "transductive" for item in evaluations)
    assert {m["encoder_model_id"] for m in models} == {
        _stage(first, "choose_encoder")["summary"]["model_id"]
    }


def test_demo_search_is_cross_batch(demo):
    out, first = demo["out"], demo["first"]
    search = json.loads((out / "search.json").read_text())
    assert search["queries"] and _stage(first, "search")["summary"]["gallery"]
    for query in search["queries"]:
        assert query["results"]
        for hit in query["results"]:
            assert (hit["cell_line"], hit["batch"]) != (query["cell_line"], query["batch"])
    with Image.open(out / "neighbours.png") as gallery:
        assert gallery.format == "PNG"


def test_rerun_skips_up_to_date_stages_and_reruns_changed_ones(demo):
    out = demo["out"]
    again = _demo(out)
    assert all(s["status"] == "up to date" for s in again["stages"])
    changed = _demo(out, "--set", "search.k=4")
    status = {s["stage"]: s["status"] for s in changed["stages"]}
    before = STAGES[: STAGES.index("search")]
    assert status == {**dict.fromkeys(before, "up to date"), "search": "ran", "report": "ran"}
    search = json.loads((out / "search.json").read_text())
    assert all(len(q["results"]) <= 4 for q in search["queries"])
    # a deleted output makes its stage run again
    (out / "report.html").unlink()
    third = _demo(out, "--set", "search.k=4")
    assert _stage(third, "report")["status"] == "ran" and (out / "report.html").exists()


def test_failed_stage_names_the_file_and_keeps_earlier_stages(demo, tmp_path):
    out = demo["out"]
    state = json.loads((out / "run-state.json").read_text())
    missing = tmp_path / "no-such-weights.pth"
    result = CliRunner().invoke(
        main,
        ["demo", "--out", str(out), *_sets(SMALL), "--set", f"encode.weights={missing}"],
    )
    assert result.exit_code == 1 and "no-such-weights.pth" in result.output
    after = json.loads((out / "run-state.json").read_text())
    assert after["stages"]["ingest"] == state["stages"]["ingest"]


@pytest.fixture(scope="module")
def ingested(demo, tmp_path_factory) -> dict:
    """``run --until ingest`` of the demo's export into a new store (no embeddings)."""
    store = tmp_path_factory.mktemp("run") / "store"
    args = [
        "run",
        str(PIPELINE_DIR / "demo.toml"),
        "--export",
        str(demo["out"] / "export"),
        "--store",
        str(store),
        *_sets(SMALL),
        "--until",
        "ingest",
        "--format",
        "json",
    ]
    result = _ok(args)
    return {"store": store, "result": json.loads(result.stdout)}


def test_run_command_on_a_given_export_and_store(ingested):
    r, store = ingested["result"], ingested["store"]
    assert [s["stage"] for s in r["stages"]] == ["synth", "ingest"]
    assert _stage(r, "synth")["summary"]["generated"] is False
    assert Path(r["out"]) == (store / "runs" / "demo").resolve()
    assert r["report"] is None
    assert EmbeddingStore(store).table("images").count_rows() == 36


# --- the report -----------------------------------------------------------------------------


def test_report_sections_and_figures(demo):
    html = (demo["out"] / "report.html").read_text()
    for title in (
        "Dataset",
        "Growth and imaging schedule",
        "Cell Cluster-level Selection",
        "Patch embeddings",
        "Authentication models",
        "Nearest neighbours",
        "Encoders",
    ):
        assert f">{title}" in html
    # every encoder of the store is listed, with the choice the demo made and its reason
    encode = _stage(demo["first"], "encode")["summary"]
    classic = encode["extra_model_ids"]["classic"]
    assert encode["model_id"] in html and classic in html
    assert f"Models of batch-separated repeat 1 trained on classic ({classic})" in html
    # 2 time courses, 3 example images, 2 projections, 2 confusion matrices, 1 curve, 1 gallery
    assert html.count("<img ") == 11
    assert "http://" not in html and "https://" not in html  # self-contained


def test_report_command_json(demo, tmp_path):
    out = demo["out"]
    models = sorted((out / "models").glob("*.pt"))
    target = tmp_path / "r.html"
    args = [
        "report",
        "--store",
        str(out / "store"),
        "--out",
        str(target),
        "--k",
        "2",
        "--format",
        "json",
        *[a for m in models for a in ("--model", str(m))],
    ]
    result = _ok(args)
    r = json.loads(result.stdout)
    assert r["report"] == str(target) and r["images"] == 11 and target.stat().st_size == r["bytes"]


@pytest.fixture
def browser():
    if chromium() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed: .ci/run must install it")
        pytest.skip("chromium is not installed")


def test_report_renders_in_headless_chromium(demo, browser, tmp_path):
    page = render(demo["out"] / "report.html")
    assert page.title == "clanet-store report"
    assert len(page.images) == 11
    broken = [i["alt"] for i in page.images if not (i["complete"] and i["width"] > 0)]
    assert broken == []
    assert page.errors == []
    shot = tmp_path / "report.png"
    shot.write_bytes(page.screenshot)
    with Image.open(shot) as image:
        width, height = image.size
        pixels = np.asarray(image.convert("L"))
    assert width >= 1000 and height > 3000  # the whole page, not just the first screen
    assert pixels.std() > 10  # not a blank page


def test_report_without_embeddings_or_models(ingested, tmp_path):
    """A store that was only ingested still gets a report, with the missing parts named."""
    target = tmp_path / "r.html"
    args = ["report", "--store", str(ingested["store"]), "--out", str(target)]
    result = _ok(args)
    assert "report written to" in result.output
    html = target.read_text()
    assert "No embeddings yet" in html and html.count("<img ") == 5


def test_models_without_a_test_side_are_reported_not_evaluated(tmp_path):
    """A real export with one batch per cell line has no batch-separated test side: the model is
    trained on everything, the evaluate stage says why it skips it, and the report gets no model."""
    from clanet_store.runs.stages import Run, evaluate

    said: list[str] = []
    model = {
        "name": "clanet",
        "model": str(tmp_path / "m.pt"),
        "split": "batch-separated",
        "test_sequences": 0,
    }
    run = Run(
        out=tmp_path,
        store=tmp_path / "store",
        export=None,
        progress=None,
        say=said.append,
        summaries={"train": {"models": [model]}},
    )
    done = evaluate(run, {})
    assert done.files == [] and "no test sequences" in done.summary["evaluations"][0]["skipped"]
    assert said and "m.pt" in said[0]


def test_report_shows_the_newest_qc_run(demo, tmp_path):
    store = demo["out"] / "store"
    keys = (
        EmbeddingStore(store)
        .query("images")
        .select("cell_line", "batch")
        .to_polars()
        .unique()
        .sort("cell_line", "batch")
    )
    line, batches = keys["cell_line"][0], keys.filter(keys["cell_line"] == keys["cell_line"][0])
    ref, new = (f"cell_line={line},batch={b}" for b in batches["batch"][:2])
    qc = _ok(["qc", "--store", str(store), "--reference", ref, "--new", new,
              "--permutations", "50", "--format", "json"])  # fmt: skip
    flagged = json.loads(qc.stdout)["flagged_images"]
    target = tmp_path / "r.html"
    _ok(["report", "--store", str(store), "--out", str(target)])
    html = target.read_text()
    assert ">Quality control<" in html and 'alt="plate heatmap of anomaly scores"' in html
    assert all(item["path"] in html for item in flagged)
