"""``authenticate`` (issue 21): the rules of learn.authentication on generated sequence vectors
of a known distribution (lines = centres, batches = offsets, sequences = noise), and the
sequence table, pipeline and command on a small synthetic store encoded by the classic encoder.

The verdict acceptance (known batch consistent, wrong label mismatch naming the true line, a
removed line unknown, false-alarm rate held) is asserted here on the generated vectors and in
test_authenticate_synthetic.py on a synthetic export with milder batch effects, where the
classic encoder carries cross-batch signal; at the export's full batch effects (this module's
small store) it carries too little for verdicts (docs/authenticate.md), so the store tests here
check the mechanics and the bad-input errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from clanet_store.cli import main
from clanet_store.errors import ClanetError
from clanet_store.exports.synth import synth_export
from clanet_store.learn.authentication import (
    CONSISTENT,
    MISMATCH,
    UNKNOWN,
    Library,
    authenticate,
    calibrate,
    evaluate_library,
    unit_vectors,
)
from clanet_store.pipelines.ingest import ingest
from clanet_store.report import collect
from clanet_store.schemas import load_schema
from clanet_store.stores.embedding_store import EmbeddingStore
from clanet_store.stores.sequence_embeddings import (
    is_current,
    read_sequences,
    update_sequence_embeddings,
)
from clanet_store.stores.sequences import load_bags

DIM = 32
RATE = ["--false-alarm", "0.25"]  # the small store's library gives a handful of LOBO scores


def _draw(
    rng: np.random.Generator,
    centres: np.ndarray,
    batches: int,
    per_batch: int,
    batch_sd: float,
    noise_sd: float,
    tag: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectors, lines and units: per line ``batches`` batches of ``per_batch`` sequences."""
    x, lines, units = [], [], []
    for li, centre in enumerate(centres):
        for b in range(batches):
            offset = rng.normal(0, batch_sd, DIM)
            x.append(centre + offset + rng.normal(0, noise_sd, (per_batch, DIM)))
            lines += [f"L{li}"] * per_batch
            units += [f"L{li}/{tag}{b}"] * per_batch
    return np.concatenate(x), np.array(lines), np.array(units)


def _library(x: np.ndarray, lines: np.ndarray, units: np.ndarray, model: str = "m") -> Library:
    ids = np.array([f"s{i}" for i in range(len(x))])
    return Library(model, unit_vectors(x), lines, units, ids, np.char.add(ids, "-image"))


@pytest.fixture(scope="module")
def separable() -> tuple[Library, np.random.Generator, np.ndarray]:
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (5, DIM))
    return _library(*_draw(rng, centres, 4, 3, 0.3, 0.3, "b")), rng, centres


def _one_batch(rng: np.random.Generator, centre: np.ndarray) -> np.ndarray:
    return centre + rng.normal(0, 0.3, DIM) + rng.normal(0, 0.3, (3, DIM))


def _judge(library: Library, x: np.ndarray, claimed: str):
    cal = calibrate(library)
    n = len(x)
    ids = [f"q{i}" for i in range(n)]
    return authenticate(library, cal, x, ["new/b"] * n, [claimed] * n, ids, "m").batches[0]


def test_a_known_batch_is_consistent_and_mislabelled_it_is_a_mismatch_naming_the_line(separable):
    library, rng, centres = separable
    x = _one_batch(rng, centres[2])
    assert _judge(library, x, "L2").verdict == CONSISTENT
    wrong = _judge(library, x, "L0")
    assert (wrong.verdict, wrong.line) == (MISMATCH, "L2")
    assert wrong.margin < 0 and wrong.sequences == ("q0", "q1", "q2")
    assert {n.line for n in wrong.nearest} == {"L2"} and wrong.nearest[0].image_id.endswith(
        "-image"
    )


def test_a_line_absent_from_the_library_is_unknown(separable):
    library, rng, _ = separable
    stranger = rng.normal(0, 1, DIM)
    verdict = _judge(library, _one_batch(rng, stranger), "L9")
    assert verdict.verdict == UNKNOWN and verdict.line is None and verdict.claimed_score is None


