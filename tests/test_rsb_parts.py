"""The training parts ResNet-strikes-back recipes need (issue 26): train.loss: bce with its target threshold,
data.repeated_aug (timm's RepeatAugSampler, resumable and sharded), data.test_size and data.crop_pct (the evaluated
input)."""
import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from helpers import TINY_BASE
from PIL import Image
from timm.data import create_transform
from timm.data.distributed_sampler import RepeatAugSampler
from timm.loss import BinaryCrossEntropy
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision.transforms import v2

from ablate.checkpoint import CHECKPOINT, resume_point
from ablate.config import TrainConfig, TrialConfig, data_config, parse_trial
from ablate.data import TensorDataModule, build_datamodule
from ablate.data.order import RepeatedOrder, ResumableBatchSampler
from ablate.errors import AblateError
from ablate.train import TrialModule, run_trial

pytestmark = pytest.mark.filterwarnings("ignore:Found .* module\\(s\\) in eval mode")


def logits_and_labels():
    return torch.randn(8, 10, generator=torch.Generator().manual_seed(0)), torch.arange(8)


# ---------------------------------------------------------------- train.loss: bce

def test_bce_trains_timms_binary_cross_entropy_on_smoothed_one_hot_targets():
    logits, y = logits_and_labels()
    module = TrialModule(nn.Identity(), TrainConfig(loss="bce", label_smoothing=0.1), 10)
    assert isinstance(module.criterion, BinaryCrossEntropy)
    smoothed = torch.full((8, 10), 0.01).scatter(1, y[:, None], 0.91)  # timm's off/on values for BCE
    assert module.criterion(logits, y) == pytest.approx(float(F.binary_cross_entropy_with_logits(logits, smoothed)))
    plain = TrialModule(nn.Identity(), TrainConfig(loss="bce"), 10).criterion(logits, y)  # not timm's default 0.1
    assert plain == pytest.approx(float(F.binary_cross_entropy_with_logits(logits, F.one_hot(y, 10).float())))
    # a threshold binarises the smoothed targets back to one-hot
    thresholded = TrialModule(nn.Identity(), TrainConfig(loss="bce", label_smoothing=0.1,
                                                         bce_target_threshold=0.2), 10).criterion(logits, y)
    assert thresholded == pytest.approx(float(plain))


def test_bce_with_mixup_takes_mixups_soft_targets_and_thresholds_them():
    module = TrialModule(nn.Identity(), TrainConfig(loss="bce", mixup=0.4, label_smoothing=0.1,
                                                    bce_target_threshold=0.2), 10)
    x, y = torch.randn(8, 3, 4, 4), torch.arange(8)
    np.random.seed(0)  # timm's Mixup draws lambda from numpy
    _, soft = module.mixup(x, y)
    assert ((soft > 0.2) & (soft < 1)).any()  # mixed targets: both partners above the threshold
    logits = torch.randn(8, 10, generator=torch.Generator().manual_seed(1))
    assert module.criterion(logits, soft) == pytest.approx(
        float(F.binary_cross_entropy_with_logits(logits, (soft > 0.2).float())))
    unthresholded = TrialModule(nn.Identity(), TrainConfig(loss="bce", mixup=0.4, label_smoothing=0.1), 10)
    # mixup's targets already hold the smoothing: BCE adds none of its own
    assert unthresholded.criterion(logits, soft) == pytest.approx(
        float(F.binary_cross_entropy_with_logits(logits, soft)))


def test_val_loss_is_cross_entropy_on_the_evaluated_logits_whatever_trains():
    x, y = torch.randn(32, 6, generator=torch.Generator().manual_seed(2)), torch.arange(32) % 4
    model = nn.Linear(6, 4)
    module = TrialModule(model, TrainConfig(loss="bce", bce_target_threshold=0.2, label_smoothing=0.1), 4)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(module, DataLoader(TensorDataset(x, y), batch_size=8), verbose=False)
    with torch.no_grad():
        expected = F.cross_entropy(model(x), y)
    assert float(trainer.callback_metrics["val/loss"]) == pytest.approx(float(expected), rel=1e-5)


