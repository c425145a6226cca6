"""The ``minisolo`` command, run the way a user runs it (``python -m minisolo`` in a subprocess)
and in-process (``minisolo.cli.main([...])``, faster and easier to debug).

Sizes are tiny everywhere: 6 + 3 shapes images of 96 px, 2 iterations at batch 2. The CLI has
no image-size option, so the in-process runs patch the ``tiny`` presets to 96-px inputs;
subprocess runs use the real presets (96-px images upsampled to 256 px).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

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
