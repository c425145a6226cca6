"""The ``minisolo`` command, run the way a user runs it (``python -m minisolo`` in a subprocess)
and in-process (``minisolo.cli.main([...])``, faster and easier to debug).

Sizes are tiny everywhere: 6 + 3 shapes images of 96 px, 2 iterations at batch 2. The
in-process runs patch the ``tiny`` presets to 96-px inputs; subprocess runs use the real
presets (96-px images upsampled to 256 px), except the stopping tests (SIGINT, SIGTERM,
``kill -9``, torchrun), which pass ``--image-size 96`` and stop a long run after a few steps.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import minisolo
from minisolo import checkpoint as ckpt
from minisolo import cli
from minisolo import config as config_module

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
COCO_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# the tiny presets shrunk to 96-px inputs for the in-process runs
SMALL = {
    "solo": dict(image_short_side=96, image_max_size=96, warmup_iters=2),
    "yolact": dict(image_size=96, warmup_iters=2),
}
SUBPROCESS_TIMEOUT = 300


def _environment(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    # one intra-op thread: on a shared or small CPU, torch's default threads oversubscribe it
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def run_subprocess(*args, env: dict[str, str] | None = None, module: bool = True):
    """``python -m minisolo ARGS`` (or ``python ARGS`` with ``module=False``)."""
    command = [sys.executable, *(["-m", "minisolo"] if module else []), *map(str, args)]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=_environment(**(env or {})),
        cwd=ROOT,
        timeout=SUBPROCESS_TIMEOUT,
    )


def run_in_process(capsys, *args) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def invoke(mode: str, capsys, *args) -> tuple[int, str, str]:
    """Run the command either way; returns (exit code, stdout, stderr)."""
    if mode == "subprocess":
        done = run_subprocess(*args)
        return done.returncode, done.stdout, done.stderr
    return run_in_process(capsys, *args)


def _explain(code, out, err) -> str:
    return f"exit code {code}\n--- stdout ---\n{out[-3000:]}\n--- stderr ---\n{err[-3000:]}"


@pytest.fixture(scope="module")
def one_thread():
    """In-process runs use one torch thread too (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small_presets():
    """Patch the ``tiny`` presets to 96-px inputs (the CLI has no image-size option)."""
    with pytest.MonkeyPatch.context() as patch:
        for model, overrides in SMALL.items():
            presets = config_module.MODEL_PRESETS[model]
            patch.setitem(presets, "tiny", {**presets["tiny"], **overrides})
        yield


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """``minisolo data shapes`` in a subprocess: 6 train and 3 val images of 96 px."""
    out = tmp_path_factory.mktemp("cli") / "shapes"
    done = run_subprocess(
        "data", "shapes", "--out", out, "--num-train", 6, "--num-val", 3, "--image-size", 96
    )
    assert done.returncode == 0, _explain(done.returncode, done.stdout, done.stderr)
    assert str(out) in done.stdout
    return out


def _train_in_process(model: str, data: Path, out: Path) -> Path:
    args = ["train", "--data", data, "--config", "tiny", "--model", model]
    args += ["--max-iters", 2, "--batch-size", 2, "--device", "cpu", "--out", out]
    code = cli.main([str(a) for a in args])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def solo_run(shapes, tmp_path_factory, small_presets, one_thread) -> Path:
    return _train_in_process("solo", shapes, tmp_path_factory.mktemp("solo") / "run")


@pytest.fixture(scope="module")
def yolact_run(shapes, tmp_path_factory, small_presets, one_thread) -> Path:
    return _train_in_process("yolact", shapes, tmp_path_factory.mktemp("yolact") / "run")


def _assert_metrics_file(path: Path) -> dict:
    metrics = json.loads(path.read_text())
    for kind in ("segm", "bbox"):
        assert set(COCO_STATS) <= set(metrics[kind]), (kind, metrics[kind])
        for name in COCO_STATS:
            assert 0.0 <= metrics[kind][name] <= 1.0, (kind, name, metrics[kind][name])
    return metrics


# ------------------------------------------------------------------------------------ data
def test_help_lists_every_command():
    done = run_subprocess("--help")
    assert done.returncode == 0, done.stderr
    for command in ("data", "train", "eval", "predict", "demo"):
        assert command in done.stdout


def test_data_shapes_in_process_matches_the_subprocess(shapes, tmp_path, capsys):
    out = tmp_path / "again"
    code, stdout, stderr = run_in_process(
        capsys, "data", "shapes", "--out", out, "--num-train", 6, "--num-val", 3,
        "--image-size", 96,
    )  # fmt: skip
    assert code == 0, _explain(code, stdout, stderr)
    for split, count in (("train", 6), ("val", 3)):
        ann = out / "annotations" / f"instances_{split}.json"
        assert ann.read_bytes() == (shapes / "annotations" / ann.name).read_bytes()
        images = sorted((out / split).glob("*.png"))
        assert len(images) == count
        assert all(Image.open(p).size == (96, 96) for p in images)


def test_data_shapes_size_and_count_options(tmp_path, capsys):
    out = tmp_path / "big"
    code, stdout, stderr = run_in_process(
        capsys, "data", "shapes", "--out", out, "--num-train", 4, "--num-val", 1,
        "--image-size", 96, "--min-size", 120, "--max-size", 160, "--max-objects", 2,
    )  # fmt: skip
    assert code == 0, _explain(code, stdout, stderr)
    data = json.loads((out / "annotations" / "instances_train.json").read_text())
    per_image = [
        sum(a["image_id"] == im["id"] for a in data["annotations"]) for im in data["images"]
    ]
    assert max(per_image) <= 2
    # visible boxes can only shrink below the full size (120 * 96 / 256 = 45 px), not exceed
    # the largest full size (60 px), up to a pixel of rasterisation
    sizes = [(a["bbox"][2] * a["bbox"][3]) ** 0.5 for a in data["annotations"]]
    assert max(sizes) <= 160 * 96 / 256 + 2 and max(sizes) >= 120 * 96 / 256 - 2


# ------------------------------------------------------------------------------------ train
@pytest.mark.parametrize("model", ["solo", "yolact"])
def test_train_in_process_writes_checkpoint_log_and_metrics(model, request):
    run = request.getfixturevalue(f"{model}_run")
    for name in ("last.pt", "log.jsonl", "loss.png", "metrics.json", "config.json"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == model
    assert config["image_short_side"] == 96  # the patched preset was used
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in lines] == [2]  # log_every 10: the last iteration only
    assert np.isfinite(lines[0]["loss"])
    _assert_metrics_file(run / "metrics.json")
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["iteration"] == 2 and state["model_kind"] == model


def test_train_subprocess_solo(shapes, tmp_path):
    out = tmp_path / "run"
    done = run_subprocess(
        "train", "--data", shapes, "--config", "tiny", "--model", "solo", "--max-iters", 2,
        "--batch-size", 2, "--device", "cpu", "--out", out, "--lr-schedule", "cosine",
    )  # fmt: skip
    assert done.returncode == 0, _explain(done.returncode, done.stdout, done.stderr)
    assert json.loads((out / "config.json").read_text())["lr_schedule"] == "cosine"
    assert f"checkpoint: {out / 'last.pt'}" in done.stdout
    assert "segm:" in done.stdout and "bbox:" in done.stdout
    assert (out / "last.pt").is_file()
    _assert_metrics_file(out / "metrics.json")


# ------------------------------------------------------------------------------------ eval
@pytest.mark.parametrize("model", ["solo", "yolact"])
def test_eval_in_process_writes_metrics_json(model, request, shapes, tmp_path, capsys):
    run = request.getfixturevalue(f"{model}_run")
    out = tmp_path / "eval"
    code, stdout, stderr = run_in_process(
        capsys, "eval", "--checkpoint", run / "last.pt", "--data", shapes, "--out", out,
        "--device", "cpu",
    )  # fmt: skip
    assert code == 0, _explain(code, stdout, stderr)
    assert str(out / "metrics.json") in stdout
    metrics = _assert_metrics_file(out / "metrics.json")
    assert metrics["num_images"] == 3
    assert (out / "results.json").is_file()
    # the same model on the same data: the numbers the training run wrote at its end
    at_train_end = json.loads((run / "metrics.json").read_text())
    for kind in ("segm", "bbox"):
        for name in COCO_STATS:
            assert metrics[kind][name] == pytest.approx(at_train_end[kind][name], abs=1e-6)


def test_eval_subprocess(solo_run, shapes, tmp_path):
    out = tmp_path / "eval"
    done = run_subprocess(
        "eval", "--checkpoint", solo_run / "last.pt", "--data", shapes, "--out", out,
        "--device", "cpu",
    )  # fmt: skip
    assert done.returncode == 0, _explain(done.returncode, done.stdout, done.stderr)
    assert "segm:" in done.stdout
    _assert_metrics_file(out / "metrics.json")


# ------------------------------------------------------------------------------------ predict
@pytest.fixture(scope="module")
def pictures(shapes, tmp_path_factory) -> list[Path]:
    """Two val images (96 x 96) and a non-square JPEG (72 x 120, h x w)."""
    folder = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    wide = folder / "wide.jpg"
    Image.fromarray(rng.integers(0, 255, (72, 120, 3), dtype=np.uint8)).save(wide)
    return [*sorted((shapes / "val").glob("*.png"))[:2], wide]


@pytest.mark.parametrize(("mode", "model"), [("subprocess", "solo"), ("in-process", "yolact")])
def test_predict_writes_one_png_per_image_at_its_size(mode, model, request, pictures, tmp_path):
    run = request.getfixturevalue(f"{model}_run")
    capsys = request.getfixturevalue("capsys")
    out = tmp_path / "pictures"
    code, stdout, stderr = invoke(
        mode, capsys, "predict", "--checkpoint", run / "last.pt", *pictures, "--out", out,
        "--device", "cpu", "--score-threshold", 0.0,
    )  # fmt: skip
    assert code == 0, _explain(code, stdout, stderr)
    written = sorted(out.glob("*.png"))
    assert [p.name for p in written] == sorted(f"{p.stem}_pred.png" for p in pictures)
    for picture in pictures:
        drawn = out / f"{picture.stem}_pred.png"
        assert str(drawn) in stdout
        with Image.open(picture) as original, Image.open(drawn) as result:
            assert result.size == original.size, drawn


# ------------------------------------------------------------------------------------ demo
def test_demo_fast_mode_runs_and_prints_where_the_files_are(tmp_path):
    out = tmp_path / "demo"
    done = run_subprocess(
        "demo", "--out", out, "--num-train", 8, "--device", "cpu", env={"MINISOLO_FAST": "1"}
    )
    assert done.returncode == 0, _explain(done.returncode, done.stdout, done.stderr)
    assert f"everything is in {out}" in done.stdout
    listed = re.findall(r"^\s+(\w+)\s+(\S+)$", done.stdout, flags=re.MULTILINE)
    names = {name for name, _ in listed}
    assert {"checkpoint", "metrics", "loss_curve", "predictions", "summary"} <= names
    for name, path in listed:
        assert Path(path).is_file(), (name, path)
    _assert_metrics_file(out / "run" / "metrics.json")
    assert json.loads((out / "summary.json").read_text())["num_train"] == 8


# ------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("mode", ["subprocess", "in-process"])
def test_eval_with_a_corrupt_checkpoint_exits_2_naming_the_file(mode, shapes, tmp_path, capsys):
    broken = tmp_path / "broken_checkpoint.pt"
    broken.write_bytes(b"\x00this is not a checkpoint")
    code, stdout, stderr = invoke(
        mode, capsys, "eval", "--checkpoint", broken, "--data", shapes, "--out", tmp_path / "e",
        "--device", "cpu",
    )  # fmt: skip
    assert code == 2, _explain(code, stdout, stderr)
    assert "broken_checkpoint.pt" in stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize("mode", ["subprocess", "in-process"])
def test_predict_with_a_corrupt_image_exits_2_naming_the_file(
    mode, solo_run, pictures, tmp_path, capsys
):
    broken = tmp_path / "broken_image.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    code, stdout, stderr = invoke(
        mode, capsys, "predict", "--checkpoint", solo_run / "last.pt", pictures[0], broken,
        "--out", tmp_path / "p", "--device", "cpu",
    )  # fmt: skip
    assert code == 2, _explain(code, stdout, stderr)
    assert "broken_image.png" in stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize("mode", ["subprocess", "in-process"])