def test_a_threshold_without_bce_is_one_line_naming_the_key():
    with pytest.raises(AblateError) as err:
        parse_trial({"train": {"bce_target_threshold": 0.2}}, "trial.yaml")
    line = str(err.value)
    assert line.startswith("trial.yaml: train.bce_target_threshold: ") and "\n" not in line
    assert "train.loss is 'ce'" in line and "set train.loss: bce" in line
    assert parse_trial({"train": {"loss": "bce", "bce_target_threshold": 0.2}}).train.bce_target_threshold == 0.2


# ---------------------------------------------------------------- data.repeated_aug

def digits(**keys):
    return data_config(name="digits", image_size=16, batch_size=16, train_size=160, val_size=32, **keys)


def epoch_order(dm) -> list[list[int]]:
    return [list(b) for b in dm.train_dataloader().batch_sampler]


def test_repeated_aug_keeps_the_epochs_batches_with_each_image_three_times_in_a_row():
    plain, repeated = (build_datamodule(digits(repeated_aug=n), train_seed=4) for n in (1, 3))
    batches = epoch_order(repeated)
    assert len(batches) == len(epoch_order(plain)) == 10  # the usual epoch: 160 samples, 10 batches
    flat = [i for b in batches for i in b]
    runs = [flat[i:i + 3] for i in range(0, len(flat) - len(flat) % 3, 3)]
    assert all(len(set(r)) == 1 for r in runs)  # each index three times in a row, as timm's sampler repeats it
    assert len(set(flat)) == math.ceil(160 / 3)  # a third of the images an epoch, each seen three times
    assert epoch_order(build_datamodule(digits(repeated_aug=3), train_seed=4)) == batches  # replayed, not random
    assert epoch_order(build_datamodule(digits(repeated_aug=3), train_seed=5)) != batches  # the seed's own order


def test_each_copy_of_an_image_gets_its_own_crop_and_flip():
    dm = build_datamodule(digits(repeated_aug=3, hflip=0.5), train_seed=0)
    indices = next(iter(dm.train_dataloader().batch_sampler))
    x, _ = dm.transform_batch(next(iter(dm.train_dataloader())), train=True)
    copies = [j for j, i in enumerate(indices) if i == indices[0]]
    assert len(copies) == 3 and indices[copies[0]] == indices[copies[1]]
    assert not torch.equal(x[copies[0]], x[copies[1]]) or not torch.equal(x[copies[1]], x[copies[2]])


def seeded_order(seed: int, size: int, ranks: int, rank: int, batch: int) -> list[int]:
    """ablate's repeated order on `rank` of `ranks`, one epoch, flattened."""
    sampler = RepeatedOrder(size, 3, torch.Generator().manual_seed(seed))
    return [i for b in ResumableBatchSampler(sampler, batch, True, rank=rank, ranks=ranks, strided=True) for i in b]


@pytest.mark.parametrize("ranks", [1, 2, 4])
def test_repeated_order_on_each_rank_is_timms_repeat_aug_sampler_with_the_trials_seed(ranks):
    size, batch = 96, 16
    epoch_seed = int(torch.randint(2**62, (), generator=torch.Generator().manual_seed(7)))  # what ablate seeds with
    for rank in range(ranks):
        timm_sampler = RepeatAugSampler(range(size), num_replicas=ranks, rank=rank, num_repeats=3, selected_round=0)
        timm_sampler.set_epoch(epoch_seed)
        ours = seeded_order(7, size, ranks, rank, batch)
        assert ours == list(timm_sampler)[:len(ours)] and len(ours) == size // ranks
    if ranks > 1:  # the copies of an image sit on different ranks, as timm's split puts them
        first = [seeded_order(7, size, ranks, r, batch)[0] for r in range(ranks)]
        assert len(set(first[:3])) == 1


