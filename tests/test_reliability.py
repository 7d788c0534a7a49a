"""Bad input, crashes and untrusted files, through the real command line.

* Every kind of bad input the CLI meets (missing or unreadable data, truncated or wrong-magic IDX
  files, float images with NaN, images of the wrong shape for a model, an unknown variant, a bad
  config value, a model URI that does not resolve, weights or checkpoints of another variant or
  shape, an output folder in use) ends in exit status 1 and one stderr line that names the file,
  field or URI, with no traceback and no half-made run folder left behind. Seven cases run the
  installed `vaezoo` script (four at a time), so nothing a library prints can hide; the rest call
  `pipelines.cli.main` in this process (the same code path, much cheaper).
* A non-finite loss stops training naming the epoch, step and batch, keeps the last good
  checkpoint (and --resume continues from it); `train.grad_clip` bounds the gradient norm the
  optimiser sees.
* A checkpoint holding a pickled payload is refused by `--resume` without running it.
* No code path unpickles: an AST scan of core/, variants/ and pipelines/ finds no unpickler and no
  torch.load without weights_only=True.
* Servers: the local Ray cluster the pipelines start has no dashboard and listens on 127.0.0.1
  only (every socket of every process it starts; VAEZOO_RAY_BIND=node opts out); the
  `mlflow server` / `mlflow ui` / `ray start` commands the README and scripts show bind to 127.0.0.1.

Covered elsewhere: tests/test_serialization.py (a malicious pickle checkpoint and wrong-shape
weights at the function level), tests/test_mlflow.py::test_killed_and_resumed_run_stays_one_run
(SIGKILL of `vaezoo train`, --resume in the same MLflow run), tests/test_cli.py (interrupted
run resumes exactly), tests/test_encode.py (SIGKILL of encode, exactly-once rerun).
"""
# test.sh: own process (it starts Ray: Ray Train V2 cannot start twice in one process)
from __future__ import annotations

import gzip
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_images, write_idx_folder

from core.config import RunConfig
from core.data import write_idx
from core.serialization import WEIGHTS_FILE, save_model
from core.serialization import read_checkpoint as load_checkpoint
from core.training import epoch_permutation, train
from pipelines.cli import main

REPO = Path(__file__).resolve().parents[1]
IN_PROCESS = ["--num-workers", "0"]
TINY = ["--latent-dim", "2", "--batch-size", "64", "--set", "model.hidden_dims=[16]",
        "--set", "train.eval_nll_samples=2", "--set", "train.eval_nll_examples=16", "--final-nll-samples", "5",
        "--no-progress", "--no-register", *IN_PROCESS]
N_TRAIN, N_TEST = 256, 64  # 4 steps of 64 per epoch


def _error_line(stderr: str, command: str) -> str:
    """The one line a failed command prints: no traceback, no library chatter beside it."""
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"vaezoo {command}: error: "), lines[0]
    return lines[0]


# -- shared inputs ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An empty SQLite tracking store, created once (MLflow's table creation takes seconds) and
    copied wherever a test or a command needs its own."""
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("mlflow") / "empty.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch, empty_store):
    """Relative paths and the tracking store land in this test's folder, never in the repository."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("VAEZOO_DEBUG", raising=False)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Data folders (good, and broken in one way each) and saved models, made once for the module."""
    root = tmp_path_factory.mktemp("inputs")
    good = write_idx_folder(root / "good", make_images(N_TRAIN, 0), make_images(N_TEST, 1))
    paths = {"good": good}

    def broken(name: str, images: bytes) -> Path:
        folder = root / name
        shutil.copytree(good, folder)
        (folder / "train-images-idx3-ubyte.gz").write_bytes(images)
        return folder

    raw = gzip.decompress((good / "train-images-idx3-ubyte.gz").read_bytes())
    paths["truncated"] = broken("truncated", gzip.compress(raw[:1000]))
    paths["wrong-magic"] = broken("wrong-magic", gzip.compress(b"\x00\x00\x99\x03" + raw[4:]))
    paths["unreadable"] = broken("unreadable", gzip.compress(raw))
    (paths["unreadable"] / "train-images-idx3-ubyte.gz").chmod(0)
    floats = make_images(N_TRAIN, 0)[0].astype(np.float32) / 255
    floats[3, 2, 2], floats[7, 0, 0] = np.nan, np.inf
    nan_folder = broken("nan", b"")
    (nan_folder / "train-images-idx3-ubyte.gz").unlink()
    write_idx(nan_folder / "train-images-idx3-ubyte.gz", floats)
    paths["nan"] = nan_folder
    paths["big"] = write_idx_folder(root / "big", make_images(N_TRAIN, 0, size=12), make_images(N_TEST, 1, size=12))

    # Saved models: a vae on 8x8, a cvae (other keys), a vae on 12x12 (other shapes).
    data = _prepared(good)
    for name, variant, folder in (("vae", "vae", good), ("cvae", "cvae", good), ("vae-12", "vae", paths["big"])):
        config = _config(variant, folder)
        trained = train(config, report=lambda m, c: None, data=data if folder == good else _prepared(folder))
        paths[f"model-{name}"] = save_model(trained, config, root / f"model-{name}")
    # A vae folder whose weights are the cvae's, and one whose weights are the 12x12 vae's.
    for name, donor in (("model-other-variant", "model-cvae"), ("model-other-shape", "model-vae-12")):
        shutil.copytree(paths["model-vae"], root / name)
        shutil.copy(paths[donor] / WEIGHTS_FILE, root / name / WEIGHTS_FILE)
        paths[name] = root / name
    return paths