def test_train_on_a_folder_without_annotations_exits_2_with_a_clear_message(mode, tmp_path, capsys):
    data = tmp_path / "not_coco"
    (data / "train").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(data / "train" / "a.png")
    code, stdout, stderr = invoke(
        mode, capsys, "train", "--data", data, "--max-iters", 1, "--device", "cpu", "--out",
        tmp_path / "run",
    )  # fmt: skip
    assert code == 2, _explain(code, stdout, stderr)
    assert "annotations" in stderr and str(data) in stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "run" / "last.pt").exists()


# ------------------------------------------------------------------------------------ torchrun
@pytest.fixture(scope="module")
def torchrun_run(shapes, tmp_path_factory):
    """``torchrun --nproc_per_node=2 -m minisolo train ...`` on the CPU (gloo), 2 iterations."""
    out = tmp_path_factory.mktemp("torchrun") / "ddp"
    done = run_subprocess(
        "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "minisolo", "train", "--data", shapes, "--model", "solo", "--max-iters", 2,
        "--batch-size", 2, "--device", "cpu", "--out", out,
        module=False,
    )  # fmt: skip
    assert done.returncode == 0, _explain(done.returncode, done.stdout, done.stderr)
    return done, out


def test_torchrun_two_processes_rank0_logs_each_iteration_once(torchrun_run):
    _, out = torchrun_run
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    # the CLI logs every 10 iterations and at the end: one line for iteration 2, not two
    assert [x["iteration"] for x in lines] == [2]
    assert lines[0]["images_per_s"] > 0
    assert torch.load(out / "last.pt", weights_only=True)["iteration"] == 2
    _assert_metrics_file(out / "metrics.json")
    assert not list(out.glob(".last.pt.*"))  # no temporary checkpoint files left


