"""What a trial measures and what a seed varies (issue 24): the evaluated weights are the EMA's when EMA is on, a seed
draws its own batches (data.order), a holdout is where selection happens (data.holdout), and the reported split's
per-image correctness comes back with the result."""
import subprocess
import sys

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from ablate import tracking
from ablate.config import TrialConfig, data_config
from ablate.correct import pack_correct, unpack_correct
from ablate.data import build_datamodule, check_data
from ablate.errors import AblateError
from ablate.train import run_trial

pytestmark = pytest.mark.filterwarnings("ignore:Found .* module\\(s\\) in eval mode")


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


def tiny(uri, experiment, data=None, **train) -> TrialConfig:
    """timm's smallest ResNet on 64 synthetic 16 px images (10 classes), 32 to validate on: 2 epochs of 4 steps."""
    return TrialConfig.model_validate({
        "model": {"backbone": "test_resnet"},
        "data": {"name": "synthetic", "image_size": 16, "batch_size": 16, "train_size": 64, "val_size": 32,
                 **(data or {})},
        "train": {"epochs": 2, "lr": 0.05, "progress_bar": False, **train},
        "tracking": {"uri": uri, "experiment": experiment},
    })


class CountImages(pl.Callback):
    """The images each phase of the last epoch saw, and the order seed the trial's datamodule drew from."""

    def on_train_epoch_start(self, trainer, module):
        self.trained = self.validated = 0
        self.order_seed = trainer.datamodule.order_seed

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.trained += len(batch[1])

    def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0):
        self.validated += len(batch[1])


# ---------------------------------------------------------------- the metric a trick changes is the metric reported

@pytest.fixture(scope="module")
def ema_runs(uri):
    """The same trial without EMA, with EMA evaluated (the default) and with EMA logged beside the raw weights."""
    return {name: run_trial(tiny(uri, "ema", **train)) for name, train in {
        "plain": {}, "ema": {"ema": True, "ema_decay": 0.5}, "raw": {"ema": True, "ema_decay": 0.5, "eval": "raw"},
    }.items()}


def test_a_cell_whose_only_change_is_ema_reads_a_delta(ema_runs):
    plain, ema = ema_runs["plain"].metrics, ema_runs["ema"].metrics
    assert ema["val/acc1"] - plain["val/acc1"] != 0 and ema["val/loss"] != plain["val/loss"]
    # val/* are the EMA's, still logged as val/*_ema; the raw weights (EMA changes no step) are val/*_raw
    for metric in ("acc1", "acc5", "loss"):
        assert ema[f"val/{metric}"] == ema[f"val/{metric}_ema"]
        assert ema[f"val/{metric}_raw"] == plain[f"val/{metric}"]
    assert ema_runs["ema"].best_acc1 == ema["val/acc1_best"] >= ema["val/acc1"]


def test_eval_raw_reports_the_raw_weights_with_the_emas_beside_them(ema_runs):
    plain, ema, raw = (ema_runs[k].metrics for k in ("plain", "ema", "raw"))
    assert raw["val/acc1"] == plain["val/acc1"] and raw["val/loss"] == plain["val/loss"]
    assert raw["val/acc1_ema"] == ema["val/acc1"] and "val/acc1_raw" not in raw
    assert not {k for k in plain if k.endswith(("_ema", "_raw"))}  # without EMA nothing changes


def test_each_images_correctness_is_the_reported_accuracy(ema_runs):
    for name, result in ema_runs.items():
        correct = unpack_correct(result.correct)
        assert len(correct) == 32  # the validation split, every image once
        assert correct.mean() == pytest.approx(result.metrics["val/acc1"], abs=1e-6), name  # the evaluated weights


def test_packed_correctness_round_trips_without_torch():
    bits = np.random.default_rng(0).random(1003) < 0.7
    packed = pack_correct(bits)
    assert packed.startswith("1003:") and len(packed) == len("1003:") + 2 * 126
    assert np.array_equal(unpack_correct(packed), bits) and unpack_correct(pack_correct([])).shape == (0,)
    code = "import sys, ablate.correct; print('torch' in sys.modules)"  # what a report may import
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


# ---------------------------------------------------------------- seeds that vary what a seed should