def _config(variant: str, folder: Path) -> RunConfig:
    options = {"condition": "label"} if variant == "cvae" else {}
    return RunConfig.from_dict({
        "variant_name": variant, "variant": options, "model": {"latent_dim": 2, "hidden_dims": [16]},
        "data": {"dataset": str(folder)},
        "train": {"epochs": 1, "batch_size": 64, "eval_nll_samples": 2, "eval_nll_examples": 16, "progress": False}})


def _prepared(folder: Path):
    from core.datasets import prepare_data

    return prepare_data(str(folder), None, "dynamic")


def _malicious_run(root: Path, marker: Path) -> Path:
    """A run folder whose checkpoint runs `touch marker` when unpickled without weights_only."""
    run = root / "malicious-run"
    (run / "checkpoints").mkdir(parents=True)

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"epoch": 1, "model": Payload(), "optimizers": {}, "schedulers": {}, "config": {}},
               run / "checkpoints" / "last.pt")
    return run


# -- bad input through the installed console script ------------------------------------------------------

def _unprivileged() -> list[str] | None:
    """A command prefix under which file permissions bind (root reads anything unless it drops
    these capabilities); None where that cannot be had (root without setpriv)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    return None if setpriv is None else [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all"]


# name: (argv after `vaezoo`, what the line must contain, the output folder that must not appear)
def _subprocess_cases(inputs, root: Path) -> dict[str, tuple[list[str], list[str], Path | None]]:
    out = root / "out"
    marker = root / "pwned"
    evil = _malicious_run(root, marker)
    return {
        "missing-data": (["train", "--dataset", str(root / "no" / "such"), "--output", str(out / "a"), *TINY],
                         [str(root / "no" / "such"), "does not exist"], out / "a"),
        "unreadable-data": (["train", "--dataset", str(inputs["unreadable"]), "--output", str(out / "b"), *TINY],
                            [str(inputs["unreadable"] / "train-images-idx3-ubyte.gz"), "Permission denied"], out / "b"),
        "unknown-variant": (["train", "--variant", "vqvae", "--dataset", str(inputs["good"]), "--output",
                             str(out / "d"), *TINY], ["variant_name", "'vqvae'", "known: aae, cvae, dcign, dvae, iwae, m2, vae"],
                            out / "d"),
        "wrong-shape-images": (["evaluate", "--model", str(inputs["model-vae"]), "--dataset", str(inputs["big"]),
                                "--nll-samples", "2", "--no-progress"],
                               [str(inputs["big"]), "(1, 12, 12)", "the model expects (1, 8, 8)"], None),
        "unresolved-uri": (["evaluate", "--model", "models:/no-such-model@champion", "--no-progress"],
                           ["model URI models:/no-such-model@champion does not resolve", "no-such-model"], None),
        "other-variant-weights": (["evaluate", "--model", str(inputs["model-other-variant"]), "--nll-samples", "2",
                                   "--no-progress"],
                                  [str(inputs["model-other-variant"] / WEIGHTS_FILE), "do not fit this vae model"],
                                  None),
        "malicious-checkpoint": (["train", "--resume", "--output", str(evil), *TINY],
                                 [str(evil / "checkpoints" / "last.pt"), "refused", "weights"], None),
    }


@pytest.fixture(scope="module")
def cli_results(inputs, empty_store, tmp_path_factory):
    """Runs every subprocess case at once (each with its own working folder and SQLite store)."""
    root = tmp_path_factory.mktemp("cli")
    cases = _subprocess_cases(inputs, root)
    script = Path(sys.executable).parent / "vaezoo"
    assert script.is_file(), f"console script missing at {script}"
    prefix = _unprivileged()

    def run(name: str) -> subprocess.CompletedProcess | None:
        argv, _, _ = cases[name]
        if name == "unreadable-data" and prefix is None:
            return None
        cwd = root / "cwd" / name
        cwd.mkdir(parents=True)
        shutil.copy(empty_store, cwd / "mlflow.db")
        env = {k: v for k, v in os.environ.items() if k not in ("VAEZOO_DEBUG", "RAY_ADDRESS")}
        env.update(OMP_NUM_THREADS="1", MLFLOW_TRACKING_URI=f"sqlite:///{cwd / 'mlflow.db'}")
        cmd = [*(prefix if name == "unreadable-data" else []), str(script), *argv]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(zip(cases, pool.map(run, cases)))
    return cases, results, root


@pytest.mark.parametrize("case", ["missing-data", "unreadable-data", "unknown-variant",
                                  "wrong-shape-images", "unresolved-uri", "other-variant-weights",
                                  "malicious-checkpoint"])
def test_bad_input_is_one_line_from_the_console_script(cli_results, case):
    cases, results, root = cli_results
    argv, names, output = cases[case]
    result = results[case]
    if result is None:
        pytest.skip("running as root without setpriv: cannot make a file unreadable")
    assert result.returncode == 1, (result.returncode, result.stderr[-3000:])
    line = _error_line(result.stderr, argv[0])
    for text in names:
        assert text in line, line
    assert result.stdout == ""
    if output is not None:
        assert not output.exists(), sorted(p.name for p in output.iterdir())
    if case == "malicious-checkpoint":
        assert not (root / "pwned").exists()  # the payload never ran
        run = root / "malicious-run"
        assert not any((run / name).exists() for name in ("config.json", WEIGHTS_FILE, "run_config.yaml"))


def test_the_malicious_payload_is_live(tmp_path):
    """Negative control for the refused checkpoint: the same file, loaded unsafely, runs its payload."""
    marker = tmp_path / "pwned"
    run = _malicious_run(tmp_path, marker)
    torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert marker.exists()


UNPICKLERS = {("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler"), ("cloudpickle", "load"),
              ("cloudpickle", "loads"), ("dill", "load"), ("dill", "loads"), ("joblib", "load"), ("marshal", "loads"),
              ("shelve", "open"), ("yaml", "load"), ("yaml", "unsafe_load"), ("yaml", "full_load"),
              ("pyfunc", "load_model"), ("pytorch", "load_model"), ("sklearn", "load_model")}


def _unsafe_loads(source: str, filename: str) -> list[str]:
    """Calls in `source` that may unpickle: the known unpicklers, torch.load without
    weights_only=True, np.load with allow_pickle=True (MLflow's pyfunc/pytorch loaders unpickle
    cloudpickled models)."""
    import ast

    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value
        owner_name = owner.id if isinstance(owner, ast.Name) else owner.attr if isinstance(owner, ast.Attribute) else ""
        call = (owner_name, node.func.attr)
        keywords = {k.arg: k.value for k in node.keywords}

        def safe(name: str, want: bool) -> bool:
            return isinstance(keywords.get(name), ast.Constant) and keywords[name].value is want

        if call in UNPICKLERS:
            found.append(f"{filename}:{node.lineno} {owner_name}.{node.func.attr}")
        elif call == ("torch", "load") and not safe("weights_only", True):
            found.append(f"{filename}:{node.lineno} torch.load without weights_only=True")
        elif call in (("np", "load"), ("numpy", "load")) and "allow_pickle" in keywords \
                and not safe("allow_pickle", False):
            found.append(f"{filename}:{node.lineno} np.load with allow_pickle")
    return found


def test_no_code_path_unpickles_what_a_user_points_at():
    """Models are safetensors, checkpoints torch.load(weights_only=True): no unpickler anywhere."""
    found = []
    for package in ("core", "variants", "pipelines"):
        for path in sorted((REPO / package).rglob("*.py")):
            found += _unsafe_loads(path.read_text(), str(path.relative_to(REPO)))
    assert found == []
    # The scan sees what it looks for (negative control).
    bad = ("import torch, pickle, numpy as np, mlflow\ntorch.load(p)\ntorch.load(p, weights_only=False)\n"
           "pickle.loads(b)\nnp.load(p, allow_pickle=True)\nmlflow.pyfunc.load_model(u)\n"
           "torch.load(p, weights_only=True)\nnp.load(p)\n")
    assert len(_unsafe_loads(bad, "bad.py")) == 5


# -- bad input in this process (same code path: pipelines.cli.main) ---------------------------------------

def _train(dataset: Path, output: Path, *extra: str) -> list[str]:
    return ["train", "--dataset", str(dataset), "--output", str(output), "--epochs", "1", *TINY, *extra]


@pytest.mark.parametrize("folder,names", [
    ("truncated", ["train-images-idx3-ubyte.gz", "IDX file truncated", "need 16384 data bytes, found 984"]),
    ("wrong-magic", ["train-images-idx3-ubyte.gz", "not an IDX file", "bad magic number 00009903"]),
    # Float images are refused whole (datasets are uint8 end to end), NaN and Inf among them.
    ("nan", ["train-images-idx3-ubyte.gz", "must hold uint8 pixels", "found float32"]),
])
def test_bad_idx_files_are_one_line_and_leave_no_run_folder(inputs, tmp_path, capsys, folder, names):
    out = tmp_path / "run"
    assert main(_train(inputs[folder], out)) == 1
    line = _error_line(capsys.readouterr().err, "train")
    assert str(inputs[folder]) in line and all(n in line for n in names), line
    assert not out.exists()


def test_unsearchable_data_folder_is_one_line(inputs, tmp_path):
    """A folder that cannot be listed is said to be unreadable, not to lack the files."""
    folder = tmp_path / "locked"
    shutil.copytree(inputs["good"], folder)
    prefix = _unprivileged()
    if prefix is None:
        pytest.skip("running as root without setpriv: cannot make a folder unreadable")
    folder.chmod(0)
    try:
        env = dict(os.environ, OMP_NUM_THREADS="1")
        result = subprocess.run([*prefix, sys.executable, "-c",
                                 "import sys; from core.data import DataError; from core.datasets import load_split\n"
                                 "try: load_split(sys.argv[1], 'train')\n"
                                 "except DataError as e: print(e)", str(folder)],
                                capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    finally:
        folder.chmod(0o755)
    assert result.stdout.strip() == f"{folder}: cannot read the data folder (Permission denied)", result


@pytest.mark.parametrize("setting,field", [
    ("train.grad_clip=-1", "train.grad_clip"),
    ("train.lr=fast", "train.lr"),
    ("model.likelihood=poisson", "model.likelihood"),
    ("variant.beta=-2", "variant.beta"),
])
def test_invalid_config_value_names_the_field(inputs, tmp_path, capsys, setting, field):
    out = tmp_path / "run"
    assert main(_train(inputs["good"], out, "--set", setting)) == 1
    assert field in _error_line(capsys.readouterr().err, "train")
    assert not out.exists()


def test_output_folder_in_use_is_refused_and_left_as_it_was(inputs, tmp_path, capsys):
    out = tmp_path / "used"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(_train(inputs["good"], out)) == 1
    line = _error_line(capsys.readouterr().err, "train")
    assert str(out) in line and "not empty" in line
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"


def test_empty_output_folder_is_kept_usable_after_a_failure(inputs, tmp_path, capsys):
    """A failed start removes only what it wrote; the same command then runs in the same folder."""
    out = tmp_path / "run"
    assert main(_train(inputs["truncated"], out)) == 1
    assert "truncated" in _error_line(capsys.readouterr().err, "train")
    assert not out.exists()
    assert main(_train(inputs["good"], out)) == 0, capsys.readouterr().err
    assert (out / "config.json").is_file() and (out / WEIGHTS_FILE).is_file()


@pytest.mark.parametrize("command", ["evaluate", "sample"])
def test_weights_of_another_shape_are_one_line(inputs, tmp_path, capsys, command):
    model = inputs["model-other-shape"]
    extra = ["--nll-samples", "2", "--no-progress"] if command == "evaluate" else ["--output", str(tmp_path / "x.png")]
    assert main([command, "--model", str(model), *extra]) == 1
    line = _error_line(capsys.readouterr().err, command)
    assert str(model / WEIGHTS_FILE) in line and "has shape" in line and "the model needs" in line
    assert not (tmp_path / "x.png").exists()


@pytest.fixture(scope="module")
def finished_run(inputs, tmp_path_factory) -> Path:
    """A run folder as `vaezoo train` leaves it (trained in process, without MLflow)."""
    from pipelines.local import run_local

    out = tmp_path_factory.mktemp("finished") / "run"
    run_local(_config("vae", inputs["good"]), out, final_nll_samples=2)
    return out


@pytest.mark.parametrize("damage", ["truncated", "garbage", "not-a-checkpoint"])
def test_damaged_checkpoint_on_resume_is_one_line(finished_run, tmp_path, capsys, damage):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    (out / "config.json").unlink()  # as if killed after the last checkpoint
    last = out / "checkpoints" / "last.pt"
    blob = last.read_bytes()
    if damage == "truncated":
        last.write_bytes(blob[: len(blob) // 2])
    elif damage == "garbage":
        last.write_bytes(b"hello, world")
    else:
        torch.save({"weights": torch.zeros(3)}, last)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(["train", "--resume", "--output", str(out), *TINY]) == 1
    line = _error_line(capsys.readouterr().err, "train")
    assert str(last) in line and ("not a readable checkpoint" in line or "not a vae-zoo training checkpoint" in line)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # read before an MLflow run is opened: nothing touched, no mlflow_run.json


@pytest.mark.parametrize("damage", ["pickled-code", "garbage"])
def test_ray_resume_reads_checkpoints_weights_only_with_one_line(finished_run, tmp_path, damage):
    """The Ray backend reads a checkpoint the user points at in two places: the run folder's
    checkpoints/last.pt (run_ray --resume, before Ray starts) and the state.pt inside Ray's own
    checkpoints (the workers on a restart or resume, the driver after fit). Both go through
    core.serialization.read_checkpoint: pickled code is refused unrun, damage is one line naming
    the file; a good checkpoint still loads (control)."""
    import ray.train

    from core.serialization import ModelLoadError
    from pipelines.ray_train import STATE_FILE, _load_ray_checkpoint, run_ray

    marker = tmp_path / "pwned"
    bad = _malicious_run(tmp_path, marker) / "checkpoints" / "last.pt"
    if damage == "garbage":
        bad.write_bytes(b"hello, world")
    expected = "refused" if damage == "pickled-code" else "not a readable checkpoint"

    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    shutil.copy(bad, out / "checkpoints" / "last.pt")
    with pytest.raises(ModelLoadError) as err:
        run_ray(_config("vae", Path("unused")), out, resume=True)
    assert str(out / "checkpoints" / "last.pt") in str(err.value) and expected in str(err.value), err.value
    assert len(str(err.value).splitlines()) == 1 and not marker.exists()
    assert not (out / "ray_run.json").exists()  # refused before anything was written or started

    folder = tmp_path / "epoch_0001"
    folder.mkdir()
    shutil.copy(bad, folder / STATE_FILE)
    with pytest.raises(ModelLoadError) as err:
        _load_ray_checkpoint(ray.train.Checkpoint.from_directory(str(folder)))
    assert str(folder / STATE_FILE) in str(err.value) and expected in str(err.value), err.value
    assert not marker.exists()

    shutil.copy(finished_run / "checkpoints" / "last.pt", folder / STATE_FILE)  # control: a good one loads
    (folder / "metrics.jsonl").write_text('{"epoch": 1}\n')
    state = _load_ray_checkpoint(ray.train.Checkpoint.from_directory(str(folder)))
    assert state["epoch"] == 1 and state["_history"] == [{"epoch": 1}]


def test_resume_when_the_data_changed_shape_is_one_line(inputs, tmp_path, capsys):
    """The checkpoint's model was 8x8; its dataset folder now holds 12x12 images."""
    from pipelines.local import run_local

    data = tmp_path / "data"
    shutil.copytree(inputs["good"], data)
    out = tmp_path / "run"
    run_local(_config("vae", data), out, final_nll_samples=2)
    (out / "config.json").unlink()  # as if killed after the last checkpoint
    shutil.rmtree(data)
    shutil.copytree(inputs["big"], data)
    before = (out / "run_config.yaml").read_bytes()
    assert main(["train", "--resume", "--output", str(out), *TINY]) == 1
    line = _error_line(capsys.readouterr().err, "train")
    assert str(out / "checkpoints" / "last.pt") in line and "weights do not fit this vae model" in line, line
    # The first layer (in model order) that differs: the encoder's input, 64 pixels against 144.
    assert "vae.encoder.body.0.weight has shape (16, 64), the model needs (16, 144)" in line, line
    assert not (out / "config.json").exists() and (out / "run_config.yaml").read_bytes() == before
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 1