def test_torchrun_only_rank0_prints_the_summary(torchrun_run):
    done, out = torchrun_run
    assert done.stdout.count(f"checkpoint: {out / 'last.pt'}") == 1
    assert done.stdout.count("metrics:") == 1


# ------------------------------------------------------------------------------------ stopping
# 96-px inputs (--image-size 96): about 10 iterations a second on one CPU thread; 300 asked, so
# that the run is still going when the test stops it
LONG_RUN = ("--max-iters", 300, "--batch-size", 2, "--device", "cpu", "--image-size", 96,
            "--log-every", 1)  # fmt: skip


def start_training(data: Path, out: Path, *extra) -> subprocess.Popen:
    """``python -m minisolo train`` in its own session (a signal to it never reaches pytest),
    with SIGINT at its default (a background shell would leave it ignored)."""
    command = [sys.executable, "-m", "minisolo", "train", "--data", str(data), "--out", str(out)]
    command += [str(a) for a in (*LONG_RUN, *extra)]
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_environment(),
        cwd=ROOT,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_until(condition, process: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"training ended before {what}\n" + _explain(process.returncode, out, err))
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no {what} after {timeout} s")
        time.sleep(0.05)


def _log_lines(out: Path) -> list[str]:
    path = out / "log.jsonl"
    return path.read_text().splitlines() if path.is_file() else []