def test_a_repeated_epoch_resumed_part_way_draws_the_remaining_batches():
    for ranks in (1, 2):
        gen = torch.Generator().manual_seed(3)
        whole = ResumableBatchSampler(RepeatedOrder(64, 3, gen), 8, True, rank=ranks - 1, ranks=ranks, strided=True)
        next(iter(whole))  # an earlier epoch, so the state saved is not the generator's first
        epoch = list(whole)
        saved = whole.epoch_order  # what the trial's checkpoint holds of a stopped epoch
        again = ResumableBatchSampler(RepeatedOrder(64, 3, torch.Generator()), 8, True, rank=ranks - 1, ranks=ranks,
                                      strided=True)
        again.resume_at = saved, 3
        assert list(again) == epoch[3:]


def tiny(**data) -> TrialConfig:
    return TrialConfig.model_validate(TINY_BASE | {
        "data": TINY_BASE["data"] | {"hflip": 0.5, **data}, "train": {"epochs": 2, "progress_bar": False}})


def test_a_repeated_aug_trial_stopped_mid_epoch_resumes_to_the_uninterrupted_result(tmp_path):
    from test_checkpoint import stopped_trial  # the checkpoint a stop after the first batch of epoch 1 writes

    cfg = tiny(repeated_aug=3)
    whole = run_trial(cfg)
    path = stopped_trial(tmp_path, cfg)
    resume = resume_point(path, cfg)
    assert resume.epoch == 1 and path.name == CHECKPOINT
    resumed = run_trial(cfg, checkpoint=path, resume=resume)
    for key in ("val/loss", "val/acc1", "train/loss"):
        assert resumed.metrics[key] == pytest.approx(whole.metrics[key], abs=1e-6), key


# ---------------------------------------------------------------- data.test_size and data.crop_pct

class Shapes(pl.Callback):
    """The input shapes the model saw in training and in validation."""

    def __init__(self):
        self.seen = {"train": set(), "val": set()}

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.seen["train"].add(tuple(batch[0].shape[1:]))

    def on_validation_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0):
        self.seen["val"].add(tuple(batch[0].shape[1:]))


@pytest.mark.parametrize("crop_pct", [None, 0.875])
def test_the_model_trains_at_image_size_and_is_validated_at_test_size(crop_pct):
    shapes = Shapes()
    cfg = TrialConfig.model_validate(TINY_BASE | {
        "data": TINY_BASE["data"] | {"image_size": 32, "test_size": 40, "crop_pct": crop_pct},
        "train": {"epochs": 1, "progress_bar": False}})
    result = run_trial(cfg, callbacks=[shapes])
    assert shapes.seen == {"train": {(3, 32, 32)}, "val": {(3, 40, 40)}}
    assert result.status == "FINISHED" and 0 <= result.metrics["val/acc1"] <= 1


def in_memory(x: torch.Tensor, **keys) -> TensorDataModule:
    """The in-memory path over the uint8 images `x` (as train and val split)."""
    cfg = data_config(name="synthetic", num_classes=2, batch_size=4, **keys)
    y = torch.arange(len(x)) % 2
    return TensorDataModule(cfg, x, y, x, y, 2)


def known_images() -> torch.Tensor:
    return torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def unnormalised(dm, x):
    out, _ = dm.transform_batch((x, torch.zeros(len(x), dtype=torch.long)), train=False)
    return out * dm.std[:, None, None] + dm.mean[:, None, None]


def test_crop_pct_is_torchvisions_resize_and_centre_crop_as_timm_evaluates():
    x = known_images()
    dm = in_memory(x, image_size=32, test_size=28, crop_pct=0.875)
    ours = unnormalised(dm, x)
    assert ours.shape == (4, 3, 28, 28)
    reference = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Resize(32, antialias=True),  # 28/0.875 = 32
                            v2.CenterCrop(28)])(x)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)
    bigger = in_memory(x, image_size=32, test_size=40, crop_pct=0.875)  # resize to 45, then crop 40
    reference = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Resize(45, antialias=True), v2.CenterCrop(40)])
    torch.testing.assert_close(unnormalised(bigger, x), reference(x), atol=1e-5, rtol=0)
    # timm's own eval transform (PIL's bilinear) on the first image: the same picture within rounding
    timm_eval = create_transform(40, is_training=False, crop_pct=0.875, use_prefetcher=True)
    theirs = timm_eval(Image.fromarray(x[0].permute(1, 2, 0).numpy())).float() / 255
    assert (unnormalised(bigger, x)[0] - theirs).abs().mean() < 0.01