def test_nan_in_parquet_float_arrays_is_refused_by_encode_planning(inputs, tmp_path):
    """encode takes integer pixels only: float arrays (with NaN) are refused before any work."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.encode import EncodeError, plan_source

    values = np.full((4, 64), 0.5, np.float32)
    values[2, 5] = np.nan
    path = tmp_path / "floats.parquet"
    pq.write_table(pa.table({"image": pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), 64)}), path)
    with pytest.raises(EncodeError, match=rf"^{re.escape(str(path))}: column 'image' has type .*float.*uint8 array"):
        plan_source([str(path)], (1, 8, 8))


# -- non-finite loss and gradient clipping -------------------------------------------------------------

def _poison_vae_loss(monkeypatch, poison, at_call: int = 4 + 3):
    """The vae's loss passes through `poison(self, loss)` at its `at_call`-th step (default epoch
    2, step 3 of 4); returns the real losses method, to put back."""
    from variants.vae import VanillaVAE

    real_losses = VanillaVAE.losses
    calls = {"n": 0}

    def poisoned(self, batch, groups):
        outputs = real_losses(self, batch, groups)
        calls["n"] += 1
        if calls["n"] == at_call:
            outputs["model"].loss = poison(self, outputs["model"].loss)
        return outputs

    monkeypatch.setattr(VanillaVAE, "losses", poisoned)
    return real_losses


def test_non_finite_loss_names_epoch_step_and_batch_and_keeps_the_last_checkpoint(inputs, tmp_path, capsys,
                                                                                 monkeypatch):
    """The loss turns NaN at epoch 2, step 3 (of 4): exit 1 with one line naming them and the
    batch's examples, epoch 1's checkpoint kept, the MLflow run FAILED; --resume goes on from it."""
    from variants.vae import VanillaVAE

    real_losses = _poison_vae_loss(monkeypatch, lambda self, loss: loss * float("nan"))
    out = tmp_path / "run"
    assert main(_train(inputs["good"], out, "--set", "train.epochs=3", "--seed", "7")) == 1
    line = _error_line(capsys.readouterr().err, "train")
    assert "non-finite loss (nan) at epoch 2, step 3/4" in line, line
    assert "every weight is finite (this step's forward pass made it)" in line, line
    batch = epoch_permutation(N_TRAIN, 7, 2)[2 * 64:3 * 64][:8].tolist()
    assert f"batch of examples {batch}" in line, line
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 1
    assert [json.loads(ln)["epoch"] for ln in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    assert not (out / "config.json").exists() and not (out / WEIGHTS_FILE).exists()

    from mlflow.tracking import MlflowClient

    run_id = json.loads((out / "mlflow_run.json").read_text())["run_id"]
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    assert client.get_run(run_id).info.status == "FAILED"

    monkeypatch.setattr(VanillaVAE, "losses", real_losses)
    assert main(["train", "--resume", "--output", str(out), *TINY]) == 0, capsys.readouterr().err
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 3
    assert client.get_run(run_id).info.status == "FINISHED"


def test_a_nan_gradient_under_a_finite_loss_is_named_as_such(inputs, tmp_path, capsys, monkeypatch):
    """Epoch 2, step 3's loss is finite but its gradient NaN (x log x at x = 0, as M2's label
    entropy had): the NaN surfaces in step 4's loss, and the error says the weights were already
    non-finite rather than blaming step 4's batch."""
    def finite_loss_nan_gradient(self, loss):
        zero = (next(self.parameters()).sum() * 0 - 1000).exp()  # exactly 0; d/dx x log x = -inf there
        return loss + torch.special.xlogy(zero, zero)

    _poison_vae_loss(monkeypatch, finite_loss_nan_gradient)
    out = tmp_path / "run"
    assert main(_train(inputs["good"], out, "--set", "train.epochs=3", "--seed", "7")) == 1
    line = _error_line(capsys.readouterr().err, "train")
    assert "non-finite loss (nan) at epoch 2, step 4/4" in line, line
    assert "weight tensors were already non-finite" in line and "an earlier step's gradient" in line, line
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 1