def _iterations(lines: list[str]) -> list[int]:
    return [json.loads(x)["iteration"] for x in lines]


def _resume_and_check_the_log_continues(data: Path, out: Path, done_before: int) -> None:
    """Resume for two more iterations: the log keeps the first ``done_before`` lines as they
    were and continues from there (lines of iterations the checkpoint did not keep go)."""
    before = _log_lines(out)
    done = run_subprocess(
        "train", "--data", data, "--out", out, "--max-iters", done_before + 2,
        "--batch-size", 2, "--device", "cpu", "--image-size", 96, "--log-every", 1, "--resume",
    )  # fmt: skip
    assert done.returncode == 0, _explain(done.returncode, done.stdout, done.stderr)
    after = _log_lines(out)
    assert _iterations(after) == list(range(1, done_before + 3))
    assert after[:done_before] == before[:done_before]  # kept, not redone
    assert ckpt.load(out / "last.pt")["iteration"] == done_before + 2


@pytest.mark.parametrize(("name", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_train_stops_on_a_signal_with_a_checkpoint_and_resumes(name, code, shapes, tmp_path):
    """Ctrl-C or SIGTERM: the step finishes, last.pt is written, the message says where and
    how to resume, the exit code is 128 + the signal; --resume continues the count."""
    out = tmp_path / "run"
    process = start_training(shapes, out)
    wait_until(lambda: len(_log_lines(out)) >= 2, process, "two logged iterations")
    os.kill(process.pid, getattr(signal, name))
    stdout, stderr = process.communicate(timeout=SUBPROCESS_TIMEOUT)
    assert process.returncode == code, _explain(process.returncode, stdout, stderr)
    message = [line for line in stderr.splitlines() if "stopped after iteration" in line]
    assert len(message) == 1, _explain(process.returncode, stdout, stderr)
    assert name in message[0] and str(out / "last.pt") in message[0]
    assert "--resume" in message[0]
    state = ckpt.load(out / "last.pt")
    assert state["iteration"] >= 2
    assert _iterations(_log_lines(out)) == list(range(1, state["iteration"] + 1))
    assert not list(out.glob(".*tmp"))
    _resume_and_check_the_log_continues(shapes, out, state["iteration"])


def test_kill_9_loses_at_most_checkpoint_every_iterations(shapes, tmp_path):
    out = tmp_path / "run"
    process = start_training(shapes, out, "--checkpoint-every", 3)

    def checkpointed() -> bool:
        try:  # the rename is atomic: last.pt is either absent or complete
            return ckpt.load(out / "last.pt")["iteration"] >= 3
        except ckpt.CheckpointError:
            return False

    wait_until(checkpointed, process, "a periodic checkpoint")
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=SUBPROCESS_TIMEOUT)
    assert process.returncode == -signal.SIGKILL
    saved = ckpt.load(out / "last.pt")["iteration"]
    logged = _iterations(_log_lines(out))
    assert saved % 3 == 0 and logged[:saved] == list(range(1, saved + 1))
    assert max(logged) - saved <= 3  # what the kill lost: at most --checkpoint-every
    _resume_and_check_the_log_continues(shapes, out, saved)


def test_torchrun_sigterm_stops_every_rank_after_the_same_step(shapes, tmp_path):
    """SIGTERM to torchrun (a cluster's scheduler does this): it passes SIGTERM to both ranks,
    they agree on the step to stop after, rank 0 alone writes last.pt and says so."""
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "minisolo", "train", "--data", str(shapes), "--out", str(out),
               *map(str, LONG_RUN)]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_environment(),
        cwd=ROOT, start_new_session=True,
    )  # fmt: skip
    wait_until(lambda: len(_log_lines(out)) >= 2, process, "two logged iterations")
    os.kill(process.pid, signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=SUBPROCESS_TIMEOUT)
    assert process.returncode != 0  # torchrun reports the signal as a failure
    assert stderr.count("stopped after iteration") == 1, _explain(
        process.returncode, stdout, stderr
    )
    state = ckpt.load(out / "last.pt")
    assert state["iteration"] >= 2
    assert _iterations(_log_lines(out)) == list(range(1, state["iteration"] + 1))
    assert not list(out.glob(".*tmp"))


