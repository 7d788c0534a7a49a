"""The `vaezoo` command line, in process through pipelines.cli.main and once through the installed
console script: variants, train (run folder, refusal to overwrite, resume), evaluate, sample."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import pipelines.local
from conftest import N_TEST, N_TRAIN, make_images, write_idx_folder
from core.serialization import read_checkpoint as load_checkpoint
from pipelines.cli import main

ALL_VARIANTS = ["vae", "iwae", "cvae", "dvae", "m2", "dcign", "aae"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# Every train call passes --num-workers 0: in-process training, no Ray cluster.
IN_PROCESS = ["--num-workers", "0"]


def _train_args(dataset: Path, output: Path, epochs: int = 2) -> list[str]:
    return ["train", *IN_PROCESS, "--dataset", str(dataset), "--epochs", str(epochs), "--latent-dim", "2", "--batch-size", "32",
            "--set", "train.lr=0.01", "--set", "data.test_limit=64", "--set", "model.hidden_dims=[16]",
            "--set", "train.eval_nll_samples=5", "--set", "train.eval_nll_examples=16",
            "--final-nll-samples", "10", "--no-progress", "--output", str(output)]


def _json_from(stdout: str) -> dict:
    """The JSON document a command prints last (train prints one line per epoch before it)."""
    start = stdout.index("\n{") + 1 if not stdout.startswith("{") else 0
    return json.loads(stdout[start:])


def _epochs(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _one_error_line(stderr: str, command: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert lines[0].startswith(f"vaezoo {command}: error: ")
    return lines[0]


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    """Nothing a command writes by relative path lands in the repository."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_idx_folder(tmp_path_factory.mktemp("data") / "synthetic", make_images(N_TRAIN, 0),
                            make_images(N_TEST, 1))


@pytest.fixture(scope="module")
def run(dataset, tmp_path_factory) -> tuple[Path, str]:
    """One training run shared by the tests that read it: (run folder, stdout)."""
    output = tmp_path_factory.mktemp("runs") / "run"
    capture = _Capture()
    cwd = os.getcwd()
    os.chdir(output.parent)
    try:
        with capture:
            code = main(_train_args(dataset, output))
    finally:
        os.chdir(cwd)
    assert code == 0, capture.err
    return output, capture.out


class _Capture:
    """capsys is function-scoped; the module-scoped run captures stdout/stderr by hand."""

    def __enter__(self):
        import io

        self._saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = io.StringIO(), io.StringIO()
        return self

    def __exit__(self, *exc):
        self.out, self.err = sys.stdout.getvalue(), sys.stderr.getvalue()
        sys.stdout, sys.stderr = self._saved


# -- variants -----------------------------------------------------------------------------------

def test_variants_lists_every_builtin(capsys):
    assert main(["variants"]) == 0
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.splitlines() if line and not line.startswith(" ")]
    assert sorted(listed) == sorted(ALL_VARIANTS)
    assert "Burda" in out and "Kingma" in out and "Sohn" in out and "Im, Ahn" in out and "Kulkarni" in out
    assert "Makhzani" in out


# -- train ----------------------------------------------------------------------------------------

def test_train_writes_a_complete_run_folder(run):
    output, stdout = run
    for name in ("config.json", "model.safetensors", "checkpoints/last.pt", "metrics.jsonl", "results.json",
                 "run_config.yaml"):
        assert (output / name).is_file(), name
    assert _epochs(output) == [1, 2]
    checkpoint = load_checkpoint(output / "checkpoints" / "last.pt")
    assert checkpoint["epoch"] == 2
    meta = json.loads((output / "config.json").read_text())
    assert meta["config"]["model"]["hidden_dims"] == [16] and meta["config"]["model"]["latent_dim"] == 2
    assert meta["config"]["data"]["test_limit"] == 64 and meta["config"]["train"]["epochs"] == 2
    result = _json_from(stdout)
    assert result["output"] == str(output.resolve())
    test = result["test"]
    assert test["nll_samples"] == 10 and test["test_examples"] == 64 and test["binarize"] == "dynamic"
    assert test["elbo"] <= -test["nll"]  # the importance-sampled log-likelihood is above the ELBO
    assert json.loads((output / "results.json").read_text()) == test
    for line in (output / "metrics.jsonl").read_text().splitlines():
        metrics = json.loads(line)
        assert {"train/elbo", "train/bound", "train/kl", "test/elbo", "test/nll"} <= set(metrics)