def test_the_query_batch_never_vouches_for_itself(separable):
    library, _, _ = separable
    unit = library.units[0]
    held = library.units == unit
    cal = calibrate(library)
    x = library.vectors[held]
    r = authenticate(library, cal, x, [unit] * len(x), ["L0"] * len(x), ["a"] * len(x), "m")
    assert all(n.unit != unit for v in r.sequences for n in v.nearest)


def test_leave_one_batch_out_thresholds_hold_their_false_alarm_rate():
    """Calibrate on a library, then judge fresh batches of its lines (one sequence each, so
    they are independent): each rule alone fires on about 5 % of them, within sampling error.
    The lines overlap (margins below 0 occur), so both thresholds are real cut-offs."""
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 0.2, (4, DIM))
    library = _library(*_draw(rng, centres, 25, 4, 0.25, 0.35, "b"))
    cal = calibrate(library, false_alarm=0.05, max_sequences=10_000)
    assert cal.margin_threshold < 0 and np.isfinite(cal.unknown_threshold)
    x, lines, units = _draw(rng, centres, 500, 1, 0.25, 0.35, "new")
    r = authenticate(library, cal, x, units, lines, [str(i) for i in range(len(x))], "m")
    below = np.mean([v.best_score < cal.unknown_threshold for v in r.sequences])
    own = np.array([v.claimed_score for v in r.sequences])
    unknown_rate = np.mean(own < cal.unknown_threshold)
    margins = np.array([v.margin for v in r.sequences])
    mismatch_rate = np.mean(margins < cal.margin_threshold)
    tolerance = 3 * np.sqrt(0.05 * 0.95 / len(x))
    assert abs(unknown_rate - 0.05) < tolerance + 0.01, unknown_rate
    assert abs(mismatch_rate - 0.05) < tolerance + 0.01, mismatch_rate
    assert below <= unknown_rate  # the best line scores at least the own line


def test_evaluation_of_a_separable_library(separable):
    library, _, _ = separable
    ev = evaluate_library(library)
    assert ev.known["batch"].n == 20 and ev.known["batch"].consistent >= 0.9
    assert ev.wrong_label["batch"].n == 80 and ev.wrong_label["batch"].named_true >= 0.9
    assert ev.new_line["batch"].n == 20 and ev.new_line["batch"].unknown >= 0.9


def test_embeddings_of_another_model_are_refused(separable):
    library, rng, centres = separable
    x = _one_batch(rng, centres[0])
    with pytest.raises(ClanetError, match="model other"):
        authenticate(library, calibrate(library), x, ["u"] * 3, ["L0"] * 3, ["a"] * 3, "other")


def test_a_library_without_a_line_of_two_batches_cannot_be_calibrated():
    lib = _library(np.eye(3, DIM), np.array(["A", "B", "C"]), np.array(["A/1", "B/1", "C/1"]))
    with pytest.raises(ClanetError, match="two batches"):
        calibrate(lib)


# --- the store ---------------------------------------------------------------------------------


def _run(args: list[str]):
    return CliRunner().invoke(main, [*args, "--format", "json"])