def _step_grad_norms(run) -> list[float]:
    """The global gradient norm each optimiser step sees (after any clipping), recorded by a hook."""
    norms: list[float] = []

    def hook(optimizer, args, kwargs):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    from torch.optim.optimizer import register_optimizer_step_pre_hook

    handle = register_optimizer_step_pre_hook(hook)
    try:
        run()
    finally:
        handle.remove()
    return norms


def test_grad_clip_bounds_the_gradient_norm_each_step(inputs, tmp_path, capsys):
    clip = 0.1
    out = tmp_path / "clipped"
    norms = _step_grad_norms(lambda: main(_train(inputs["good"], out, "--set", f"train.grad_clip={clip}")))
    assert (out / "config.json").is_file(), capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["config"]["train"]["grad_clip"] == clip
    assert len(norms) == 4 and max(norms) <= clip * (1 + 1e-4), norms
    # Control: unclipped, the same run's gradients are far above the bound (summed nats per image).
    unclipped = _step_grad_norms(lambda: main(_train(inputs["good"], tmp_path / "free")))
    assert min(unclipped) > 10 * clip, unclipped


# -- servers the project starts ----------------------------------------------------------------------------

@pytest.mark.parametrize("module", ["pipelines.ray_train", "pipelines.encode"])
def test_local_ray_cluster_is_started_without_a_dashboard(monkeypatch, module):
    """What `_connect` asks of ray.init when it starts a cluster: a fresh local one, no dashboard."""
    import importlib

    import ray

    mod = importlib.import_module(module)
    seen = {}
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: seen.update(kwargs))
    args = (None, 1, False) if module == "pipelines.ray_train" else (None, 1)
    assert mod._connect(*args) is True
    assert seen["address"] == "local"  # never joins whatever cluster `ray start` left on the host
    assert seen["include_dashboard"] is False  # no HTTP dashboard / job API to submit code to