def test_train_refuses_a_non_empty_output(run, dataset, capsys):
    output, _ = run
    before = (output / "model.safetensors").read_bytes()
    assert main(_train_args(dataset, output)) == 1
    line = _one_error_line(capsys.readouterr().err, "train")
    assert "not empty" in line and str(output) in line
    assert (output / "model.safetensors").read_bytes() == before  # the finished run is untouched
    assert _epochs(output) == [1, 2]


def test_train_with_a_bad_value_names_the_field(dataset, tmp_path, capsys):
    output = tmp_path / "bad"
    assert main(["train", *IN_PROCESS, "--dataset", str(dataset), "--set", "model.latent_dim=-1", "--output", str(output)]) == 1
    line = _one_error_line(capsys.readouterr().err, "train")
    assert "model.latent_dim" in line
    assert not output.exists()


def test_train_with_an_unknown_key_names_it(dataset, tmp_path, capsys):
    assert main(["train", *IN_PROCESS, "--dataset", str(dataset), "--set", "train.epoch=3", "--output", str(tmp_path / "x")]) == 1
    assert "train.epoch" in _one_error_line(capsys.readouterr().err, "train")


def test_train_on_a_missing_dataset_folder_is_one_line(tmp_path, capsys):
    missing = tmp_path / "no" / "such"
    assert main(["train", *IN_PROCESS, "--dataset", str(missing), "--output", str(tmp_path / "out"), "--no-progress"]) == 1
    assert str(missing) in _one_error_line(capsys.readouterr().err, "train")


# -- evaluate and sample ------------------------------------------------------------------------------

