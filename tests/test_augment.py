"""Training-time augmentation (s5ssm.augment): crops, channel scaling, mixup, and their use by the trainer."""

import pytest
import torch
import torch.nn.functional as F

from s5ssm import augment
from s5ssm.cli import main
from s5ssm.training.batches import batch_loss


def test_random_crop_keeps_one_window_of_the_valid_steps():
    torch.manual_seed(0)
    mask = torch.zeros(64, 30, dtype=torch.bool)
    mask[:, :20] = True
    mask[1::2, 3:7] = False  # odd rows: valid steps with a gap, 16 of them
    mask[5] = False  # no valid step
    cropped = augment.random_crop(mask, min_keep=0.5)
    assert not (cropped & ~mask).any()
    assert not cropped[5].any()
    for row in (r for r in range(64) if r != 5):
        rank = mask[row].long().cumsum(0) - 1  # the window is contiguous in the valid steps' order
        kept = rank[cropped[row]]
        assert kept.numel() > 0 and torch.equal(kept, torch.arange(int(kept[0]), int(kept[0]) + kept.numel()))
        assert max(0.5 * int(mask[row].sum()) - 0.5, 2) <= kept.numel() <= int(mask[row].sum())
    assert len({tuple(r.tolist()) for r in cropped}) > 10  # windows differ from row to row


def test_a_crop_keeps_two_steps_where_there_are_two_and_augment_keeps_every_row():
    torch.manual_seed(4)
    mask = torch.zeros(50, 6, dtype=torch.bool)
    mask[:, :3] = True
    mask[::5, 1:] = False  # every fifth row: one valid step
    kept = augment.random_crop(mask, min_keep=0.0).sum(1)
    assert (kept >= mask.sum(1).clamp(max=2)).all() and (kept <= mask.sum(1)).all() and (kept == 2).any()
    gapped = torch.rand(8, 20) > 0.5
    gapped[:, 0] = True
    for _ in range(20):
        out = augment.augment({"x": torch.randn(8, 20, 1), "mask": gapped, "y": torch.arange(8)})
        assert out["mask"].any(dim=1).all() and not (out["mask"] & ~gapped).any()


def test_random_scale_keeps_each_channel_mean_and_scales_its_deviations():
    torch.manual_seed(1)
    x = torch.randn(8, 12, 3, dtype=torch.float64) + 5.0
    mask = torch.ones(8, 12, dtype=torch.bool)
    mask[:, 9:] = False
    scaled = augment.random_scale(x, mask, spread=0.2)
    valid = mask[..., None].double()
    mean = lambda t: (t * valid).sum(1) / valid.sum(1)  # noqa: E731
    torch.testing.assert_close(mean(scaled), mean(x))
    ratio = (scaled - mean(x)[:, None]) / (x - mean(x)[:, None])
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio))  # one factor per sequence and channel
    assert ((ratio >= 0.8 - 1e-12) & (ratio <= 1.2 + 1e-12)).all() and ratio[:, 0].std() > 0


def test_mixup_mixes_inputs_masks_and_is_scored_against_both_labels():
    torch.manual_seed(2)
    batch = {"x": torch.randn(6, 10, 2), "mask": torch.rand(6, 10) > 0.2, "y": torch.arange(6) % 3}
    mixed = augment.mixup(batch, alpha=0.4)
    partner_y, lam = mixed["mix"]
    assert 0.0 <= lam <= 1.0
    # reconstruct the shuffle from x itself: x_mixed - lam x = (1 - lam) x[partner]
    rest = (mixed["x"] - lam * batch["x"]) / (1 - lam)
    order = [min(range(6), key=lambda j: float((rest[i] - batch["x"][j]).abs().max())) for i in range(6)]
    torch.testing.assert_close(rest, batch["x"][order], rtol=1e-4, atol=1e-4)
    assert torch.equal(partner_y, batch["y"][order])
    assert torch.equal(mixed["mask"], batch["mask"] & batch["mask"][order])

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(20, 3))
    model.forward = lambda x, mask=None: torch.nn.Sequential.forward(model, x)  # batch_loss passes the mask
    info = {"kind": "classification"}
    loss, _, count = batch_loss(model, mixed, info, "cpu")
    out = model(mixed["x"])
    expected = lam * F.cross_entropy(out, batch["y"], reduction="sum") + (1 - lam) * F.cross_entropy(
        out, partner_y, reduction="sum")
    torch.testing.assert_close(loss, expected)
    assert count == 6


def test_mixup_of_regression_targets_is_linear():
    torch.manual_seed(3)
    batch = {"x": torch.randn(4, 5, 1), "mask": torch.ones(4, 5, dtype=torch.bool), "y": torch.randn(4, 1)}
    mixed = augment.mixup(batch)
    partner_y, lam = mixed["mix"]
    model = lambda x, mask=None: torch.zeros(x.shape[0], 1)  # noqa: E731
    loss, metric, _ = batch_loss(model, mixed, {"kind": "regression"}, "cpu")
    torch.testing.assert_close(loss, ((lam * batch["y"] + (1 - lam) * partner_y) ** 2).sum())


@pytest.mark.parametrize("task, reason", [("pendulum", "per step"), ("listops", "tokens")])
def test_augment_refuses_data_it_does_not_fit(tmp_path, capsys, task, reason):
    args = ["train", "--task", task, "--size", "tiny", "--epochs", "1", "--hidden_size", "8", "--state_size", "4",
            "--num_layers", "1", "--quiet", "--augment", "--run_dir", str(tmp_path / "run")]
    assert main(args) == 2
    message = capsys.readouterr().err
    assert "--augment" in message and reason in message
