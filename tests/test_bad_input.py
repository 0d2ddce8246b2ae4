"""The corpus of bad input, through the CLI: every user mistake is one line naming the file or the key, exit
status 2, nothing deleted, nothing executed, nothing half-written. A traceback is a bug in our code.

Each new kind of bad input found later joins these tests.
"""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from formats import (
    save_npz,
    write_h36m_2d,
    write_h36m_3d,
    write_h36m_gmm,
    write_mocap17_root,
    write_mpi3dhp_test,
    write_mpi3dhp_train,
)

from benchmark.cli import main
from benchmark.runner import running
from diffpose.data.h36m import h36m_cameras

LAYOUT = {"S1": {"Directions 1": 12, "TakingPhoto 1": 8}, "S8": {"Eating": 6}, "S9": {"Walking 1": 10}}
TINY = ["--set", "model.lifter=simple_baseline", "--set", "model.hidden=16", "--set", "train.epochs=1",
        "--set", "train.batch_size=32", "--set", "data.eval_stride=2"]


def run(capsys, *argv: str) -> tuple[int, str]:
    """(exit status, stderr) of the CLI."""
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip()


def one_line(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    for needle in needles:
        assert needle in err, (needle, err)


def tree(path: Path) -> dict[str, bytes]:
    """Every file below ``path`` and its bytes (to show that nothing changed)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def h36m_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("h36m")
    poses = write_h36m_3d(root / "data_3d_h36m.npz", LAYOUT, joints=32)
    write_h36m_2d(root / "data_2d_h36m_cpn_ft_h36m_dbb.npz", poses, h36m_cameras(), noise_px=3.0)
    write_h36m_gmm(root / "data_2d_h36m_cpn_ft_h36m_dbb_gmm.npz", poses, h36m_cameras())
    return root


@pytest.fixture(scope="module")
def store(h36m_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stores") / "h36m"
    assert main(["prepare", "--dataset", "h36m", "--root", str(h36m_root), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def checkpoint(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "sb"
    assert main(["train", *TINY, "--set", f"data.store={store}", "--out", str(out)]) == 0
    return out / "best.pt"


def copy_root(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def mocap_root(tmp_path: Path, splits: dict | None = None, layout: dict | None = None) -> Path:
    layout = layout or {"cmu01": {"Walking 01_01": 9}, "cmu08": {"Walking 08_01": 7}, "cmu02": {"Jumping 02_01": 8}}
    splits = splits or {"train": ["cmu01", "cmu08"], "test": ["cmu02"]}
    root = tmp_path / "mocap"
    write_mocap17_root(root, layout, splits, h36m_cameras()["S1"])
    return root


def prepare_mocap(capsys, root: Path, out: Path, *extra: str) -> tuple[int, str]:
    return run(capsys, "prepare", "--dataset", "mocap17", "--root", root, "--out", out, "--detector", "synth", *extra)


# ---- 1. prepare never deletes what it did not write ---------------------------------------------------------

def test_prepare_refuses_a_folder_that_is_not_its_store_and_deletes_nothing(h36m_root, tmp_path, capsys):
    out = tmp_path / "u"
    (out / "sub").mkdir(parents=True)
    (out / "meta.json").write_text("{}")
    (out / "thesis.tex").write_text("x")
    before = tree(out)
    code, err = run(capsys, "prepare", "--dataset", "h36m", "--root", h36m_root, "--out", out)
    one_line(code, err, str(out), "refusing to replace")
    assert tree(out) == before and (out / "sub").is_dir()


def test_prepare_replaces_its_own_store_but_not_one_holding_a_users_file(h36m_root, store, tmp_path, capsys):
    out = tmp_path / "again"
    assert main(["prepare", "--dataset", "h36m", "--root", str(h36m_root), "--out", str(out)]) == 0
    first = json.loads((out / "meta.json").read_text())["fingerprint"]
    assert main(["prepare", "--dataset", "h36m", "--root", str(h36m_root), "--out", str(out)]) == 0
    assert json.loads((out / "meta.json").read_text())["fingerprint"] == first
    assert [p.name for p in tmp_path.iterdir()] == ["again"]  # no temporary or old copy left beside it
    (out / "notes.txt").write_text("mine")
    code, err = run(capsys, "prepare", "--dataset", "h36m", "--root", h36m_root, "--out", out)
    one_line(code, err, str(out))
    assert (out / "notes.txt").read_text() == "mine"


def test_prepare_into_an_unwritable_place(h36m_root, capsys):
    code, err = run(capsys, "prepare", "--dataset", "h36m", "--root", h36m_root, "--out", "/sys/diffpose-store")
    one_line(code, err, "/sys/diffpose-store")


# ---- 2. a file never runs code ------------------------------------------------------------------------------

class Payload:
    """Unpickling this touches ``marker``: what a malicious file would do instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def npz_with_payload(path: Path, key: str, marker: Path) -> None:
    """A real npz whose member ``key`` is an object array holding the payload (as np.savez writes dicts)."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.array({"S1": Payload(marker)}, dtype=object), allow_pickle=True)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{key}.npy", buf.getvalue())


def pickle_with_zip_trailer(path: Path, marker: Path) -> None:
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("positions_3d.npy", b"")
    path.write_bytes(pickle.dumps(Payload(marker)) + zipped.getvalue())


@pytest.mark.parametrize("dataset,name,key", [
    ("h36m", "data_3d_h36m.npz", "positions_3d"),
    ("h36m", "data_2d_h36m_cpn_ft_h36m_dbb.npz", "positions_2d"),
    ("h36m", "data_2d_h36m_cpn_ft_h36m_dbb_gmm.npz", "positions_2d"),
    ("mocap17", "data_2d_cmu_mocap17_gt.npz", "positions_2d"),       # the synthesised-detections path
    ("mocap17", "data_3d_cmu_mocap17.npz", "positions_3d"),
    ("mpi3dhp", "data_train_3dhp.npz", "data"),
    ("mpi3dhp", "data_test_3dhp.npz", "data"),
])
@pytest.mark.parametrize("kind", ["payload in an npz", "pickle renamed .npz", "pickle with a zip trailer"])
def test_no_input_file_is_unpickled_beyond_plain_data(h36m_root, tmp_path, capsys, dataset, name, key, kind):
    if dataset == "h36m":
        root = copy_root(h36m_root, tmp_path / "root")
    elif dataset == "mocap17":
        root = mocap_root(tmp_path)
    else:
        root = tmp_path / "root"
        root.mkdir()
        write_mpi3dhp_train(root / "data_train_3dhp.npz", {"S1 Seq1": 6})
        write_mpi3dhp_test(root / "data_test_3dhp.npz", {"TS1": 6})
    marker = tmp_path / "pwned"
    target = root / name
    if kind == "payload in an npz":
        npz_with_payload(target, key, marker)
    elif kind == "pickle renamed .npz":
        target.write_bytes(pickle.dumps(Payload(marker)))
    else:
        pickle_with_zip_trailer(target, marker)
    out = tmp_path / "store"
    code, err = run(capsys, "prepare", "--dataset", dataset, "--root", root, "--out", out)
    one_line(code, err, str(target))
    assert not marker.exists(), "the file's code ran"
    assert not out.exists()


def test_a_checkpoint_is_never_unpickled_beyond_tensors(tmp_path, capsys):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "best.pt"
    import torch

    torch.save({"config": {}, "config_hash": "x", "model": Payload(marker)}, ckpt)
    code, err = run(capsys, "evaluate", ckpt)
    one_line(code, err, str(ckpt))
    assert not marker.exists()


# ---- 3. evaluate keeps the checkpoint's config ----------------------------------------------------------------

def test_evaluate_applies_set_on_top_of_the_checkpoints_config(checkpoint, tmp_path, capsys):
    # The checkpoint was trained on a store far from the default path, with every 2nd test frame.
    plain, finer = tmp_path / "plain.json", tmp_path / "finer.json"
    assert main(["evaluate", str(checkpoint), "--out", str(plain)]) == 0
    assert main(["evaluate", str(checkpoint), "--set", "data.eval_stride=1", "--out", str(finer)]) == 0
    a, b = json.loads(plain.read_text()), json.loads(finer.read_text())
    assert a["protocol"]["eval_stride"] == 2 and b["protocol"]["eval_stride"] == 1
    assert b["frames"] == 40 and a["frames"] == 20  # S9: 10 frames x 4 cameras, every 1st / 2nd
    assert a["lifter"] == b["lifter"] == "simple_baseline"


@pytest.mark.parametrize("flags,key", [
    (["--set", "model.hidden=32"], "model.hidden"),
    (["--set", "model.lifter=graformer"], "model.lifter"),
    (["--variant", "refiner"], "diffusion.mode"),
    (["--set", "train.epochs=7"], "train.epochs"),
])
def test_evaluate_refuses_changing_what_the_weights_depend_on(checkpoint, tmp_path, capsys, flags, key):
    out = tmp_path / "r.json"
    code, err = run(capsys, "evaluate", checkpoint, *flags, "--out", out)
    one_line(code, err, key, "trained with")
    assert not out.exists()


def test_evaluate_takes_a_config_file_on_top_of_the_checkpoint(checkpoint, tmp_path, capsys):
    cfg = tmp_path / "eval.toml"
    cfg.write_text("[data]\neval_stride = 1\n")
    assert main(["evaluate", str(checkpoint), "--config", str(cfg), "--out", str(tmp_path / "r.json")]) == 0
    cfg.write_text("[model]\nhidden = 8\n")
    one_line(*run(capsys, "evaluate", checkpoint, "--config", cfg), "model.hidden")


# ---- 4. no tracebacks ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["text", "truncated", "missing", "directory", "not ours"])
def test_evaluate_a_bad_checkpoint(checkpoint, tmp_path, capsys, kind):
    ckpt = tmp_path / "bad.pt"
    if kind == "text":
        ckpt.write_text("hello\n")
    elif kind == "truncated":
        ckpt.write_bytes(checkpoint.read_bytes()[:2000])
    elif kind == "directory":
        ckpt.mkdir()
    elif kind == "not ours":
        import torch

        torch.save({"weights": torch.zeros(2)}, ckpt)
    why = {"text": "(not a torch file)", "truncated": "truncated or damaged", "missing": "no such checkpoint",
           "directory": "not a file", "not ours": "not a checkpoint written by"}[kind]
    one_line(*run(capsys, "evaluate", ckpt), str(ckpt), why)


def test_evaluate_out_is_a_directory(checkpoint, tmp_path, capsys):
    one_line(*run(capsys, "evaluate", checkpoint, "--out", tmp_path), str(tmp_path), "directory")


def test_evaluate_out_unwritable(checkpoint, capsys):
    one_line(*run(capsys, "evaluate", checkpoint, "--out", "/sys/diffpose.json"), "/sys/diffpose.json")


@pytest.mark.parametrize("kind", ["directory", "binary", "missing", "not toml", "a section not a table",
                                  "a lifter not a name"])
def test_train_config_file(tmp_path, capsys, kind):
    cfg = tmp_path / "c.toml"
    if kind == "directory":
        cfg.mkdir()
    elif kind == "binary":
        cfg.write_bytes(bytes(range(256)))
    elif kind == "not toml":
        cfg.write_text("[train\n")
    elif kind == "a section not a table":
        cfg.write_text("model = 3\n")
    elif kind == "a lifter not a name":
        cfg.write_text('[encoder]\nlifter = ["graformer"]\n')
    out = tmp_path / "out"
    one_line(*run(capsys, "train", "--config", cfg, "--out", out), str(cfg))
    assert not out.exists()


@pytest.mark.parametrize("setting,key", [
    ("train.device=banana", "train.device"),
    ("train.lr=inf", "train.lr"),
    ("train.lr=nan", "train.lr"),
    ("data.kernels=9", "data.kernels"),
    ("data.val_subjects=S9", "data.val_subjects"),
    ("data.train_subjects=S9", "data.train_subjects"),
    ("data.test_subjects=S42", "data.test_subjects"),
    ("train.epochs=0", "train.epochs"),
    ("model=3", "[model]"),
    ("encoder=x", "[encoder]"),
    ("model.lifter=[1]", "model.lifter"),
])
def test_train_bad_setting(store, tmp_path, capsys, setting, key):
    out = tmp_path / "out"
    code, err = run(capsys, "train", *TINY, "--set", f"data.store={store}", "--set", setting, "--out", out)
    one_line(code, err, key)
    assert not out.exists()


def test_train_on_a_missing_cuda_device(store, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "out"
    one_line(*run(capsys, "train", *TINY, "--set", f"data.store={store}", "--set", "train.device=cuda", "--out",
                  out), "train.device")
    assert not out.exists()


@pytest.mark.parametrize("damage", ["meta.json not json", "meta.json a list", "meta.json missing keys",
                                    "poses.parquet truncated", "poses.parquet missing", "not a store"])
def test_train_on_a_damaged_store(store, tmp_path, capsys, damage):
    bad = tmp_path / "store"
    bad.mkdir()
    for name in ("meta.json", "poses.parquet"):
        (bad / name).write_bytes((store / name).read_bytes())
    if damage == "meta.json not json":
        (bad / "meta.json").write_text("{nope")
    elif damage == "meta.json a list":
        (bad / "meta.json").write_text("[]")
    elif damage == "meta.json missing keys":
        meta = json.loads((bad / "meta.json").read_text())
        del meta["splits"]
        (bad / "meta.json").write_text(json.dumps(meta))
    elif damage == "poses.parquet truncated":
        data = (bad / "poses.parquet").read_bytes()
        (bad / "poses.parquet").write_bytes(data[: len(data) // 2])
    elif damage == "poses.parquet missing":
        (bad / "poses.parquet").unlink()
    else:
        (bad / "meta.json").unlink()
    out = tmp_path / "out"
    code, err = run(capsys, "train", *TINY, "--set", f"data.store={bad}", "--out", out)
    one_line(code, err, str(bad))
    if damage == "meta.json a list":
        assert "not a JSON object" in err
    assert not out.exists()


def test_train_into_a_folder_holding_another_configs_training(store, checkpoint, tmp_path, capsys):
    before = tree(checkpoint.parent)
    code, err = run(capsys, "train", *TINY, "--set", f"data.store={store}", "--set", "train.lr=0.002",
                    "--out", checkpoint.parent)
    one_line(code, err, str(checkpoint.parent), "another config")
    assert tree(checkpoint.parent) == before


def test_train_out_is_a_file(store, tmp_path, capsys):
    out = tmp_path / "file"
    out.write_text("mine")
    one_line(*run(capsys, "train", *TINY, "--set", f"data.store={store}", "--out", out), str(out))
    assert out.read_text() == "mine"


@pytest.mark.parametrize("field,value", [("res_w", "wide"), ("res_w", 0), ("res_h", -5), ("res_w", 10.5),
                                         ("focal_length", "f"), ("focal_length", [0, 1145])])
def test_prepare_camera_json_with_bad_values(tmp_path, capsys, field, value):
    root = mocap_root(tmp_path)
    path = root / "cameras_cmu_mocap17.json"
    doc = json.loads(path.read_text())
    doc["intrinsics"][1][field] = value
    path.write_text(json.dumps(doc))
    out = tmp_path / "store"
    one_line(*prepare_mocap(capsys, root, out), str(path), field)
    assert not out.exists()


@pytest.mark.parametrize("command", ["ablate --suite", "tune --search", "report --suite"])
@pytest.mark.parametrize("kind", ["directory", "binary"])
def test_suite_and_search_files(tmp_path, capsys, command, kind):
    path = tmp_path / "x.toml"
    if kind == "directory":
        path.mkdir()
    else:
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    verb, flag = command.split()
    results = tmp_path / "results"
    one_line(*run(capsys, verb, flag, path, "--results", results), str(path))
    assert not results.exists()


@pytest.mark.parametrize("mistake", ["camera res_w 0", "2D file a pickle", "out unwritable"])
def test_a_mocap_prepare_mistake_is_one_line_before_any_synthesis(tmp_path, mistake):
    """The real CLI in its own process (in-process, pytest's handlers keep the log lines off stderr)."""
    root, out = mocap_root(tmp_path), tmp_path / "store"
    if mistake == "camera res_w 0":
        path = root / "cameras_cmu_mocap17.json"
        doc = json.loads(path.read_text())
        doc["intrinsics"][0]["res_w"] = 0
        path.write_text(json.dumps(doc))
    elif mistake == "2D file a pickle":
        path = root / "data_2d_cmu_mocap17_gt.npz"
        path.write_bytes(pickle.dumps({"positions_2d": {}}))
    else:
        path = out = Path("/proc/diffpose-store")
    proc = subprocess.run([sys.executable, "-m", "benchmark", "prepare", "--dataset", "mocap17", "--root",
                           str(root), "--out", str(out)], capture_output=True, text=True, timeout=120)
    one_line(proc.returncode, proc.stderr.strip(), str(path))
    assert "synthesising" not in proc.stdout + proc.stderr
    assert not (tmp_path / "store").exists()


# ---- 5. accepted, then broken later -----------------------------------------------------------------------

def test_prepare_meta_json_puts_a_subject_in_two_splits(tmp_path, capsys):
    root = mocap_root(tmp_path, splits={"train": ["cmu01", "cmu08", "cmu02"], "test": ["cmu02"]})
    out = tmp_path / "store"
    one_line(*prepare_mocap(capsys, root, out), "meta_cmu_mocap17.json", "cmu02", "two splits")
    assert not out.exists()


def test_prepare_a_subject_in_no_split(tmp_path, capsys):
    root = mocap_root(tmp_path, splits={"train": ["cmu01", "cmu08"], "test": []})
    out = tmp_path / "store"
    one_line(*prepare_mocap(capsys, root, out), "meta_cmu_mocap17.json", "cmu02", "no split")
    assert not out.exists()


def test_prepare_a_subject_without_actions(h36m_root, tmp_path, capsys):
    root = copy_root(h36m_root, tmp_path / "root")
    stored = np.load(root / "data_3d_h36m.npz", allow_pickle=True)["positions_3d"].item()  # our own test file
    stored["S8"] = {}
    save_npz(root / "data_3d_h36m.npz", positions_3d=stored)
    one_line(*run(capsys, "prepare", "--dataset", "h36m", "--root", root, "--out", tmp_path / "s"),
             "data_3d_h36m.npz", "S8", "no actions")


def test_prepare_an_empty_3d_file_names_the_file(h36m_root, tmp_path, capsys):
    root = copy_root(h36m_root, tmp_path / "root")
    save_npz(root / "data_3d_h36m.npz", positions_3d={})
    out = tmp_path / "s"
    one_line(*run(capsys, "prepare", "--dataset", "h36m", "--root", root, "--out", out), "data_3d_h36m.npz",
             "no subjects")
    assert not out.exists()


def test_synthesised_path_errors_name_the_users_file(tmp_path, capsys):
    root = mocap_root(tmp_path)
    gt = root / "data_2d_cmu_mocap17_gt.npz"
    positions = np.load(gt, allow_pickle=True)["positions_2d"].item()  # our own test file
    positions["cmu08"]["Walking 08_01"] = [a[:-3] for a in positions["cmu08"]["Walking 08_01"]]
    save_npz(gt, positions_2d=positions)
    out = tmp_path / "store"
    one_line(*prepare_mocap(capsys, root, out), str(gt), "fewer than")
    assert not out.exists()


@pytest.mark.parametrize("text,key", [
    ("max_failures = -1", "suite.max_failures"),
])
def test_suite_values_that_would_break_later(fake_store, tmp_path, capsys, text, key):
    path = tmp_path / "s.toml"
    path.write_text(f'[suite]\nname = "s"\nvariants = ["full"]\n{text}\n\n[datasets.d]\nstore = "{fake_store}"\n')
    results = tmp_path / "results"
    one_line(*run(capsys, "ablate", "--suite", path, "--results", results), str(path), key)
    assert not results.exists()


def test_search_max_failures_below_zero(fake_store, tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text(f'[search]\nname = "s"\ndataset = "d"\nvariant = "full"\nmax_failures = -1\n\n'
                    f'[datasets.d]\nstore = "{fake_store}"\n\n[space]\n'
                    f'"train.lr" = {{ type = "logfloat", low = 1e-4, high = 1e-2 }}\n')
    results = tmp_path / "results"
    one_line(*run(capsys, "tune", "--search", path, "--results", results), str(path), "search.max_failures")
    assert not results.exists()


def test_train_out_unwritable(store, capsys):
    one_line(*run(capsys, "train", *TINY, "--set", f"data.store={store}", "--out", "/sys/diffpose-run"),
             "/sys/diffpose-run")


def test_bench_out_is_a_directory(store, tmp_path, capsys):
    one_line(*run(capsys, "bench", "--store", store, "--out", tmp_path), str(tmp_path), "directory")


def test_report_of_results_where_nothing_ran(tmp_path, capsys):
    results = tmp_path / "results"
    one_line(*run(capsys, "report", "--experiment", "demo", "--results", results), "mlflow.db")
    assert not results.exists()


def test_report_of_an_experiment_that_never_ran(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    results = tmp_path / "results"
    results.mkdir()
    uri = f"sqlite:///{results / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("other")
    before = sorted(p.name for p in results.iterdir())
    capsys.readouterr()  # MLflow's own messages on creating the database
    one_line(*run(capsys, "report", "--experiment", "demo", "--results", results), "'demo'")
    assert sorted(p.name for p in results.iterdir()) == before


def test_report_published_onto_a_users_file_is_refused_before_the_build(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    results = tmp_path / "results"
    results.mkdir()
    MlflowClient(f"sqlite:///{results / 'mlflow.db'}").create_experiment("demo")
    notes = tmp_path / "notes.md"
    notes.write_text("# my notes\n")
    capsys.readouterr()
    one_line(*run(capsys, "report", "--experiment", "demo", "--results", results, "--publish", notes),
             str(notes), "not written by")
    assert notes.read_text() == "# my notes\n" and not (results / "report").exists()
    one_line(*run(capsys, "report", "--experiment", "demo", "--results", results, "--publish", tmp_path / "x.txt"),
             "x.txt", ".md")
    target = tmp_path / "docs" / "demo.md"
    assert main(["report", "--experiment", "demo", "--results", str(results), "--publish", str(target)]) == 0
    assert "No finished trial runs" in target.read_text() and (tmp_path / "docs" / "demo" / ".published").is_file()
    # its results store goes with it, another report's reference
    store = tmp_path / "docs" / "demo" / "results.parquet"
    assert "results.parquet" in (tmp_path / "docs" / "demo" / ".published").read_text().splitlines()
    assert main(["report", "--experiment", "demo", "--results", str(results), "--reference", str(store)]) == 0


def test_report_against_a_reference_that_is_not_a_results_store_names_it_and_writes_nothing(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    results = tmp_path / "results"
    results.mkdir()
    MlflowClient(f"sqlite:///{results / 'mlflow.db'}").create_experiment("demo")
    before = sorted(p.name for p in results.iterdir())
    notes = tmp_path / "notes.md"
    notes.write_text("# my notes\n")
    for reference, needle in ((tmp_path / "none.parquet", "no such results file"), (notes, "not a results store"),
                              (tmp_path, "not a results store")):
        capsys.readouterr()
        one_line(*run(capsys, "report", "--experiment", "demo", "--results", results, "--reference", reference),
                 str(reference), needle)
    assert sorted(p.name for p in results.iterdir()) == before and notes.read_text() == "# my notes\n"


def test_report_with_a_damaged_list_of_the_suites_trials_names_it_and_writes_nothing(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from reports.results import SUITE_TRIALS

    results = tmp_path / "results"
    results.mkdir()
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    experiment = client.create_experiment("demo", artifact_location=str(tmp_path / "artifacts"))
    suite_run = client.create_run(experiment, tags={"diffpose.role": "suite"}).info.run_id
    client.log_text(suite_run, '["a1b2c3", ', SUITE_TRIALS)
    capsys.readouterr()
    one_line(*run(capsys, "report", "--experiment", "demo", "--results", results),
             f"{SUITE_TRIALS} of suite run {suite_run}", "not a JSON list")
    assert sorted(p.name for p in results.iterdir()) == ["mlflow.db"]


def test_ablate_overrides_not_toml(fake_store, tmp_path, capsys):
    suite = tmp_path / "s.toml"
    suite.write_text(f'[suite]\nname = "s"\nvariants = ["full"]\n\n[datasets.d]\nstore = "{fake_store}"\n')
    over = tmp_path / "best.toml"
    over.write_bytes(b"\x00\x01binary")
    results = tmp_path / "results"
    one_line(*run(capsys, "ablate", "--suite", suite, "--overrides", over, "--results", results), str(over))
    assert not results.exists()


# ---- 6. lift and fit-gmm: a user's own 2D files --------------------------------------------------------------

def _coco_frames(frames: int = 3, joints: int = 17, score: float = 0.9) -> list:
    rng = np.random.default_rng(0)
    return [{"frame_id": t, "instances": [{"keypoints": rng.uniform(100, 900, (joints, 2)).tolist(),
                                           "keypoint_scores": [score] * joints, "bbox_score": 0.9}]}
            for t in range(frames)]


def _bad_keypoints(tmp_path: Path, kind: str) -> tuple[Path, list[str]]:
    """A bad keypoint file of ``kind`` and the extra flags the case needs."""
    size = ["--width", "1000", "--height", "1000"]
    path = tmp_path / "k.json"
    if kind == "missing":
        return tmp_path / "nope.json", size
    if kind == "empty directory":
        path = tmp_path / "frames"
        path.mkdir()
        return path, size
    if kind == "binary":
        path = tmp_path / "k.bin"
        path.write_bytes(bytes(range(256)) * 4)
    elif kind == "not json":
        path.write_text('[{"frame_id": 0, "instances": [')
    elif kind == "16 joints":
        path.write_text(json.dumps(_coco_frames(joints=16)))
    elif kind == "NaN":
        frames = _coco_frames()
        frames[1]["instances"][0]["keypoints"][3][0] = float("nan")
        path.write_text(json.dumps(frames))
    elif kind == "no image size":
        path.write_text(json.dumps(_coco_frames()))
        return path, []
    elif kind == "nobody":
        path.write_text(json.dumps([{"frame_id": t, "instances": []} for t in range(3)]))
    elif kind == "all below min-score":
        path.write_text(json.dumps(_coco_frames(score=0.1)))
    elif kind == "npz of 16 joints":
        path = tmp_path / "k.npz"
        np.savez(path, keypoints=np.zeros((4, 16, 2)))
    elif kind == "csv of 33 values":
        path = tmp_path / "k.csv"
        path.write_text(",".join(["1.0"] * 34) + "\n" + ",".join(["1.0"] * 33) + "\n")
    elif kind == "format named wrongly":
        path = tmp_path / "k.npz"
        np.savez(path, keypoints=np.zeros((4, 17, 2)))
        return path, [*size, "--format", "coco"]
    return path, size


@pytest.mark.parametrize("kind", ["missing", "empty directory", "binary", "not json", "16 joints", "NaN",
                                  "no image size", "nobody", "all below min-score", "npz of 16 joints",
                                  "csv of 33 values", "format named wrongly"])
def test_lift_a_bad_keypoint_file(checkpoint, tmp_path, capsys, kind):
    path, flags = _bad_keypoints(tmp_path, kind)
    out = tmp_path / "out"
    one_line(*run(capsys, "lift", checkpoint, "--keypoints", path, "--out", out, *flags), str(path))
    assert not out.exists()


def test_lift_never_unpickles_a_keypoint_file(checkpoint, tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = tmp_path / "k.npz"
    npz_with_payload(path, "keypoints", marker)
    out = tmp_path / "out"
    one_line(*run(capsys, "lift", checkpoint, "--keypoints", path, "--out", out, "--width", 1000, "--height", 1000),
             str(path))
    assert not marker.exists() and not out.exists()


def _good_npz(tmp_path: Path) -> Path:
    path = tmp_path / "good.npz"
    np.savez(path, keypoints=np.random.default_rng(0).uniform(100, 900, (4, 17, 2)), image_size=np.array([1000, 1000]))
    return path


@pytest.mark.parametrize("flags,needle", [
    (["--frame", "9"], "--frame"),
    (["--set", "model.hidden=8"], "model.hidden"),
    (["--device", "banana"], "--device"),
    (["--sigma", "0"], "--sigma"),
    (["--subject", "S1"], "--subject"),
])
def test_lift_bad_flags(checkpoint, tmp_path, capsys, flags, needle):
    out = tmp_path / "out"
    one_line(*run(capsys, "lift", checkpoint, "--keypoints", _good_npz(tmp_path), "--out", out, *flags), needle)
    assert not out.exists()


def test_lift_a_missing_checkpoint_or_an_out_that_is_a_file(checkpoint, tmp_path, capsys):
    good = _good_npz(tmp_path)
    out = tmp_path / "out"
    one_line(*run(capsys, "lift", tmp_path / "none.pt", "--keypoints", good, "--out", out), "none.pt")
    assert not out.exists()
    out.write_text("mine")
    one_line(*run(capsys, "lift", checkpoint, "--keypoints", good, "--out", out), str(out))
    assert out.read_text() == "mine"


def test_lift_a_store_clip_that_is_not_there(checkpoint, store, tmp_path, capsys):
    out = tmp_path / "out"
    one_line(*run(capsys, "lift", checkpoint, "--keypoints", store, "--subject", "S42", "--out", out), "S42")
    # S9 holds one action (taken) and four cameras (which one?)
    one_line(*run(capsys, "lift", checkpoint, "--keypoints", store, "--subject", "S9", "--out", out), "--camera")
    assert not out.exists()


def test_lift_and_bench_on_a_missing_cuda_device(checkpoint, store, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "out"
    one_line(*run(capsys, "lift", checkpoint, "--keypoints", _good_npz(tmp_path), "--out", out, "--device", "cuda"),
             "--device")
    one_line(*run(capsys, "bench", "--store", store, "--out", tmp_path / "b.json", "--device", "cuda"), "--device")
    assert not out.exists() and not (tmp_path / "b.json").exists()


def _heatmap_file(path: Path, kind: str) -> Path:
    t, h, w = 2, 8, 6
    heat = np.random.default_rng(0).uniform(0.1, 1.0, (t, 17, h, w))
    members = {"heatmaps": heat, "boxes": np.tile([10.0, 20.0, 70.0, 100.0], (t, 1))}
    if kind == "16 joints":
        members["heatmaps"] = heat[:, :16]
    elif kind == "no boxes":
        del members["boxes"]
    elif kind == "boxes and affine":
        members["affine"] = np.zeros((t, 2, 3))
    elif kind == "box upside down":
        members["boxes"][1] = [10.0, 100.0, 70.0, 20.0]
    elif kind == "boxes of another length":
        members["boxes"] = members["boxes"][:1]
    elif kind == "NaN":
        members["heatmaps"][1, 3, 2, 2] = np.nan
    elif kind == "a joint without mass":
        members["heatmaps"][1, 5] = -0.5
    elif kind == "camera not a number":
        members["camera"] = np.array("left")
    np.savez(path, **members)
    return path


@pytest.mark.parametrize("kind", ["16 joints", "no boxes", "boxes and affine", "box upside down",
                                  "boxes of another length", "NaN", "a joint without mass", "camera not a number",
                                  "missing", "directory", "text"])
def test_fit_gmm_a_bad_heatmap_file(tmp_path, capsys, kind):
    path = tmp_path / "h.npz"
    if kind == "directory":
        path.mkdir()
    elif kind == "text":
        path.write_text("heatmaps\n")
    elif kind != "missing":
        _heatmap_file(path, kind)
    out = tmp_path / "out"
    one_line(*run(capsys, "fit-gmm", path, "--out", out), str(path))
    assert not out.exists()


def test_fit_gmm_never_unpickles_a_heatmap_file(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = tmp_path / "h.npz"
    npz_with_payload(path, "heatmaps", marker)
    out = tmp_path / "out"
    one_line(*run(capsys, "fit-gmm", path, "--out", out), str(path))
    assert not marker.exists() and not out.exists()


def test_fit_gmm_clips_that_collide_or_skip_a_camera(tmp_path, capsys):
    a = _heatmap_file(tmp_path / "a.npz", "good")
    b = _heatmap_file(tmp_path / "b.npz", "good")
    out = tmp_path / "out"
    one_line(*run(capsys, "fit-gmm", a, b, "--out", out, "--subject", "S1"), "b.npz", "camera 0")
    one_line(*run(capsys, "fit-gmm", a, "--out", out, "--camera", "1"), "a.npz", "cameras [1]")
    assert not out.exists()


@pytest.mark.parametrize("flags,needle", [(["--kernels", "0"], "--kernels"), (["--name", "a/b"], "--name"),
                                          (["--peak-ratio", "2"], "--peak-ratio")])
def test_fit_gmm_bad_flags(tmp_path, capsys, flags, needle):
    out = tmp_path / "out"
    one_line(*run(capsys, "fit-gmm", _heatmap_file(tmp_path / "h.npz", "good"), "--out", out, *flags), needle)
    assert not out.exists()


def test_fit_gmm_out_is_a_file(tmp_path, capsys):
    out = tmp_path / "out"
    out.write_text("mine")
    one_line(*run(capsys, "fit-gmm", _heatmap_file(tmp_path / "h.npz", "good"), "--out", out), str(out))
    assert out.read_text() == "mine"


def test_carry_mistakes(store, tmp_path, capsys):
    text = f'[suite]\nname = "s"\nvariants = ["simple_baseline"]\n\n[datasets.d]\nstore = "{store}"\n'
    path = tmp_path / "s.toml"
    path.write_text(text)
    results, folder = tmp_path / "results", tmp_path / "carried"
    one_line(*run(capsys, "carry", "--suite", path, "--results", results), str(path), "suite.carry", "--to")
    one_line(*run(capsys, "carry", "--suite", path, "--results", results, "--to", folder),
             str(results / "trainings"), "has not run")
    (results / "trainings").mkdir(parents=True)
    one_line(*run(capsys, "carry", "--suite", path, "--results", results, "--to", path), str(path), "not a folder")
    path.write_text(text.replace('name = "s"', f'name = "s"\ncarry = "{tmp_path / "none" / "store"}"')
                    .replace(str(store), str(tmp_path / "none" / "store")))
    one_line(*run(capsys, "carry", "--suite", path, "--results", results), str(tmp_path / "none" / "store"),
             "no store")
    assert not folder.exists() and not (tmp_path / "none").exists()


def test_progress_mistakes(store, tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text(f'[suite]\nname = "s"\nvariants = ["simple_baseline"]\n\n[datasets.d]\nstore = "{store}"\n')
    results = tmp_path / "results"
    one_line(*run(capsys, "progress", "--suite", path, "--results", results), str(results / "trainings"),
             "has not run")
    one_line(*run(capsys, "progress", "--suite", tmp_path / "none.toml"), "none.toml")
    assert not results.exists()


def test_ablate_refuses_a_foreign_carried_file_before_anything_is_written(store, tmp_path, capsys):
    carried = tmp_path / "carried" / "graformer-0123456789abcdef"
    carried.mkdir(parents=True)
    (carried / "checkpoint.pt").write_bytes(b"not a checkpoint")
    (carried / "best.pt").write_bytes(b"not weights")
    path = tmp_path / "s.toml"
    path.write_text(f'[suite]\nname = "s"\nvariants = ["graformer"]\ncarry = "{tmp_path / "carried"}"\n\n'
                    f'[datasets.d]\nstore = "{store}"\n')
    results = tmp_path / "results"
    one_line(*run(capsys, "ablate", "--suite", path, "--results", results), str(carried / "checkpoint.pt"))
    assert not results.exists()


def test_a_suite_already_running_on_the_results_is_refused_until_its_driver_is_gone(store, tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text(f'[suite]\nname = "s"\nvariants = ["simple_baseline"]\n\n[datasets.d]\nstore = "{store}"\n')
    results = tmp_path / "results"
    holder = subprocess.Popen(  # another driver of the suite on these results, holding its lock
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from benchmark.runner import running\n"
         f"with running(Path({str(results)!r}), 's'):\n    print('held', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = tree(results)
        one_line(*run(capsys, "ablate", "--suite", path, "--results", results), str(results),
                 "suite s is already running", f"driver PID {holder.pid}")
        assert tree(results) == before  # no MLflow database, no suite run, no Ray
    finally:
        holder.kill()
        holder.wait()
    with running(results, "s"):  # the killed driver's lock went with it; its file is still there
        pass
    assert list((results / "running").iterdir())