def test_evaluate_prints_json_with_the_nll_above_the_elbo(run, capsys):
    output, _ = run
    torch.manual_seed(0)
    assert main(["evaluate", "--model", str(output), "--nll-samples", "10", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["variant"] == "vae" and result["split"] == "test" and result["nll_samples"] == 10
    assert result["binarize"] == "dynamic" and result["model"] == str(output)
    assert result["examples"] == N_TEST  # evaluate reads the whole split unless --limit says otherwise
    assert result["elbo"] <= -result["nll"]  # log p(x) >= ELBO, i.e. nll <= -elbo
    assert result["kl"] >= 0 and 0 <= result["active_units"] <= 2
    assert result["elbo"] == pytest.approx(result["recon"] - result["kl"], abs=1e-6)

    assert main(["evaluate", "--model", str(output), "--nll-samples", "10", "--limit", "40", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["examples"] == 40


def test_evaluate_a_missing_model_is_one_line(tmp_path, capsys):
    assert main(["evaluate", "--model", str(tmp_path / "nothing"), "--no-progress"]) == 1
    assert "no such model folder" in _one_error_line(capsys.readouterr().err, "evaluate")


def test_sample_writes_a_png_grid(run, tmp_path, capsys):
    output, _ = run
    png = tmp_path / "grid" / "x.png"
    assert main(["sample", "--model", str(output), "--num", "8", "--output", str(png)]) == 0
    assert "8 samples" in capsys.readouterr().out
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(png) as image:
        image.load()
        # 8 images of 8x8 in a grid of round(sqrt(8)) = 3 columns and 3 rows, 2-pixel padding
        assert image.format == "PNG" and image.size == (3 * (8 + 2) + 2, 3 * (8 + 2) + 2)
        assert image.convert("L").getpixel((0, 0)) == 255  # white padding
    again = tmp_path / "again.png"
    assert main(["sample", "--model", str(output), "--num", "8", "--output", str(again)]) == 0
    assert again.read_bytes() == png.read_bytes()  # --seed defaults to 0: reproducible


def test_sample_with_no_images_is_refused(run, tmp_path, capsys):
    output, _ = run
    assert main(["sample", "--model", str(output), "--num", "0", "--output", str(tmp_path / "x.png")]) == 1
    assert "--num" in _one_error_line(capsys.readouterr().err, "sample")


# -- resume -----------------------------------------------------------------------------------------

def test_resume_after_an_interruption_gives_every_epoch_once(dataset, tmp_path, monkeypatch, capsys):
    """Interrupt a 3-epoch run the way a kill does at the worst moment: epoch 2's metrics line is
    written but its checkpoint is not (Ctrl-C inside save_checkpoint). --resume must continue from
    epoch 1's checkpoint, drop the stale line and end exactly like an uninterrupted run."""
    interrupted = tmp_path / "interrupted"
    real_save = pipelines.local.save_checkpoint

    def save_then_die(checkpoint, path):
        if checkpoint["epoch"] == 2:
            raise KeyboardInterrupt
        real_save(checkpoint, path)

    monkeypatch.setattr(pipelines.local, "save_checkpoint", save_then_die)
    assert main(_train_args(dataset, interrupted, epochs=3)) == 130
    assert "interrupted" in capsys.readouterr().err
    assert _epochs(interrupted) == [1, 2]
    assert load_checkpoint(interrupted / "checkpoints" / "last.pt")["epoch"] == 1
    assert not (interrupted / "model.safetensors").exists()
    monkeypatch.setattr(pipelines.local, "save_checkpoint", real_save)

    # --resume takes everything from the checkpoint's config: no dataset or epochs needed
    assert main(["train", *IN_PROCESS, "--output", str(interrupted), "--resume", "--no-progress", "--final-nll-samples", "10"]) == 0
    capsys.readouterr()
    assert _epochs(interrupted) == [1, 2, 3]
    assert load_checkpoint(interrupted / "checkpoints" / "last.pt")["epoch"] == 3

    straight = tmp_path / "straight"
    assert main(_train_args(dataset, straight, epochs=3)) == 0
    capsys.readouterr()
    resumed_ckpt = load_checkpoint(interrupted / "checkpoints" / "last.pt")
    straight_ckpt = load_checkpoint(straight / "checkpoints" / "last.pt")
    for key, value in straight_ckpt["model"].items():
        assert torch.equal(resumed_ckpt["model"][key], value), key
    timing = {"train/images_per_sec", "train/epoch_seconds"}
    resumed_lines = [json.loads(line) for line in (interrupted / "metrics.jsonl").read_text().splitlines()]
    straight_lines = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(resumed_lines, straight_lines):
        assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}


def test_resume_without_a_checkpoint_is_one_line(tmp_path, capsys):
    assert main(["train", *IN_PROCESS, "--output", str(tmp_path / "fresh"), "--resume", "--no-progress"]) == 1
    assert "no checkpoint" in _one_error_line(capsys.readouterr().err, "train")


@pytest.fixture(scope="module")
def finished_run(dataset, tmp_path_factory) -> Path:
    """A finished 1-epoch vae run (trained once; each test resumes a copy of it)."""
    root = tmp_path_factory.mktemp("finished")
    cwd = os.getcwd()
    os.chdir(root)  # its ./mlflow.db stays in this folder
    try:
        assert main(_train_args(dataset, root / "run", epochs=1)) == 0
    finally:
        os.chdir(cwd)
    return root / "run"


def _copy_run(run: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(run, tmp_path / "run"))  # its mlflow_run.json names the fixture's store


@pytest.mark.parametrize("extra,field", [
    (["--variant", "iwae"], "--variant iwae conflicts with the run's variant_name='vae'"),
    # The resumed run trains to its checkpoint's train.epochs: more epochs is a new run.
    (["--epochs", "3"], "--epochs 3 conflicts with the run's train.epochs=1"),
    (["--latent-dim", "3"], "--latent-dim 3 conflicts with the run's model.latent_dim=2"),
    (["--seed", "9"], "--seed 9 conflicts with the run's train.seed=0"),
    (["--set", "train.lr=0.5"], "--set train.lr=0.5 conflicts with the run's train.lr=0.01"),
    (["--dataset", "fashion-mnist"], "--dataset fashion-mnist conflicts with the run's data.dataset="),
    (["--config", "CONFIG"], "(train.batch_size: 64) conflicts with the run's train.batch_size=32"),
])
def test_resume_refuses_flags_that_conflict_with_the_run(finished_run, tmp_path, capsys, extra, field):
    """A flag that asks for another config than the checkpoint's is refused, naming it, before the
    run folder or its MLflow run is touched (it used to be silently ignored)."""
    run = _copy_run(finished_run, tmp_path)
    if extra[-1] == "CONFIG":  # the run's own config file, with one value changed
        config = tmp_path / "other.yaml"
        config.write_text((run / "run_config.yaml").read_text().replace("batch_size: 32", "batch_size: 64"))
        extra = ["--config", str(config)]
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    store = Path(json.loads((run / "mlflow_run.json").read_text())["tracking_uri"].removeprefix("sqlite:///"))
    db = store.read_bytes()
    assert main(["train", *IN_PROCESS, "--output", str(run), "--resume", "--no-progress", *extra]) == 1
    line = _one_error_line(capsys.readouterr().err, "train")
    assert line.startswith("vaezoo train: error: --resume: --") and field in line, line
    assert {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert store.read_bytes() == db  # the MLflow run was not reopened


def test_resume_accepts_the_run_s_own_flags(dataset, finished_run, tmp_path, capsys):
    """Control: the original command line again, its run_config.yaml, --no-progress and flags that
    are not config all agree with the checkpoint, and the resume finishes."""
    run = _copy_run(finished_run, tmp_path)
    original = [a for a in _train_args(dataset, run, epochs=1) if a != "train"]
    assert main(["train", *original, "--resume", "--final-nll-samples", "5"]) == 0, capsys.readouterr().err
    assert main(["train", *IN_PROCESS, "--output", str(run), "--resume", "--no-progress",
                 "--config", str(run / "run_config.yaml"), "--variant", "vae"]) == 0, capsys.readouterr().err
    assert _epochs(run) == [1]


# -- the installed console script ---------------------------------------------------------------------

def _run(command: list[str], *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run a vaezoo entry point as a user would, on one thread and without VAEZOO_DEBUG."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("VAEZOO_DEBUG", None)
    return subprocess.run([*command, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def _vaezoo(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / "vaezoo"
    assert script.is_file(), f"console script missing at {script}"
    return _run([str(script)], *args, cwd=cwd)


def test_console_script_runs_and_exits_with_the_right_codes(dataset, tmp_path):
    ok = _vaezoo("variants", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    for name in ALL_VARIANTS:
        assert any(line.startswith(name + " ") for line in ok.stdout.splitlines()), name

    bad = _vaezoo("train", *IN_PROCESS, "--dataset", str(dataset), "--set", "model.latent_dim=-1",
                  "--output", str(tmp_path / "o"), cwd=tmp_path)
    assert bad.returncode == 1
    assert "model.latent_dim" in _one_error_line(bad.stderr, "train")
    assert bad.stdout == ""


def test_python_m_pipelines_encode_is_vaezoo_encode(tmp_path):
    """`python -m pipelines.encode` (pipelines/encode/__main__.py) takes the same arguments and
    exits with the same codes and messages as `vaezoo encode`; a missing model folder is refused
    with one line and leaves no output folder."""
    def module(*args: str) -> subprocess.CompletedProcess:
        return _run([sys.executable, "-m", "pipelines.encode"], *args, cwd=tmp_path)

    helps = module("--help"), _vaezoo("encode", "--help", cwd=tmp_path)
    assert [h.returncode for h in helps] == [0, 0]
    assert helps[0].stdout == helps[1].stdout and "--rows-per-file" in helps[0].stdout

    out = tmp_path / "latents"
    args = ("--model", str(tmp_path / "no-such-model"), "--input", "fashion-mnist", "--output", str(out))
    bad = module(*args), _vaezoo("encode", *args, cwd=tmp_path)
    assert [b.returncode for b in bad] == [1, 1]
    assert _one_error_line(bad[0].stderr, "encode") == _one_error_line(bad[1].stderr, "encode")
    assert "no such model folder" in bad[0].stderr
    assert not out.exists()

    missing = module("--input", "fashion-mnist")  # argparse's usage error: exit code 2
    assert missing.returncode == 2 and "required: --model, --output" in missing.stderr


def test_train_variant_flag_takes_the_variants_own_objective(tmp_path):
    """`vaezoo train --variant iwae` trains the IWAE bound, also over a config file written for
    the vae; `--set objective.*` still applies on top."""
    from pipelines.cli import build_config, make_parser

    vae_file = tmp_path / "vae.yaml"
    vae_file.write_text("variant_name: vae\nobjective: {name: elbo, samples: 3}\n")
    for argv in (["train", "--variant", "iwae", "--dataset", "x"],
                 ["train", "--config", str(vae_file), "--variant", "iwae", "--dataset", "x"]):
        config = build_config(make_parser().parse_args(argv))
        assert (config.variant_name, config.objective.name, config.objective.k) == ("iwae", "iwae", 5)
    config = build_config(make_parser().parse_args(["train", "--variant", "dvae", "--dataset", "x",
                                                    "--set", "objective.name=iwae", "--set", "objective.k=7"]))
    assert (config.variant_name, config.objective.name, config.objective.k) == ("dvae", "iwae", 7)


def test_a_different_variant_starts_from_its_own_default_objective():
    from pipelines.cli import build_config, make_parser

    def objective(*argv):
        return build_config(make_parser().parse_args(["train", *argv])).objective

    assert objective("--variant", "iwae").name == "iwae" and objective("--variant", "iwae").k == 5  # the preset
    assert objective("--variant", "aae") is None  # losses of its own
    assert objective("--variant", "iwae", "--set", "objective.k=7").k == 7
    assert objective().name == "elbo"