# ------------------------------------------------------------------------------------ periodic
def test_train_checkpoint_every_keep_and_eval_every_options(
    shapes, tmp_path, capsys, small_presets, one_thread
):
    out = tmp_path / "run"
    code, stdout, stderr = run_in_process(
        capsys, "train", "--data", shapes, "--max-iters", 4, "--batch-size", 2, "--device",
        "cpu", "--out", out, "--checkpoint-every", 1, "--keep", 2, "--eval-every", 2,
    )  # fmt: skip
    assert code == 0, _explain(code, stdout, stderr)
    assert sorted(p.name for p in out.glob("*.pt")) == [
        "best.pt", "iter_000003.pt", "iter_000004.pt", "last.pt",
    ]  # fmt: skip
    evaluations = [json.loads(x) for x in (out / "eval.jsonl").read_text().splitlines()]
    assert [e["iteration"] for e in evaluations] == [2, 4]
    best = ckpt.load(out / "best.pt")
    assert best["metrics"]["segm"]["AP"] == max(e["segm"]["AP"] for e in evaluations)
    assert "val mask AP" in stderr + stdout
    for bad in (["--checkpoint-every", 0], ["--keep", -1], ["--eval-every", "x"]):
        with pytest.raises(SystemExit):
            cli.main(["train", "--data", str(shapes), "--out", str(out), *map(str, bad)])


