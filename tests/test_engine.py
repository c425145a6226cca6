import json
import math
import os
import shutil
import signal

import pytest
import torch

from minisolo import checkpoint as ckpt
from minisolo import preset
from minisolo.data.coco import CocoInstances
from minisolo.data.shapes import make_shapes_dataset
from minisolo.engine import (
    TrainingDiverged,
    autocast_dtype,
    coco_metrics,
    learning_rate,
    load_checkpoint,
    make_optimizer,
    predictions_to_coco,
    train,
)
from minisolo.solo import SOLO

SMALL = dict(image_short_side=96, image_max_size=96, batch_size=2, warmup_iters=2, lr=0.002)


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return make_shapes_dataset(root, num_train=8, num_val=4, image_size=96, seed=3, progress=False)


def test_learning_rate_warmup_and_steps_by_hand():
    cfg = preset("tiny", lr=0.03, warmup_iters=10, warmup_ratio=1 / 3, lr_schedule="step")
    assert learning_rate(cfg, 0, [100]) == pytest.approx(0.01)  # lr / 3
    assert learning_rate(cfg, 5, [100]) == pytest.approx(0.03 * (1 - 0.5 * 2 / 3))
    assert learning_rate(cfg, 10, [100]) == pytest.approx(0.03)
    assert learning_rate(cfg, 100, [100, 120]) == pytest.approx(0.003)
    assert learning_rate(cfg, 130, [100, 120]) == pytest.approx(0.0003)


def test_cosine_schedule_by_hand():
    cfg = preset("tiny", lr=0.02, warmup_iters=10, warmup_ratio=0.1, lr_schedule="cosine")
    # warmup factor 1 - (1 - 5/10) * 0.9 = 0.55 on top of the cosine value at 5/200
    cosine_5 = 0.02 * 0.5 * (1 + math.cos(math.pi * 5 / 200))
    assert learning_rate(cfg, 5, [], 200) == pytest.approx(0.55 * cosine_5)
    assert learning_rate(cfg, 100, [], 200) == pytest.approx(0.01)  # half way: lr / 2
    assert learning_rate(cfg, 150, [], 200) == pytest.approx(0.02 * (1 - math.sqrt(0.5)) / 2)
    assert learning_rate(cfg, 200, [], 200) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="total_iterations"):
        learning_rate(cfg, 5, [])
    with pytest.raises(ValueError, match="lr_schedule"):
        preset("tiny", lr_schedule="linear")


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_train_writes_its_files_and_checkpoint_loads_safely(shapes_dir, tmp_path):
    config = preset("tiny", **SMALL)
    result = train(config, shapes_dir, tmp_path / "run", max_iters=5, progress=False, log_every=1)
    run = tmp_path / "run"
    for name in ("last.pt", "log.jsonl", "loss.png", "metrics.json", "config.json"):
        assert (run / name).is_file(), name
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in lines] == [1, 2, 3, 4, 5]
    assert all(math.isfinite(x["loss"]) for x in lines)
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["segm"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert 0.0 <= metrics["segm"]["AP"] <= 1.0
    # the checkpoint is plain data: it loads with weights_only=True
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["class_names"] == list(result.config.class_names)
    assert state["iteration"] == 5
    model = load_checkpoint(run / "last.pt")
    for key, value in result.model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value.cpu())