def test_null_test_size_and_crop_pct_evaluate_as_before():
    x = known_images()
    dm = in_memory(x, image_size=40)
    assert dm.test_size == 40
    before = F.interpolate(x.float() / 255, size=(40, 40), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(unnormalised(dm, x), before, atol=1e-5, rtol=0)  # main's eval transform
    only_size = in_memory(x, image_size=32, test_size=40)  # a test size without a crop: the whole image resized
    torch.testing.assert_close(unnormalised(only_size, x), before, atol=1e-5, rtol=0)
    native = in_memory(x, image_size=32)
    torch.testing.assert_close(unnormalised(native, x), x.float() / 255, atol=1e-5, rtol=0)


def test_imagefolder_evaluates_at_test_size_with_timms_crop(tmp_path):
    from test_data import write_image_folder

    write_image_folder(tmp_path)
    dm = build_datamodule(data_config(name="imagefolder", root=str(tmp_path), image_size=16, test_size=24,
                                      crop_pct=0.95, batch_size=4))
    x, _ = next(iter(dm.val_dataloader()))
    assert x.shape == (4, 3, 24, 24) and dm.test_size == 24
    assert next(iter(dm.train_dataloader()))[0].shape == (4, 3, 16, 16)
    path = dm.val_set.samples[0][0]
    expected = create_transform(24, is_training=False, crop_pct=0.95, use_prefetcher=True)(Image.open(path).convert(
        "RGB"))
    assert torch.equal(x[0], expected)


def test_imagefolder_repeats_each_image_in_its_order_and_augments_each_copy(tmp_path):
    from test_data import write_image_folder

    write_image_folder(tmp_path, per_class=6)  # 12 training images, batches of 6
    dm = build_datamodule(data_config(name="imagefolder", root=str(tmp_path), image_size=16, batch_size=6,
                                      repeated_aug=3), train_seed=0)
    loader = dm.train_dataloader()
    [first, second] = [list(b) for b in loader.batch_sampler]  # the usual two batches
    assert first[:3] == [first[0]] * 3 and first[3:] == [first[3]] * 3 and second[:3] == [second[0]] * 3
    x, _ = next(iter(loader))  # timm's per-sample random-resized crop: each copy its own
    assert not torch.equal(x[0], x[1]) or not torch.equal(x[1], x[2])


# ---------------------------------------------------------------- all of them, one trial on two devices

@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="this torch build has no gloo backend")
def test_a_two_device_trial_trains_bce_on_repeated_batches_and_validates_at_test_size(tmp_path):
    shapes = Shapes()  # rank 0's; rank 1 (a spawned process) trains on the other half of every batch
    cfg = TrialConfig.model_validate(TINY_BASE | {
        "data": TINY_BASE["data"] | {"train_size": 64, "val_size": 15, "repeated_aug": 3, "hflip": 0.5,
                                     "test_size": 24, "crop_pct": 0.875},
        "train": {"epochs": 1, "progress_bar": False, "devices": 2, "accelerator": "cpu", "loss": "bce",
                  "bce_target_threshold": 0.2, "mixup": 0.2, "label_smoothing": 0.1},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}})
    result = run_trial(cfg, callbacks=[shapes])
    assert result.status == "FINISHED" and math.isfinite(result.metrics["val/loss"])
    assert shapes.seen == {"train": {(3, 16, 16)}, "val": {(3, 24, 24)}}
    acc = result.metrics["val/acc1"] * 15  # every rank's share of the 15 images, each counted once
    assert abs(acc - round(acc)) < 1e-4