def first_epoch(dm) -> tuple[torch.Tensor, torch.Tensor]:
    """The first epoch's training labels in order, and the first batch's augmented images."""
    labels = torch.cat([y for _, y in dm.train_dataloader()])
    return labels, dm.transform_batch(next(iter(dm.train_dataloader())), train=True)[0]


@pytest.mark.parametrize("order", ["seed", "fixed"])
def test_a_seed_draws_its_own_order_and_augmentation_under_data_order_seed(order):
    cfg = data_config(name="digits", image_size=16, batch_size=16, hflip=0.5, order=order)
    dms = [build_datamodule(cfg, train_seed=s) for s in (0, 1)]
    (labels0, images0), (labels1, images1) = (first_epoch(dm) for dm in dms)
    assert torch.equal(dms[0].x_val, dms[1].x_val) and torch.equal(dms[0].y_val, dms[1].y_val)  # the same images
    assert torch.equal(dms[0].x_train, dms[1].x_train)  # data.seed alone fixes the dataset
    differs = not torch.equal(labels0, labels1)
    assert differs == (order == "seed")
    assert (not torch.equal(images0, images1)) == (order == "seed")  # crops and flips too
    assert torch.equal(first_epoch(build_datamodule(cfg, train_seed=1))[0], labels1)  # replayed, not random


def test_a_trial_draws_its_order_from_its_train_seed(uri):
    counts = CountImages()
    run_trial(tiny(uri, "order", seed=5, epochs=1, limit_train_batches=1), callbacks=[counts])
    assert counts.order_seed == 5
    run_trial(tiny(uri, "order", {"order": "fixed", "seed": 3}, seed=5, epochs=1, limit_train_batches=1),
              callbacks=[counts])
    assert counts.order_seed == 3


# ---------------------------------------------------------------- a held-out split where selection happens

def test_a_holdout_is_selected_on_and_the_test_split_reported(uri):
    counts = CountImages()
    result = run_trial(tiny(uri, "holdout", {"holdout": 16}), callbacks=[counts])
    assert (counts.trained, counts.validated) == (64 - 16, 16)  # trained on the rest, validated on the holdout
    metrics = result.metrics
    assert {"test/acc1", "test/acc5", "test/loss"} <= set(metrics)
    correct = unpack_correct(result.correct)
    assert len(correct) == 32  # the dataset's own validation split: what the table reports
    assert correct.mean() == pytest.approx(metrics["test/acc1"], abs=1e-6)
    client = tracking.make_client(uri)
    assert [m.step for m in client.get_metric_history(result.run_id, "test/acc1")] == [1]  # the last epoch


def test_a_holdout_is_drawn_from_data_seed_stratified_and_out_of_training():
    dm = build_datamodule(data_config(name="digits", image_size=8, batch_size=16, holdout=0.1), train_seed=4)
    held, trained = dm.holdout.held, dm.holdout.train
    assert len(held) == round(0.1 * len(dm.y_train)) and len(held) + len(trained) == len(dm.y_train)
    assert not set(held.tolist()) & set(trained.tolist())
    per_class = torch.bincount(dm.y_train[held], minlength=10).float()
    expected = torch.bincount(dm.y_train, minlength=10).float() * 0.1
    assert (per_class - expected).abs().max() <= 1  # each class in proportion
    x, y = next(iter(dm.val_dataloader()))
    assert torch.equal(x, dm.x_train[held[:16]]) and torch.equal(y, dm.y_train[held[:16]])
    again = build_datamodule(data_config(name="digits", image_size=8, batch_size=16, holdout=0.1), train_seed=9)
    assert torch.equal(again.holdout.held, held)  # data.seed's, not the seed's
    assert len(dm.reported_dataloader().dataset) == len(dm.y_val)


@pytest.mark.parametrize("holdout, samples", [(64, 64), (500, 64), (0.001, 64)])
def test_a_holdout_that_leaves_nothing_is_one_line_naming_it(holdout, samples):
    with pytest.raises(AblateError) as err:
        build_datamodule(data_config(name="synthetic", train_size=samples, holdout=holdout))
    assert str(err.value).startswith("data.holdout: ") and "\n" not in str(err.value)
    with pytest.raises(AblateError, match="^data.holdout: "):  # a dataset of known size: before anything loads
        check_data(data_config(name="digits", holdout=5000))
