import json
import math

import pytest
import torch

from minisolo import checkpoint as ckpt
from minisolo import preset
from minisolo.data.coco import CocoInstances
from minisolo.data.shapes import make_shapes_dataset
from minisolo.engine import (
    TrainingDiverged,
    coco_metrics,
    learning_rate,
    load_checkpoint,
    predictions_to_coco,
    train,
)

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
