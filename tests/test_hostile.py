"""A hostile user's session (issue 17), on real stores, a real Dask cluster, LanceDB and Zarr:
a lost or corrupt store.json, symlink loops and unreadable folders, a writer killed between its
two commits (injected there with CLANET_STORE_FAULT, never by timing), bad model and weights
files, Ctrl-C and SIGTERM, control characters in names, bad filter values, Dask's dashboard."""

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import psutil
import pytest
import torch
import zarr
from click.testing import CliRunner

from clanet_store.cli import main
from clanet_store.stores.embedding_store import EmbeddingStore
from clanet_store.stores.patch_store import PatchStore
from clanet_store.stores.query import vectors

BIN = Path(sys.executable).parent
FIRST = ("A431", "BT474")  # 14 real images
LATER = "HCC 2279"  # 3 more
ARCH = "vit_tiny_patch16_224"  # a small random-init encoder: the tests check plumbing, not science
INTERRUPTED = "interrupted; the store is consistent; run the same command to continue"


def _copy(shared_data: Path, dest: Path, lines=FIRST) -> Path:
    for line in lines:
        shutil.copytree(shared_data / "azgcb_sample" / line, dest / line)
    return dest


def _cli(*args: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """The installed command in a process of its own (a new session, like a terminal job)."""
    return subprocess.run(
        [str(BIN / "clanet-store"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
        start_new_session=True,
        **kwargs,
    )


def _one_line_error(res: subprocess.CompletedProcess, *needles: str) -> str:
    """A failed command printed exactly one line on stderr (besides the report's stage lines),
    no traceback, naming ``needles``."""
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    lines = [x for x in res.stderr.strip().splitlines() if not x.strip().startswith("report: ")]
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr and "weights_only=False" not in res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _pixels(store_path: Path) -> dict[str, bytes]:
    """patch_id -> pixels of the committed patches."""
    store = PatchStore(store_path)
    rows = store.query("patches").select("patch_id", "row").to_polars()
    return {
        pid: px.tobytes()
        for pid, px in zip(rows["patch_id"], store.read_rows(rows["row"].to_numpy()), strict=True)
    }


def _tables(store_path: Path, placement: bool = True) -> dict[str, pl.DataFrame]:
    """The images and committed patches rows; without ``placement`` the slots and array rows,
    which follow the order in which workers finished, are left out."""
    store = PatchStore(store_path)
    images = store.query("images").to_polars().drop("ingested_at").sort("image_id")
    patches = store.query("patches").to_polars().sort("patch_id")
    if not placement:
        images, patches = images.drop("slot"), patches.drop("row")
    return {"images": images, "patches": patches}


@pytest.fixture(scope="module")
def export(tmp_path_factory, shared_data) -> Path:
    return _copy(shared_data, tmp_path_factory.mktemp("hostile") / "export")


@pytest.fixture(scope="module")
def clean_store(tmp_path_factory, export) -> Path:
    """The export ingested by one clean run, and encoded by a random-init ViT-Ti."""
    path = tmp_path_factory.mktemp("clean") / "store"
    res = _cli("ingest", str(export), "--store", str(path), "--workers", "2")
    assert res.returncode == 0, res.stderr
    res = _cli("encode", "--store", str(path), "--arch", ARCH, "--device", "cpu")
    assert res.returncode == 0, res.stderr
    return path


# --- 1. a lost store.json: never overwrite, repair ----------------------------------------------


@pytest.mark.realdata
def test_lost_store_json_ingest_refuses_and_repair_restores(clean_store, export, tmp_path):
    path = tmp_path / "store"
    shutil.copytree(clean_store, path)
    meta = json.loads((path / "store.json").read_text())
    pixels, tables = _pixels(path), _tables(path)
    array_before = zarr.open_array(str(path / "patches.zarr"), mode="r")[:]
    assert array_before.any()
    (path / "store.json").unlink()

    res = _cli("ingest", str(export), "--store", str(path), "--workers", "1")
    line = _one_line_error(res, str(path), "store.json", "patches.zarr", "lance/", "repair")
    np.testing.assert_array_equal(zarr.open_array(str(path / "patches.zarr"))[:], array_before)
    assert not (path / "store.json").exists()
    _one_line_error(_cli("info", "--store", str(path)), "store.json", "repair")
    assert "missing" in line

    res = _cli("repair", "--store", str(path), "--format", "json")
    assert res.returncode == 0, res.stderr
    meta.pop("sequence_sources")  # a cache repair leaves out (pipelines/repair.py)
    assert json.loads((path / "store.json").read_text()) == meta
    assert _pixels(path) == pixels
    assert all(t.equals(tables[k]) for k, t in _tables(path).items())
    # a second repair has nothing to do; the repaired store ingests (nothing new) as before
    _one_line_error(_cli("repair", "--store", str(path)), "nothing to repair")
    res = _cli("ingest", str(export), "--store", str(path), "--format", "json")
    assert json.loads(res.stdout)["images_skipped"] == 14


@pytest.mark.realdata
def test_repair_refuses_when_array_and_tables_disagree(clean_store, tmp_path):
    path = tmp_path / "store"
    shutil.copytree(clean_store, path)
    (path / "store.json").unlink()
    # the damage of issue 17: an empty array of the right shape where the pixels were
    old = zarr.open_array(str(path / "patches.zarr"), mode="r")
    zarr.create_array(
        store=str(path / "patches.zarr"),
        shape=old.shape,
        chunks=old.chunks,
        dtype="uint8",
        attributes=dict(old.attrs),
        overwrite=True,
    )
    _one_line_error(_cli("repair", "--store", str(path)), "disagree", "never written")
    assert not (path / "store.json").exists()


def test_store_is_created_only_in_a_new_or_empty_folder(tmp_path, shared_data):
    export = tmp_path / "export" / "A431"
    export.mkdir(parents=True)
    shutil.copy(shared_data / "azgcb_sample" / "A431" / "A431_B1_1_00d00h00m.jpg", export)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    res = _cli("ingest", str(export.parent), "--store", str(busy), "--workers", "1")
    _one_line_error(res, str(busy), "not empty", "notes.txt", "new or empty folder")
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    res = _cli("ingest", str(export.parent), "--store", str(empty), "--workers", "1")
    assert res.returncode == 0, res.stderr


# --- 2. symlink loops and unreadable folders -------------------------------------------------


def _without_root_file_access() -> None:
    """In the child, before exec: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the
    bounding set, so that even root is refused a folder without read permission."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.mark.realdata
def test_symlink_loop_and_unreadable_folder_are_rejects(shared_data, tmp_path):
    root = _copy(shared_data, tmp_path / "export", lines=("A431", "BT474"))
    (root / "A431" / "loop").symlink_to(root / "A431")  # a folder linking to its parent
    (root / "self").symlink_to(root / "self")  # a link to itself (ELOOP)
    locked = root / "BT474"
    locked.chmod(0)
    try:
        res = _cli(
            "ingest",
            str(root),
            "--store",
            str(tmp_path / "store"),
            "--workers",
            "1",
            "--format",
            "json",
            preexec_fn=_without_root_file_access if os.geteuid() == 0 else None,
        )
    finally:
        locked.chmod(0o755)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    reasons = {r["path"]: r["reason"] for r in report["rejects"]}
    assert "symlink loop" in reasons["A431/loop/"]
    assert "symbolic links" in reasons["self"]
    assert "Permission denied" in reasons["BT474/"]
    assert report["images_added"] == 7  # all of A431, once
    assert report["images_rejected"] == 3


# --- 3. a corrupt store.json -------------------------------------------------------------------

CORRUPT = {
    "garbage": b"\x00\xffnot json at all",
    "empty": b"",
    "list": b"[]",
    "version-string": None,  # the real store.json with store_version "1"
}


@pytest.mark.realdata
@pytest.mark.parametrize("case", CORRUPT)
def test_corrupt_store_json_is_one_line_naming_file_and_repair(case, clean_store, tmp_path):
    path = tmp_path / "store"
    shutil.copytree(clean_store, path)
    meta_path = path / "store.json"
    if CORRUPT[case] is None:
        meta = json.loads(meta_path.read_text())
        meta_path.write_text(json.dumps({**meta, "store_version": "1"}))
    else:
        meta_path.write_bytes(CORRUPT[case])
    for args in (("info",), ("search", "--patch-id", "x"), ("encode", "--arch", ARCH)):
        _one_line_error(_cli(*args, "--store", str(path)), str(meta_path), "repair")
    res = _cli("repair", "--store", str(path))
    assert res.returncode == 0, res.stderr
    assert (path / "store.json.corrupt").exists()
    assert _cli("info", "--store", str(path)).returncode == 0


# --- 4. readers see only committed patches -----------------------------------------------------


@pytest.mark.realdata
def test_killed_between_commits_readers_see_only_committed(
    clean_store, export, tmp_path, shared_data
):
    path = tmp_path / "store"
    shutil.copytree(clean_store, path)
    committed = set(_pixels(path))
    more = _copy(shared_data, tmp_path / "more", lines=(*FIRST, LATER))
    res = _cli(
        "ingest",
        str(more),
        "--store",
        str(path),
        "--workers",
        "1",
        env={"CLANET_STORE_FAULT": "after_patches_commit:SIGKILL"},
    )
    assert res.returncode == -signal.SIGKILL
    store = PatchStore(path)
    assert store.table("patches").count_rows() > len(committed)  # the kill left rows behind

    info = json.loads(_cli("info", "--store", str(path), "--format", "json").stdout)
    assert info["patches"] == len(committed) == sum(b["patches"] for b in info["per_batch"])
    assert set(store.query("patches").to_polars()["patch_id"]) == committed

    res = _cli("encode", "--store", str(path), "--arch", ARCH, "--format", "json")
    assert json.loads(res.stdout)["patches_encoded"] == 0, res.stderr
    es = EmbeddingStore(path)
    embedded = es.query("embeddings").select("patch_id", "embedding").to_polars()
    assert set(embedded["patch_id"]) == committed
    query = vectors(es.query("embeddings").select("embedding").to_arrow())[0]
    hits = es.search(query, k=len(committed) + 50)
    assert set(hits["patch_id"]) <= committed and hits.height == len(committed)

    # a changed image, ingested to the end: its old patches (and their embeddings) are gone at
    # once, before the next encode
    changed = more / "A431" / "A431_B1_1_00d00h00m.jpg"
    changed.write_bytes((more / "A431" / "A431_C6_1_04d00h00m.jpg").read_bytes())
    res = _cli("ingest", str(more), "--store", str(path), "--workers", "1", "--format", "json")
    assert json.loads(res.stdout)["images_replaced"] == 1, res.stderr
    now = set(PatchStore(path).query("patches").to_polars()["patch_id"])
    es = EmbeddingStore(path)
    hits = es.search(query, k=len(now) + 50)
    assert set(hits["patch_id"]) <= now
    assert set(es.query("embeddings").select("patch_id").to_polars()["patch_id"]) <= now


# --- 5. model and weights files -----------------------------------------------------------------


@pytest.mark.realdata
@pytest.mark.parametrize(
    "content", [b"", b"this is a text file, not a model\n"], ids=["0-byte", "text"]
)
def test_bad_model_and_weights_files_are_one_line(content, clean_store, tmp_path, shared_data):
    bad = tmp_path / "model.pt"
    bad.write_bytes(content)
    for args in (
        ("evaluate", "--store", str(clean_store), "--model", str(bad)),
        ("predict", "--store", str(clean_store), "--model", str(bad), "--where", "batch=A431"),
        ("report", "--store", str(clean_store), "--model", str(bad), "--out", str(tmp_path / "r")),
        ("encode", "--store", str(clean_store), "--weights", str(bad)),
    ):
        _one_line_error(_cli(*args), str(bad), "not a")
    # a pickle that is not plain weights: refused, without torch's advice to allow it
    evil = tmp_path / "evil.pt"
    torch.save({"payload": uuid.uuid4()}, evil)
    line = _one_line_error(_cli("evaluate", "--store", str(clean_store), "--model", str(evil)))
    assert str(evil) in line and "never loaded" in line
    # search --image --weights on a random-init store: the weights are checked, never ignored
    image = shared_data / "azgcb_sample" / "A431" / "A431_B1_1_00d00h00m.jpg"
    search = ("search", "--store", str(clean_store), "--image", str(image), "--weights")
    _one_line_error(_cli(*search, str(tmp_path / "missing.pth")), "missing.pth", "no such file")
    _one_line_error(_cli(*search, str(bad)), str(bad), "not a")
    assert _cli(*search[:-1]).returncode == 0


# --- 6. interrupts ----------------------------------------------------------------------------


def _leftovers(token: str) -> list[psutil.Process]:
    """Processes (workers, nannies, the command) started with this token in their environment."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("HOSTILE_TOKEN") == token:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


@pytest.mark.realdata
@pytest.mark.parametrize("signame,code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_interrupt_is_one_line_and_the_rerun_completes(
    signame, code, clean_store, export, tmp_path
):
    path = tmp_path / "store"
    token = uuid.uuid4().hex
    args = ("ingest", str(export), "--store", str(path), "--workers", "2", "--commit-every", "2")
    # SIGINT goes to the whole process group, as Ctrl-C in a terminal does
    env = {"CLANET_STORE_FAULT": f"after_patches_commit:{signame}", "HOSTILE_TOKEN": token}
    res = _cli(*args, env=env)
    assert res.returncode == code, res.stderr
    assert res.stderr.strip().splitlines() == [INTERRUPTED]
    deadline = time.monotonic() + 30  # a cap for slow teardown, not a synchronisation
    while _leftovers(token) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _leftovers(token)
    assert PatchStore(path).query("patches").to_polars().height < len(_pixels(clean_store))
    res = _cli(*args, "--format", "json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["recovered_rows"] > 0
    assert _pixels(path) == _pixels(clean_store)
    clean = _tables(clean_store, placement=False)
    assert all(t.equals(clean[k]) for k, t in _tables(path, placement=False).items())


# --- 7. small ones -----------------------------------------------------------------------------


@pytest.mark.realdata
def test_control_characters_in_names_are_printed_escaped(tmp_path, shared_data):
    evil = "A431\x1b]0;owned\x07"
    root = tmp_path / "export"
    (root / evil).mkdir(parents=True)
    src = shared_data / "azgcb_sample" / "A431" / "A431_B1_1_00d00h00m.jpg"
    shutil.copy(src, root / evil / src.name)
    shutil.copy(src, root / evil / "bad\x1b[2Jname.jpg")
    path = tmp_path / "store"
    res = _cli("ingest", str(root), "--store", str(path), "--workers", "1")
    assert res.returncode == 0, res.stderr
    res2 = _cli("info", "--store", str(path))
    for out in (res.stdout, res2.stdout):
        assert "\x1b" not in out and "\x07" not in out
    assert "bad\\x1b[2Jname.jpg" in res.stdout
    assert "A431\\x1b]0;owned\\x07" in res2.stdout
    json_out = json.loads(_cli("info", "--store", str(path), "--format", "json").stdout)
    assert json_out["per_batch"][0]["cell_line"] == evil  # JSON keeps the name exact


@pytest.mark.realdata
@pytest.mark.parametrize(
    "where,value",
    [("timepoint_h<NaN", "NaN"), ("location=99999999999999999999", "99999999999999999999")],
)
def test_bad_filter_values_are_errors_naming_the_value(where, value, clean_store):
    es = EmbeddingStore(clean_store)
    patch_id = es.query("embeddings").select("patch_id").to_polars()["patch_id"][0]
    res = CliRunner().invoke(
        main, ["search", "--store", str(clean_store), "--patch-id", patch_id, "--where", where]
    )
    assert res.exit_code == 1, res.output
    assert value in res.output and res.output.startswith("Error: filter on")


def _listening(procs) -> set:
    return {
        s.laddr
        for p in procs
        for s in p.net_connections(kind="inet")
        if s.status == psutil.CONN_LISTEN
    }


def test_local_cluster_has_no_dashboard_and_listens_on_localhost_only():
    from clanet_store.pipelines.ingest import dask_client

    me = psutil.Process()
    blocker = socket.socket()
    with contextlib.suppress(OSError):  # else in use already
        blocker.bind(("127.0.0.1", 8787))  # port 8787 in use, as with a second cluster
        blocker.listen()
    try:
        before = _listening([me])  # the blocker
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with dask_client(2, None) as client:
                assert client.run(lambda: 1)  # the workers are up
                cluster = _listening([me, *me.children(recursive=True)]) - before
        assert cluster and all(addr.ip == "127.0.0.1" for addr in cluster)
        assert not [w for w in caught if "8787" in str(w.message)]
        assert not any(addr.port == 8787 for addr in cluster)
    finally:
        blocker.close()