# ------------------------------------------------------------------------------------ checks
def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.is_dir() else {}


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("out is a file", "cannot write to the output folder"),
        ("read-only out", "cannot write to the output folder"),
        ("nothing to resume", "nothing to resume"),
        ("resume another model", "is a solo checkpoint, not yolact"),
        ("resume another config", "lr="),
        ("no usable instances", "no usable instances"),
    ],
)
def test_train_checks_before_it_starts_exit_2_and_overwrite_nothing(
    case, message, solo_run, shapes, tmp_path, capsys
):
    data, out = shapes, tmp_path / "run"
    extra: list = []
    if case == "out is a file":
        out = tmp_path / "taken"
        out.write_text("a file, not a folder")
    elif case == "read-only out":
        if os.geteuid() == 0:
            pytest.skip("root can write to read-only folders")
        out.mkdir()
        out.chmod(0o555)
    elif case == "nothing to resume":
        extra = ["--resume"]
    elif case.startswith("resume another"):
        shutil.copytree(solo_run, out)
        extra = ["--resume", "--model", "yolact"] if "model" in case else ["--resume", "--lr", 0.5]
    else:
        data = tmp_path / "no_instances"
        shutil.copytree(shapes, data)
        annotations = data / "annotations" / "instances_train.json"
        content = json.loads(annotations.read_text())
        annotations.write_text(json.dumps({**content, "annotations": []}))
    before = out.read_bytes() if out.is_file() else _files(out)
    code, stdout, stderr = run_in_process(
        capsys, "train", "--data", data, "--out", out, "--max-iters", 1, "--device", "cpu", *extra
    )
    assert code == 2, _explain(code, stdout, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], stderr
    named = annotations if case == "no usable instances" else out
    assert str(named) in lines[0]
    assert (out.read_bytes() if out.is_file() else _files(out)) == before


def test_eval_with_a_checkpoint_of_other_classes_exits_2(solo_run, shapes, tmp_path, capsys):
    data = tmp_path / "renamed"
    shutil.copytree(shapes, data)
    annotations = data / "annotations" / "instances_val.json"
    content = json.loads(annotations.read_text())
    for category in content["categories"]:
        category["name"] = f"not_{category['name']}"
    annotations.write_text(json.dumps(content))
    out = tmp_path / "eval"
    code, stdout, stderr = run_in_process(
        capsys, "eval", "--checkpoint", solo_run / "last.pt", "--data", data, "--out", out,
        "--device", "cpu",
    )  # fmt: skip
    assert code == 2, _explain(code, stdout, stderr)
    assert str(solo_run / "last.pt") in stderr and str(annotations) in stderr
    assert "not_circle" in stderr and "Traceback" not in stderr
    assert not (out / "metrics.json").exists()


# ------------------------------------------------------------------------------------ config
def test_train_set_and_a_config_file_reach_the_run_config_json(
    shapes, tmp_path, capsys, small_presets, one_thread
):
    """``--config FILE.json`` (a preset with overrides), then ``--set`` on top of it: a
    1-iteration run records all of it in OUT/config.json, which is itself a config file."""
    mine = tmp_path / "mine.json"
    overrides = {"stacked_convs": 2, "lr_steps": [8, 11], "lr": 0.1}
    mine.write_text(json.dumps({"preset": "tiny", "model": "solo", "overrides": overrides}))
    out = tmp_path / "run"
    code, stdout, stderr = run_in_process(
        capsys, "train", "--data", shapes, "--config", mine, "--max-iters", 1, "--batch-size",
        2, "--device", "cpu", "--out", out, "--set", "lr=0.005", "lr_schedule=cosine",
        "scale_ranges=[[1,64],[32,128],[64,256],[128,512],[256,1024]]", "--set", "nms=mask",
        "max_per_image=None",
    )  # fmt: skip
    assert code == 2 and "SOLOConfig.max_per_image is int" in stderr  # checked before training
    assert not out.exists()
    code, stdout, stderr = run_in_process(
        capsys, "train", "--data", shapes, "--config", mine, "--max-iters", 1, "--batch-size",
        2, "--device", "cpu", "--out", out, "--set", "lr=0.005", "lr_schedule=cosine",
        "scale_ranges=[[1,64],[32,128],[64,256],[128,512],[256,1024]]", "--set", "nms=mask",
    )  # fmt: skip
    assert code == 0, _explain(code, stdout, stderr)
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["lr"] == 0.005 and recorded["lr_schedule"] == "cosine"  # --set wins
    assert recorded["scale_ranges"] == [[1, 64], [32, 128], [64, 256], [128, 512], [256, 1024]]
    assert recorded["nms"] == "mask"
    assert recorded["stacked_convs"] == 2 and recorded["lr_steps"] == [8, 11]  # the file
    assert recorded["image_short_side"] == 96 and recorded["grids"] == [16, 14, 10, 8, 6]
    as_json = lambda values: json.loads(json.dumps(values))  # noqa: E731 (tuples -> lists)
    assert as_json(ckpt.load(out / "last.pt")["config"]) == recorded
    # the run's config.json is a whole-config file: --config reads it back as it was
    assert as_json(config_module.load_config(out / "config.json").to_dict()) == recorded