LISTENERS = r"""
import importlib, ipaddress, json, os, sys
import ray
module, args = sys.argv[1], json.loads(sys.argv[2])
assert importlib.import_module(module)._connect(*args) is True  # as `vaezoo train` / `vaezoo encode` do
ray.get(ray.remote(lambda: 1).remote())  # a worker process too
mine, todo = set(), [os.getpid()]
while todo:
    pid = todo.pop()
    mine.add(pid)
    try:
        todo += [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        pass
# Listening TCP sockets from the kernel's own tables (no ss/iproute2 needed): inode -> address.
listening = {}
for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
    for row in open(table).read().splitlines()[1:]:
        f = row.split()
        if f[3] != "0A":  # TCP_LISTEN
            continue
        hex_ip, hex_port = f[1].split(":")
        raw = bytes.fromhex(hex_ip)
        if v6:  # four host-order (little-endian) 32-bit words
            ip = ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
            ip = ip.ipv4_mapped or ip
        else:
            ip = ipaddress.IPv4Address(raw[::-1])
        listening[f[9]] = f"[{ip}]:{int(hex_port, 16)}"
found = []
for pid in mine:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
        name = open(f"/proc/{pid}/comm").read().strip()
    except OSError:  # exited meanwhile
        continue
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        inode = target[len("socket:["):-1] if target.startswith("socket:[") else None
        if inode in listening:
            found.append([listening[inode], [name]])
report = {"gcs": ray.get_runtime_context().gcs_address, "nodes": [n["NodeManagerAddress"] for n in ray.nodes()],
          "listening": found}
ray.shutdown()
print("LISTENERS " + json.dumps(report))
"""