def _ok(args: list[str]) -> dict:
    result = _run(args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    """18 synthetic images (3 lines x 2 batches x 1 position x 3 time points), classic."""
    root = tmp_path_factory.mktemp("auth")
    synth_export(root / "export", lines=3, batches=2, positions=1, timepoints=3, seed=0)
    ingest(root / "export", root / "store", workers=1)
    _ok(["encode", "--store", str(root / "store"), "--encoder", "classic"])
    return root / "store"


def test_encode_pools_each_sequence_once_and_updates_incrementally(store_path, tmp_path):
    shutil.copytree(store_path, tmp_path / "store")  # this test changes its store
    store = EmbeddingStore(tmp_path / "store")
    model = store.encoder().model_id
    keys, x = read_sequences(store, model)
    table = store.table("sequence_embeddings_89")
    assert table.schema.names == load_schema("sequence_embeddings").names
    bags, _ = load_bags(store, k=10, model_id=model)
    assert keys.height == len(bags) == 6 and keys["row_id"].n_unique() == 6
    by_id = {k: i for i, k in enumerate(keys["sequence_id"])}
    for bag in bags:  # the mean of the bag's patches
        expected = bag.embeddings[bag.mask].mean(axis=0)
        np.testing.assert_allclose(x[by_id[bag.key]], expected, rtol=1e-5, atol=1e-6)
    assert keys["n_images"].to_list() == [3] * 6
    assert is_current(store, model)
    assert update_sequence_embeddings(store, model).pooled == 0  # idempotent
    table.delete(f"row_id = '{keys['row_id'][0]}'")  # (a fixed test id, not user input)
    again = update_sequence_embeddings(store, model)
    assert (again.pooled, again.removed, again.sequences) == (1, 0, 6)
    assert table.count_rows() == 6
    store.table("patches").delete(f"sequence_id = '{keys['sequence_id'][1]}'")  # (test id)
    assert not is_current(store, model)
    gone = update_sequence_embeddings(store, model)
    assert (gone.pooled, gone.removed, gone.sequences) == (0, 1, 5) and is_current(store, model)


def test_cli_authenticates_a_batch_and_evaluates_the_library(store_path):
    store = EmbeddingStore(store_path)
    line, batch = store.query("images").select("cell_line", "batch").to_polars().row(0)
    s = str(store_path)
    too_few = _run(["authenticate", "--store", s, "--new", f"batch={batch}", "--claimed", line])
    assert too_few.exit_code == 1 and "needs at least 19" in too_few.output
    r = _ok(["authenticate", "--store", s, *RATE, "--new", f"batch={batch}", "--claimed", line])
    assert r["reference_sequences"] == 5 and len(r["sequences"]) == 1
    (verdict,) = r["batches"]
    assert verdict["verdict"] in (CONSISTENT, MISMATCH, UNKNOWN)
    assert verdict["unit"] == f"{line}/{batch}" and verdict["claimed"] == line
    assert all(n["unit"] != verdict["unit"] and n["path"] for n in verdict["nearest"])
    assert r["encoder"]["arch"] == "classic"
    human = CliRunner().invoke(
        main, ["authenticate", "--store", s, *RATE, "--new", f"batch={batch}", "--claimed", line]
    )
    assert human.exit_code == 0 and "nearest reference sequences" in human.output
    labels = _ok(
        ["authenticate", "--store", s, *RATE, "--new", f"batch={batch}", "--claimed-from-labels"]
    )
    assert labels["batches"][0]["claimed"] == line
    ev = _ok(["authenticate", "--store", s, *RATE, "--evaluate"])
    assert ev["units"] == 6 and ev["known"]["batch"]["n"] == 6
    assert ev["health"]["collapsed"] is False


def test_bad_input_is_one_line_naming_the_problem(store_path):
    s = str(store_path)
    batch = EmbeddingStore(store_path).query("images").select("batch").to_polars()["batch"][0]
    absent = _run(["authenticate", "--store", s, "--new", f"batch={batch}", "--claimed", "Nope"])
    assert absent.exit_code == 1 and "'Nope' not in the reference library" in absent.output
    allowed = [*RATE, "--new", f"batch={batch}", "--claimed", "Nope", "--allow-new-line"]
    assert _ok(["authenticate", "--store", s, *allowed])["batches"][0]["claimed"] == "Nope"
    literal = _run(["authenticate", "--store", s, "--new", "batch=x' OR '1'='1", "--claimed", "A"])
    assert literal.exit_code == 1 and "selects no sequence" in literal.output
    unknown_model = _run(["authenticate", "--store", s, "--evaluate", "--model-id", "feed"])
    assert unknown_model.exit_code == 1 and "no embeddings of model feed" in unknown_model.output
    both = _run(["authenticate", "--store", s, "--new", f"batch={batch}"])
    assert both.exit_code == 2
    assert pl.Series([absent.output.strip()]).str.count_matches("\n")[0] == 0


def test_report_section_data(store_path):
    store = EmbeddingStore(store_path)
    model = store.encoder().model_id
    evaluation, verdicts, strips = collect.authentication(store, model)  # 5 %: too few scores
    assert evaluation.evaluation.units_skipped == 6 and verdicts == [] and strips is None
    evaluation, verdicts, strips = collect.authentication(store, model, false_alarm=0.25)
    assert evaluation.evaluation.units == 6 and len(verdicts) == 6
    assert strips.startswith(b"\x89PNG")