def test_interrupted_and_resumed_run_matches_uninterrupted(shapes_dir, tmp_path):
    config = preset("tiny", **SMALL)
    kwargs = dict(max_iters=7, progress=False, log_every=1, evaluate_at_end=False, seed=1)
    straight = train(config, shapes_dir, tmp_path / "a", **kwargs)

    def stop_at_three(record):
        if record["iteration"] == 3:
            raise KeyboardInterrupt

    first = train(config, shapes_dir, tmp_path / "b", callbacks=[stop_at_three], **kwargs)
    assert first.interrupted
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["iteration"] == 3
    resumed = train(config, shapes_dir, tmp_path / "b", resume=True, **kwargs)
    assert not resumed.interrupted
    expected = _weights(straight.model)
    for key, value in resumed.model.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(shapes_dir, tmp_path, monkeypatch):
    config = preset("tiny", **SMALL)
    # 8 images, batch 2: one epoch is 4 iterations; the loss turns NaN in the second epoch
    train(config, shapes_dir, tmp_path / "run", max_iters=4, progress=False, evaluate_at_end=False)
    good = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    from minisolo.solo import SOLO

    original_loss = SOLO.loss

    def poisoned(self, outputs, targets):
        losses = original_loss(self, outputs, targets)
        losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(SOLO, "loss", poisoned)
    with pytest.raises(TrainingDiverged, match="iteration"):
        train(
            config,
            shapes_dir,
            tmp_path / "run",
            max_iters=8,
            resume=True,
            progress=False,
            log_every=1,
            evaluate_at_end=False,
        )
    kept = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert kept["iteration"] == good["iteration"] == 4
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt.save_atomic({"model": {"w": torch.ones(2)}, "config": {}}, path)

    def broken_save(obj, file):
        file.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_atomic({"model": {"w": torch.zeros(2)}, "config": {}}, path)
    monkeypatch.undo()
    assert torch.equal(ckpt.load(path)["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left


def test_bad_checkpoints_are_named_in_the_error(tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"\x00garbage")
    with pytest.raises(ckpt.CheckpointError, match="broken.pt"):
        ckpt.load(broken)
    with pytest.raises(ckpt.CheckpointError, match="not found"):
        ckpt.load(tmp_path / "missing.pt")
    torch.save({"weights": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(ckpt.CheckpointError, match="not a minisolo checkpoint"):
        ckpt.load(tmp_path / "other.pt")


def test_ground_truth_as_prediction_scores_ap_one(shapes_dir):
    dataset = CocoInstances(shapes_dir, "val")
    predictions, ids = [], []
    for k in range(len(dataset)):
        _, target = dataset[k]
        n = len(target["labels"])
        predictions.append(
            {"masks": target["masks"], "labels": target["labels"], "scores": torch.ones(n)}
        )
        ids.append(target["image_id"])
    records = predictions_to_coco(predictions, ids, dataset.category_ids)
    assert {r["category_id"] for r in records} <= set(dataset.category_ids)
    metrics = coco_metrics(dataset.coco, records, ids, verbose=False)
    assert metrics["segm"]["AP"] == pytest.approx(1.0)
    assert metrics["bbox"]["AP"] == pytest.approx(1.0)
    per_class = metrics["per_class"]["segm"].values()
    assert all(ap is None or ap == pytest.approx(1.0) for ap in per_class)


def test_empty_predictions_give_zero_ap(shapes_dir):
    dataset = CocoInstances(shapes_dir, "val")
    metrics = coco_metrics(dataset.coco, [], [dataset[0][1]["image_id"]], verbose=False)
    assert metrics["segm"]["AP"] == 0.0 and metrics["bbox"]["AP"] == 0.0


@pytest.mark.parametrize("model", ["solo", "yolact"])
def test_every_config_field_reaches_the_engine_and_nothing_is_dropped(model, shapes_dir, tmp_path):
    """Both config classes have an ``optimizer`` field that training honours; an attribute that
    is not a field cannot even be set (it would be dropped by ``dataclasses.replace``); a value
    the engine cannot run is an error at once."""
    small = (
        {"image_size": 96} if model == "yolact" else dict(image_short_side=96, image_max_size=96)
    )
    config = preset("tiny", model=model, optimizer="sgd", batch_size=2, warmup_iters=1, **small)
    assert isinstance(make_optimizer(config, [torch.nn.Parameter(torch.zeros(1))]), torch.optim.SGD)
    adamw = preset("tiny", model=model, optimizer="adamw", batch_size=2, warmup_iters=1, **small)
    result = train(adamw, shapes_dir, tmp_path / "run", max_iters=1, progress=False)
    saved = ckpt.load(result.checkpoint)
    assert saved["config"]["optimizer"] == "adamw" and result.config.optimizer == "adamw"
    assert "exp_avg" in saved["optimizer"]["state"][0]  # AdamW's state, not SGD's momentum

    with pytest.raises(AttributeError):
        config.optimiser = "adamw"  # a misspelt field is an error, never silently ignored
    with pytest.raises(ValueError, match="unknown"):
        preset("tiny", model=model, optimiser="adamw")
    with pytest.raises(ValueError, match="optimizer"):
        preset("tiny", model=model, optimizer="adam")
    with pytest.raises(ValueError, match="lr_schedule"):
        preset("tiny", model=model, lr_schedule="linear")


# ------------------------------------------------------------------ stopping, checkpoints
STRAIGHT = dict(max_iters=7, progress=False, log_every=1, evaluate_at_end=False, seed=1)


@pytest.fixture(scope="module")
def straight(shapes_dir, tmp_path_factory):
    """An uninterrupted 7-iteration run that keeps a checkpoint of every iteration (8 images,
    batch 2: 4 iterations per epoch), the reference the stopped and resumed runs must equal."""
    run = tmp_path_factory.mktemp("straight") / "run"
    result = train(preset("tiny", **SMALL), shapes_dir, run, checkpoint_every=1, keep=7, **STRAIGHT)
    return result, run


def _model_weights(path):
    return ckpt.load(path)["model"]


def _assert_same_weights(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key, value in actual.items():
        assert torch.equal(value.cpu(), expected[key].cpu()), key


class _Unhandled(Exception):
    """What the tests' own SIGTERM handler raises: a run that does not handle SIGTERM fails
    the test with it instead of killing pytest."""


@pytest.fixture
def sigterm_guard():
    def guard(signum, frame):
        raise _Unhandled(f"signal {signum} reached the handler outside train()")

    previous = signal.signal(signal.SIGTERM, guard)
    yield guard
    signal.signal(signal.SIGTERM, previous)


def test_sigterm_stops_after_the_step_and_the_resumed_run_matches_uninterrupted(
    straight, shapes_dir, tmp_path, sigterm_guard
):
    """SIGTERM (like Ctrl-C) lets the step finish, writes last.pt, returns interrupted; the
    handlers in place before train() are back afterwards; resuming gives the same weights."""
    config = preset("tiny", **SMALL)
    sigint_before = signal.getsignal(signal.SIGINT)

    def terminate_at_three(record):
        if record["iteration"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    first = train(config, shapes_dir, tmp_path / "b", callbacks=[terminate_at_three], **STRAIGHT)
    assert first.interrupted and first.stop_signal == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is sigterm_guard
    assert signal.getsignal(signal.SIGINT) is sigint_before
    state = ckpt.load(tmp_path / "b" / "last.pt")
    assert state["iteration"] == 3 and (state["epoch"], state["batch_in_epoch"]) == (0, 3)
    _assert_same_weights(state["model"], _model_weights(straight[1] / "iter_000003.pt"))

    resumed = train(config, shapes_dir, tmp_path / "b", resume=True, **STRAIGHT)
    assert not resumed.interrupted and resumed.stop_signal is None
    _assert_same_weights(resumed.model.state_dict(), straight[0].model.state_dict())
    lines = [json.loads(x) for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in lines] == list(range(1, 8))


@pytest.fixture
def sigint_not_ignored():
    """Ctrl-C reaches Python as usual, even when pytest runs as a background job of a shell
    (which starts it with SIGINT ignored: train() then rightly leaves SIGINT ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize(("where", "kept"), [("forward", 2), ("update", 3)])
def test_a_second_ctrl_c_abandons_the_step_but_never_half_an_update(
    where, kept, straight, shapes_dir, tmp_path, monkeypatch, sigint_not_ignored
):
    """Two SIGINTs in step 3: in its forward pass the step is dropped (last.pt holds the
    weights of 2 steps; only BatchNorm's running statistics saw the abandoned batch); in its
    parameter update the update is finished first (last.pt = 3 whole steps). Never the weights
    of one step with the iteration count of another."""
    from minisolo.solo import SOLO

    target = (SOLO, "loss") if where == "forward" else (torch.amp.GradScaler, "update")
    original = getattr(*target)
    calls = []

    def interrupted_twice(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(*target, interrupted_twice)
    result = train(preset("tiny", **SMALL), shapes_dir, tmp_path / "run", **STRAIGHT)
    assert result.interrupted and result.stop_signal == signal.SIGINT
    state = ckpt.load(tmp_path / "run" / "last.pt")
    assert state["iteration"] == kept
    expected = _model_weights(straight[1] / f"iter_{kept:06d}.pt")
    if where == "forward":  # the abandoned forward pass updated the BatchNorm statistics
        statistics = [k for k in expected if "running_" in k or "num_batches" in k]
        assert statistics and any(
            not torch.equal(state["model"][k], expected[k]) for k in statistics
        )
        for key in statistics:
            del state["model"][key], expected[key]
    _assert_same_weights(state["model"], expected)


def test_a_run_resumed_from_a_periodic_mid_epoch_checkpoint_matches_uninterrupted(
    straight, shapes_dir, tmp_path
):
    """What a kill -9 leaves: the newest periodic checkpoint (here iteration 5, the second
    epoch's first batch); the run resumed from it ends with the uninterrupted run's weights."""
    (tmp_path / "run").mkdir()
    shutil.copyfile(straight[1] / "iter_000005.pt", tmp_path / "run" / "last.pt")
    state = ckpt.load(tmp_path / "run" / "last.pt")
    assert (state["iteration"], state["epoch"], state["batch_in_epoch"]) == (5, 1, 1)
    resumed = train(preset("tiny", **SMALL), shapes_dir, tmp_path / "run", resume=True, **STRAIGHT)
    _assert_same_weights(resumed.model.state_dict(), straight[0].model.state_dict())
    lines = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in lines] == list(range(1, 8))


def test_checkpoint_every_and_keep_numbered_copies(straight, shapes_dir, tmp_path):
    """last.pt is always the newest; keep=K leaves the K newest iter_*.pt; the default period
    is one epoch (4 iterations here)."""
    config = preset("tiny", **SMALL)
    kwargs = dict(progress=False, evaluate_at_end=False)
    train(config, shapes_dir, tmp_path / "a", max_iters=5, checkpoint_every=2, keep=2, **kwargs)
    assert sorted(p.name for p in (tmp_path / "a").glob("*.pt")) == [
        "iter_000004.pt", "iter_000005.pt", "last.pt",
    ]  # fmt: skip
    assert ckpt.load(tmp_path / "a" / "last.pt")["iteration"] == 5
    _assert_same_weights(
        _model_weights(tmp_path / "a" / "iter_000005.pt"),
        _model_weights(tmp_path / "a" / "last.pt"),
    )
    train(config, shapes_dir, tmp_path / "b", max_iters=6, keep=5, **kwargs)
    assert sorted(p.name for p in (tmp_path / "b").glob("iter_*.pt")) == [
        "iter_000004.pt", "iter_000006.pt",
    ]  # fmt: skip
    assert sorted(p.name for p in straight[1].glob("iter_*.pt")) == [
        f"iter_{i:06d}.pt" for i in range(1, 8)
    ]
    assert not list(tmp_path.rglob(".*.tmp"))  # no temporary files left


def test_eval_every_logs_val_ap_keeps_the_best_and_changes_no_weights(
    straight, shapes_dir, tmp_path
):
    config = preset("tiny", **SMALL)
    kwargs = {**STRAIGHT, "evaluate_at_end": True}
    result = train(config, shapes_dir, tmp_path / "run", eval_every=3, **kwargs)
    run = tmp_path / "run"
    evaluations = [json.loads(x) for x in (run / "eval.jsonl").read_text().splitlines()]
    assert [e["iteration"] for e in evaluations] == [3, 6, 7]  # 7: the final evaluation
    assert evaluations == result.evaluations
    final = json.loads((run / "metrics.json").read_text())
    assert evaluations[-1]["segm"] == final["segm"]
    best_ap = max(e["segm"]["AP"] for e in evaluations)
    best = ckpt.load(run / "best.pt")
    assert result.best_checkpoint == run / "best.pt"
    assert best["metrics"]["segm"]["AP"] == best_ap == best["best_mask_ap"]
    first_best = next(e for e in evaluations if e["segm"]["AP"] == best_ap)["iteration"]
    assert best["iteration"] == first_best
    assert ckpt.load(run / "last.pt")["evaluations"] == evaluations
    # evaluating does not disturb training: the same weights as the run without evaluations
    _assert_same_weights(result.model.state_dict(), straight[0].model.state_dict())


def test_resume_refuses_what_it_cannot_continue_and_writes_nothing(straight, shapes_dir, tmp_path):
    config = preset("tiny", **SMALL)
    with pytest.raises(ckpt.CheckpointError, match="nothing to resume.*--resume"):
        train(config, shapes_dir, tmp_path / "empty", resume=True, **STRAIGHT)
    assert list((tmp_path / "empty").iterdir()) == []

    run = tmp_path / "run"
    shutil.copytree(straight[1], run)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    cases = [
        (dict(config=preset("tiny", **{**SMALL, "lr": 0.5})), "lr=0.002 \\(asked 0.5\\)"),
        (dict(config=preset("tiny", model="decoupled_solo", **SMALL)), "is a solo checkpoint"),
        (dict(config=config, batch_size=4), "batch size 2"),
    ]
    for changed, message in cases:
        asked = {"config": config, **changed}
        with pytest.raises(ckpt.CheckpointError, match=message):
            train(asked.pop("config"), shapes_dir, run, resume=True, **asked, **STRAIGHT)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_data_without_usable_instances_and_unwritable_output_are_errors(shapes_dir, tmp_path):
    data = tmp_path / "empty_data"
    shutil.copytree(shapes_dir, data)
    annotations = data / "annotations" / "instances_train.json"
    content = json.loads(annotations.read_text())
    annotations.write_text(json.dumps({**content, "annotations": []}))
    from minisolo.data.coco import DataError

    with pytest.raises(DataError, match="no usable instances") as error:
        train(preset("tiny", **SMALL), data, tmp_path / "run", **STRAIGHT)
    assert str(annotations) in str(error.value)
    assert not (tmp_path / "run" / "last.pt").exists()

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    for out in (blocker, blocker / "run"):
        with pytest.raises(ckpt.CheckpointError, match="cannot write to the output folder"):
            train(preset("tiny", **SMALL), shapes_dir, out, **STRAIGHT)
    assert blocker.read_text() == "not a folder"


def test_amp_choices_pick_the_autocast_type(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for off in ("off", False, None):
        assert autocast_dtype(cpu, off) is None and autocast_dtype(cuda, off) is None
    assert autocast_dtype(cpu, "bf16") == torch.bfloat16
    with pytest.raises(ValueError, match="fp16"):
        autocast_dtype(cpu, "fp16")
    with pytest.raises(ValueError, match="amp must be one of"):
        autocast_dtype(cpu, "half")
    # "auto" on the CPU follows the hardware: bf16 only where it is native
    monkeypatch.setattr("minisolo.engine.cpu_has_native_bf16", lambda: True)
    assert autocast_dtype(cpu, "auto") == torch.bfloat16 and autocast_dtype(cpu, True) is not None
    monkeypatch.setattr("minisolo.engine.cpu_has_native_bf16", lambda: False)
    assert autocast_dtype(cpu, "auto") is None
    # "auto" on a GPU: bf16 where supported, fp16 on older ones
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autocast_dtype(cuda, "auto") == torch.float16


def test_bf16_training_on_the_cpu_runs_the_losses_in_float32(shapes_dir, tmp_path, monkeypatch):
    seen = []
    real_loss = SOLO.loss

    def spy(self, outputs, targets):
        seen.append(outputs["mask_features"][0].dtype)
        losses = real_loss(self, outputs, targets)
        seen.append(losses["loss"].dtype)
        return losses

    monkeypatch.setattr(SOLO, "loss", spy)
    config = preset("tiny", **SMALL)
    result = train(
        config, shapes_dir, tmp_path / "run", max_iters=3, progress=False, amp="bf16",
        evaluate_at_end=False,
    )  # fmt: skip
    assert result.precision == "bfloat16"
    assert seen[0] == torch.bfloat16 and seen[1] == torch.float32  # features bf16, loss fp32
    assert all(math.isfinite(r["loss"]) for r in result.history)
    assert all(p.dtype == torch.float32 for p in result.model.parameters())  # fp32 weights
    plain = train(
        config, shapes_dir, tmp_path / "plain", max_iters=1, progress=False, amp="off",
        evaluate_at_end=False,
    )  # fmt: skip
    assert plain.precision == "float32"