def _local_cluster_sockets(module: str, args: list, bind: str | None) -> dict:
    """Start a local cluster through `module`'s `_connect` in a fresh process (no RAY_ADDRESS) and
    list the TCP sockets that process and its children (GCS, raylet, agents, workers) listen on."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "VAEZOO_RAY_BIND")}
    env.update({"PYTHONPATH": str(REPO)} | ({"VAEZOO_RAY_BIND": bind} if bind else {}))
    proc = subprocess.run([sys.executable, "-c", LISTENERS, module, json.dumps(args)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("LISTENERS "))
    report = json.loads(line.split(" ", 1)[1])
    names = {n for _, procs in report["listening"] for n in procs}
    assert {"gcs_server", "raylet"} <= names, report  # the listing sees Ray's own servers
    return report


def _host(address: str) -> str:
    host = address.rsplit(":", 1)[0].strip("[]")
    return host.removeprefix("::ffff:")  # an IPv4 address on an IPv6 socket


@pytest.mark.slow
@pytest.mark.parametrize("module,args", [("pipelines.ray_train", [None, 1, False]), ("pipelines.encode", [None, 1])])
def test_local_ray_cluster_listens_on_loopback_only(module, args):
    """The cluster `vaezoo train` / `vaezoo encode` start when given no address: its GCS, node and
    every socket of every process it runs listen on 127.0.0.1, none on the node's IP or on all
    interfaces (pipelines/ray_connect.py)."""
    report = _local_cluster_sockets(module, args, bind=None)
    assert _host(report["gcs"]) == "127.0.0.1", report
    assert report["nodes"] == ["127.0.0.1"], report
    wide = [entry for entry in report["listening"] if _host(entry[0]) != "127.0.0.1"]
    assert not wide, wide


@pytest.mark.slow
def test_local_ray_cluster_on_the_node_ip_when_asked():
    """VAEZOO_RAY_BIND=node gives Ray's own default (the node's IP, and all interfaces), which is
    also the control showing that the listing above sees a cluster that is not loopback-only."""
    report = _local_cluster_sockets("pipelines.ray_train", [None, 1, False], bind="node")
    assert _host(report["gcs"]) != "127.0.0.1", report
    assert [_host(e[0]) for e in report["listening"] if "gcs_server" in e[1]] != ["127.0.0.1"], report


def test_bad_ray_bind_setting_is_one_line(inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VAEZOO_RAY_BIND", "everywhere")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(_train(inputs["good"], tmp_path / "run", "--num-workers", "1")) == 1
    line = _error_line(capsys.readouterr().err, "train")
    assert "VAEZOO_RAY_BIND" in line and "'everywhere'" in line, line
    assert not (tmp_path / "run").exists()


def _documented_commands() -> list[tuple[str, list[str]]]:
    """Every `mlflow server`, `mlflow ui` and `ray start` command the README, docs/ and the scripts show
    (code blocks, inline code, echoed hints), as (file, argv)."""
    found = []
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "scripts").glob("*.sh"))]:
        text = path.read_text().replace("\\\n", " ")  # join continued lines
        for match in re.finditer(r"\b(?:mlflow (?:server|ui)|ray start)\b[^\n\"'`;#&)]*", text):
            found.append((path.name, shlex.split(match.group(0))))
    return found


def _option(argv: list[str], *names: str) -> str | None:
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def test_documented_server_commands_bind_to_loopback():
    """The host each documented server command binds to, as the tool itself resolves a missing flag."""
    import mlflow.cli
    from ray.scripts.scripts import start

    def default(command, param: str):
        return next(p.default for p in command.params if p.name == param)

    commands = _documented_commands()
    kinds = sorted({" ".join(argv[:2]) for _, argv in commands})
    assert kinds == ["mlflow server", "mlflow ui", "ray start"], kinds
    for where, argv in commands:
        if argv[0] == "mlflow":
            command = mlflow.cli.cli.get_command(None, argv[1])  # `ui` is an alias of `server`
            host = _option(argv, "--host", "-h") or default(command, "host")
        else:
            host = _option(argv, "--dashboard-host") or default(start, "dashboard_host")
        assert host in ("127.0.0.1", "localhost"), (where, argv, host)
    assert "0.0.0.0" not in (REPO / "README.md").read_text()