def _all_parsers(parser, name: str = "minisolo"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _all_parsers(sub, f"{name} {sub_name}")


def test_every_option_of_every_command_has_help_and_shows_its_default():
    parsers = dict(_all_parsers(cli.build_parser()))
    assert {"minisolo train", "minisolo data shapes", "minisolo models build"} <= set(parsers)
    for name, parser in parsers.items():
        formatter = parser._get_formatter()
        for action in parser._actions:
            where = f"{name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help, f"{where} has no help"
            if not action.option_strings or action.required:
                continue
            if action.default is argparse.SUPPRESS:  # --help, --version
                continue
            shown = formatter._get_help_string(action)
            assert "default" in shown, f"{where}: its help does not show its default"
        parser.format_help()  # every %(default)s formats


def test_train_help_groups_its_options():
    text = dict(_all_parsers(cli.build_parser()))["minisolo train"].format_help()
    groups = re.findall(r"^(\w[\w ]*):$", text, flags=re.MULTILINE)
    assert groups == ["options", "data", "model", "schedule", "output", "hardware and other"]
    sections = dict(re.findall(r"^(\w[\w ]*):\n((?:  .*\n?)+)", text, flags=re.MULTILINE))
    for group, options in {
        "data": ["--data", "--image-size", "--workers"],
        "model": ["--config", "--model", "--set", "--backbone-weights"],
        "schedule": ["--epochs", "--max-iters", "--batch-size", "--lr ", "--lr-schedule"],
        "output": ["--out", "--resume", "--log-every", "--checkpoint-every", "--keep"],
        "hardware and other": ["--device", "--no-amp", "--seed"],
    }.items():
        for option in options:
            assert option in sections[group], (group, option)
    assert "(default: tiny)" in sections["model"] and "(default: runs/train)" in sections["output"]


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"minisolo {minisolo.__version__}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config", "huge"], "unknown preset 'huge'"),
        (["--set", "lr=fast"], "lr=fast: SOLOConfig.lr is float"),
        (["--set", "lr_schedul=cosine"], "did you mean lr_schedule?"),
        (["--set", "grids=[1,2]"], "one entry per level"),
        (["--backbone-weights", "imagenet"], "backbone_width=32"),
        (["--model", "yolact", "--set", "grids=[4]"], "unknown YOLACTConfig key 'grids'"),
    ],
)
def test_a_bad_config_is_a_one_line_error_with_exit_code_2(args, message, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, stderr = run_in_process(
        capsys, "train", "--data", tmp_path / "no_data", "--out", out, *args
    )
    assert code == 2, _explain(code, stdout, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("minisolo train: error: "), stderr
    assert message in lines[0]
    assert not out.exists()  # refused before anything was written


def test_a_bad_config_file_in_a_subprocess_is_one_line_without_traceback(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"preset": "tiny", "overrides": {"lr": "fast"}}')
    done = run_subprocess("train", "--data", tmp_path, "--config", path)
    assert done.returncode == 2, _explain(done.returncode, done.stdout, done.stderr)
    wanted = 'minisolo train: error: lr="fast": SOLOConfig.lr is float (e.g. lr=0.01)'
    assert done.stderr.strip() == wanted
