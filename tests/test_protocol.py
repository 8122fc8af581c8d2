"""An evaluation protocol that cannot flatter (issue 19): TSS that samples, wells kept whole,
inductive SSL, QC drift that knows what it cannot tell.

The store tests use real LIVECell SH-SY5Y images (../shared/data) re-filed into small exports:
one with 4 crops x 2 locations per well (crops 3 and 4 are renamed copies of crops 1 and 2), one
with two fields of well B10 and a defocused copy of one of them.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from click.testing import CliRunner

from clanet_store.cli import main
from clanet_store.errors import ClanetError
from clanet_store.learn.bags import Bag
from clanet_store.learn.splits import make_split
from clanet_store.learn.training import MILConfig, train_mil
from clanet_store.learn.tss import REFERENCE_CANDIDATES, REFERENCE_SIGMA, TSSPrior
from clanet_store.models.dino import DinoConfig
from clanet_store.pipelines import ssl_train as ssl_module
from clanet_store.pipelines.corrupt import corrupt_export
from clanet_store.pipelines.encode import encode, load_encoder
from clanet_store.pipelines.inductive import encoder_training, split_patch_rows
from clanet_store.pipelines.ingest import ingest
from clanet_store.pipelines.qc import MIN_SEQUENCES, QCParams, _drift_unit, run_qc
from clanet_store.pipelines.split_files import read_split, write_split
from clanet_store.stores.embedding_store import EmbeddingStore
from clanet_store.stores.encoder_record import EncoderRecord
from clanet_store.stores.patch_store import PatchStore
from clanet_store.stores.sequences import list_sequences

LIVECELL = "livecell_shsy5y"
TINY = "vit_tiny_patch16_224"


def livecell(well: str, location: int, hour: int, crop: int) -> str:
    return f"SHSY5Y_Phase_{well}_{location}_{hour // 24:02d}d{hour % 24:02d}h00m_{crop}.tif"


# --- TSS: the reference prior samples, the fitted one says when it cannot -----------------------


def two_hour_bags(n: int = 24, images: int = 12) -> list[Bag]:
    rng = np.random.default_rng(0)
    times = np.arange(images) * 2.0  # every sequence: one image every 2 h
    return [
        Bag(
            f"s{i}",
            i % 2,
            f"line{i % 2}/b1",
            f"A{i}",
            times,
            rng.normal(size=(images, 3, 4)).astype(np.float32),
            np.ones((images, 3), dtype=bool),
        )
        for i in range(n)
    ]


def test_reference_prior_subsamples_two_hour_sequences_and_fitted_warns():
    bags = two_hour_bags()
    config = MILConfig(k=3, epochs=20, batch_bags=8)
    assert config.tss_prior == TSSPrior("reference")  # the default
    _, reference = train_mil(bags, ["a", "b"], config)
    assert reference["tss_candidates"] == list(REFERENCE_CANDIDATES)
    assert reference["tss_sigma"] == pytest.approx(REFERENCE_SIGMA)
    # P(T_e > 2 | mu = 2) over 1..8 h with sigma 2.29 is 0.55
    assert 0.4 < reference["tss_subsampled_share"] < 0.7 and not reference["warnings"]

    _, fitted = train_mil(
        bags, ["a", "b"], MILConfig(**{**config.as_dict(), "tss_prior": "fitted"})
    )
    assert fitted["tss_candidates"] == [2] and fitted["tss_sigma"] == 0
    assert fitted["tss_subsampled_share"] == 0  # TSS switched itself off ...
    assert any("no candidate interval lies above mu_s of 24 of 24" in w for w in fitted["warnings"])

    _, off = train_mil(bags, ["a", "b"], MILConfig(**{**config.as_dict(), "tss": False}))
    assert off["tss_subsampled_share"] is None and off["warnings"] == []


def test_tss_prior_is_a_parameter_of_the_pipeline_toml(tmp_path):
    from clanet_store.runs.config import load_config

    toml = (Path(__file__).parents[1] / "pipelines" / "demo.toml").read_text()
    path = tmp_path / "p.toml"
    path.write_text(toml.replace("[train.mil]\n", '[train.mil]\ntss_prior = "fitted"\n'))
    mil = load_config(path).stages["train"]["mil"]
    assert MILConfig(**mil).tss_prior == TSSPrior("fitted")
    sigma = load_config(path, ["train.mil={tss_prior={kind='reference', sigma=3.0}}"])
    assert MILConfig(**sigma.stages["train"]["mil"]).tss_prior == TSSPrior("reference", sigma=3)
    with pytest.raises(ValueError, match="unknown TSS prior"):
        MILConfig(tss_prior="guessed")


def test_samples_without_patches_never_reach_collate():
    """Images whose patches were all filtered away: TSS draws among the others."""
    bags = two_hour_bags(8)
    holes = [
        Bag(b.key, b.label, b.batch, b.position, b.times, b.embeddings, b.mask.copy()) for b in bags
    ]
    for bag in holes:
        bag.mask[1::2] = False  # every other image holds no patch
    _, history = train_mil(holes, ["a", "b"], MILConfig(k=3, epochs=10, batch_bags=3))
    assert history["tss_subsampled_share"] > 0 and np.isfinite(history["epochs"][-1]["loss"])


# --- a store with 4 crops x 2 locations per well -------------------------------------------------


@pytest.fixture(scope="module")
def crops_store(tmp_path_factory, shared_data):
    """One cell line, batches b1 and b2, wells B10 and C10, locations 1-2, crops 1-4, one time
    point: 32 images, 16 sequences a batch... 8 sequences a well."""
    base = tmp_path_factory.mktemp("protocol")
    export = base / "export"
    for batch in ("b1", "b2"):
        folder = export / "SHSY5Y" / batch
        folder.mkdir(parents=True)
        for well in ("B10", "C10"):
            for location in (1, 2):
                for crop in (1, 2, 3, 4):
                    source = (
                        shared_data / LIVECELL / livecell(well, location, 0, (crop - 1) % 2 + 1)
                    )
                    shutil.copy(source, folder / livecell(well, location, 0, crop))
    path = base / "store"
    ingest(export, path, workers=1)
    encode(path, load_encoder(None, TINY, "cpu", seed=0))
    return path


@pytest.mark.realdata
def test_stratified_split_keeps_every_well_on_one_side(crops_store):
    records, _ = list_sequences(EmbeddingStore(crops_store), k=10)
    assert len(records) == 32 and {r.position.count("/") for r in records} == {2}
    for repeat in (1, 2, 3):
        split = make_split(records, "batch-stratified", repeat)
        side = {key: "train" for key in split.train} | {key: "test" for key in split.test}
        wells: dict[tuple[str, str], set[str]] = {}
        for record in records:
            wells.setdefault((record.batch, record.well), set()).add(side[record.key])
        assert len(wells) == 4 and all(len(sides) == 1 for sides in wells.values())
        for batch in ("SHSY5Y/b1", "SHSY5Y/b2"):  # one well of two trains in every batch
            assert [w for (b, w), s in wells.items() if b == batch and s == {"train"}]
            assert [w for (b, w), s in wells.items() if b == batch and s == {"test"}]


@pytest.mark.realdata
def test_inductive_ssl_reads_no_patch_of_the_test_side(crops_store, tmp_path, monkeypatch):
    records, _ = list_sequences(EmbeddingStore(crops_store), k=10)
    split = make_split(records, "batch-stratified", 1)
    split_file = tmp_path / "split.json"
    write_split(split_file, split)
    read: list[int] = []
    original = ssl_module.PatchViews.__getitem__

    def spy(self, item):
        read.extend(int(row) for row in item[1])
        return original(self, item)

    monkeypatch.setattr(ssl_module.PatchViews, "__getitem__", spy)
    out = tmp_path / "ssl.pt"
    # which patches are read is the point here, not what DINO learns in 4 steps: the collapse
    # rules are switched off (tests/test_ssl.py checks them)
    off = {"collapse_uniform": 2.0, "collapse_one_hot": 0.0, "collapse_spread": -1.0}
    dino = DinoConfig(out_dim=256, hidden_dim=256, bottleneck_dim=64, n_local=2, **off)
    summary = ssl_module.ssl_train(
        crops_store, out, 1, 4, TINY, k=2, dino=dino, workers=0, split=read_split(split_file)
    )
    assert (summary.split.kind, summary.split.repeat) == ("batch-stratified", 1)
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    args = ["ssl-train", "--store", str(crops_store), "--out", str(tmp_path / "x.pt"),
            "--split", str(bad)]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "bad.json: not a valid split file" in result.output
    patches = (
        PatchStore(crops_store)
        .query("patches")
        .select("row", "patch_id", "sequence_id", "rank")
        .to_polars()
    )
    seen = patches.filter(pl.col("row").is_in(read))
    assert seen.height == len(set(read)) > 0 and summary.patches == 16 * 2
    assert not set(seen["sequence_id"]) & set(split.test)  # no patch of the test side was read
    assert set(seen["sequence_id"]) <= set(split.train) and (seen["rank"] < 2).all()
    allowed = split_patch_rows(PatchStore(crops_store), split, 2)
    assert set(read) == set(allowed.tolist())  # the whole training side, nothing else

    row = EncoderRecord(
        model_id="m", arch=TINY, img_size=112, embedding_dim=768, config="{}",
        weights_source=out.name, weights_format="clanet-ssl", random_init=False,
        table="embeddings_768", created_at=datetime(2026, 1, 1),
    )  # fmt: skip
    assert encoder_training(row, split, out)["encoder_training"] == "inductive"
    other = make_split(records, "batch-stratified", 2)
    if set(split.train) & set(other.test):
        assert encoder_training(row, other, out)["encoder_training"] == "transductive"
    assert encoder_training(row, split)["encoder_training"] == "unknown"  # checkpoint not given
    random = replace(row, random_init=True, weights_format="random-init", weights_source="x")
    assert encoder_training(random, split)["encoder_training"] == "inductive"
    classic = replace(row, arch="classic", weights_format="classic")  # fitted on all patches
    assert encoder_training(classic, split)["encoder_training"] == "transductive"


# --- QC between fields of one well ---------------------------------------------------------------


@pytest.fixture(scope="module")
def fields_store(tmp_path_factory, shared_data):
    """Fields B10/1 and B10/2 (crop 1, 6 time points, every 12 h) and a defocused copy of B10/1."""
    base = tmp_path_factory.mktemp("fields")
    clean = base / "export" / "SHSY5Y" / "clean"
    field = base / "field1"
    clean.mkdir(parents=True)
    field.mkdir()
    for location in (1, 2):
        for hour in range(0, 72, 12):
            shutil.copy(shared_data / LIVECELL / livecell("B10", location, hour, 1), clean)
            if location == 1:
                shutil.copy(shared_data / LIVECELL / livecell("B10", location, hour, 1), field)
    corrupt_export(field, base / "export" / "SHSY5Y" / "defocus3", "defocus", 3)
    path = base / "store"
    ingest(base / "export", path, workers=1)
    encode(path, load_encoder(None, TINY, "cpu", seed=0))
    return path


@pytest.mark.realdata
def test_two_fields_of_one_well_cannot_tell_but_a_defocused_copy_is_flagged(fields_store):
    params = QCParams(n_permutations=200, contamination=0.1)
    field1, field2 = "batch=clean,location=1", "batch=clean,location=2"
    same_well = run_qc(fields_store, [field1], [field2], params=params).as_dict()
    print(f"\nB10/1 vs B10/2: MMD^2 = {same_well['mmd']:.4g}, image-permutation p = "
          f"{same_well['p_value']:.3g}")  # fmt: skip
    assert same_well["unit"] == "image" and same_well["drift"] is None
    assert (same_well["n_reference_sequences"], same_well["n_new_sequences"]) == (1, 1)
    assert "cannot tell drift from field-to-field variation" in same_well["note"]

    defocused = run_qc(fields_store, [field1], ["batch=defocus3"], params=params).as_dict()
    assert defocused["drift"] is None  # one field a side: the drift test still cannot tell ...
    flagged = [image["path"] for image in defocused["flagged_images"]]
    assert flagged and all("/defocus3/" in p for p in flagged)  # ... but the images are flagged

    # both clean fields as the reference: their own field-to-field MMD^2 is the yardstick
    both = run_qc(fields_store, ["batch=clean"], ["batch=defocus3"], params=params).as_dict()
    yardstick = both["field_to_field_mmd"]
    print(f"reference field-to-field MMD^2 {yardstick}; defocused copy {both['mmd']:.4g}")
    assert yardstick["pairs"] == 1 and np.isfinite(yardstick["max"])
    text = CliRunner().invoke(
        main,
        [
            "qc",
            "--store",
            str(fields_store),
            "--reference",
            "batch=clean",
            "--new",
            "batch=defocus3",
            "--permutations",
            "50",
        ],
    )
    assert text.exit_code == 0 and "CANNOT TELL" in text.output
    assert "reference field-to-field MMD^2: median" in text.output


def test_auto_permutes_sequences_only_when_each_side_has_enough():
    def table(n: int) -> pa.Table:
        return pa.table({"sequence_id": [f"s{i % n}" for i in range(3 * n)]})

    auto = QCParams()
    assert _drift_unit(auto, table(MIN_SEQUENCES), table(MIN_SEQUENCES)) == ("sequence", 5, 5)
    assert _drift_unit(auto, table(MIN_SEQUENCES), table(4))[0] == "image"
    assert _drift_unit(QCParams(permute_by="image"), table(9), table(9))[0] == "image"


# --- method parameters as data: another value, another extractor key, a re-extraction -----------


@pytest.mark.realdata
def test_changed_mask_or_ccs_parameters_make_ingest_re_extract(tmp_path, shared_data):
    from clanet_store.imaging.params import CCSParams, MaskParams, OverlayParams

    folder = tmp_path / "export" / "SHSY5Y" / "b1"
    folder.mkdir(parents=True)
    for hour in (0, 4):
        shutil.copy(shared_data / LIVECELL / livecell("B10", 1, hour, 1), folder)
    store = tmp_path / "store"

    def patches() -> tuple[int, int, set[str]]:
        images = (
            PatchStore(store).query("images").select("patch_count", "extractor_version").to_polars()
        )
        rows = PatchStore(store).query("patches").select("patch_id").to_polars().height
        return rows, int(images["patch_count"].sum()), set(images["extractor_version"])

    first = ingest(tmp_path / "export", store, workers=1)
    assert first.images_added == 2
    rows, counted, keys = patches()
    assert rows == counted and len(keys) == 1
    again = ingest(tmp_path / "export", store, workers=1)
    assert again.images_skipped == 2 and again.images_replaced == 0

    bigger = MaskParams(min_object=2000)
    changed = ingest(tmp_path / "export", store, workers=1, mask_params=bigger)
    assert changed.images_replaced == 2 and changed.extractor_version != first.extractor_version
    rows, counted, new_keys = patches()
    assert rows == counted and new_keys == {changed.extractor_version}  # no duplicate rows
    ccs_changed = ingest(
        tmp_path / "export", store, workers=1, mask_params=bigger,
        ccs_params=CCSParams(tie_break="creation-order"),
    )  # fmt: skip
    assert ccs_changed.images_replaced == 2
    assert ccs_changed.extractor_version not in {first.extractor_version, changed.extractor_version}
    recorded = PatchStore(store).array.attrs["extractors"]
    assert recorded[changed.extractor_version]["mask"]["min_object"] == 2000
    assert recorded[ccs_changed.extractor_version]["ccs"]["tie_break"] == "creation-order"

    # one overlay value, one Canny value: each another key, each a re-extraction
    keys = {first.extractor_version, changed.extractor_version, ccs_changed.extractor_version}
    for params in (
        {"overlay_params": OverlayParams(box_margin=6)},
        {"mask_params": MaskParams(canny_sigma=2.0)},
        {"decode_params": {"scale_percentiles": [1.0, 99.0]}},  # as a pipeline TOML gives it
    ):
        redone = ingest(tmp_path / "export", store, workers=1, **params)
        assert redone.images_replaced == 2 and redone.extractor_version not in keys
        keys.add(redone.extractor_version)
        rows, counted, now = patches()
        assert rows == counted and now == {redone.extractor_version}
    recorded = PatchStore(store).array.attrs["extractors"]
    assert recorded[redone.extractor_version]["decode"]["scale_percentiles"] == [1.0, 99.0]
    assert recorded[first.extractor_version]["mask"]["canny_sigma"] == 1.0
    assert ingest(tmp_path / "export", store, workers=1).images_replaced == 2  # defaults: back
    assert set(
        PatchStore(store)
        .query("images")
        .select("extractor_version")
        .to_polars()["extractor_version"]
    ) == {first.extractor_version}


def test_extraction_parameters_are_tables_of_the_pipeline_toml(tmp_path):
    from clanet_store.imaging.params import STEPS
    from clanet_store.runs.config import load_config
    from clanet_store.runs.stages import _params

    toml = (Path(__file__).parents[1] / "pipelines" / "demo.toml").read_text()
    path = tmp_path / "p.toml"
    path.write_text(toml + "\n[ingest.overlays]\nbox_margin = 6\n[ingest.mask]\ncanny_sigma = 2\n")
    stage = load_config(path, ["ingest.decode={scale_percentiles=[1, 99]}"]).stages["ingest"]
    built = {step: _params(kind, f"ingest.{step}", stage[step]) for step, kind in STEPS.items()}
    assert built["overlays"].box_margin == 6 and built["mask"].canny_sigma == 2.0
    assert built["decode"].scale_percentiles == (1.0, 99.0) and built["ccs"] == STEPS["ccs"]()
    with pytest.raises(ClanetError, match=r"ingest\.overlays: .*bar_colour"):
        _params(STEPS["overlays"], "ingest.overlays", {"bar_colour": 1})
