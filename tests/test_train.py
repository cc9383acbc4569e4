"""ablate.train: a trial's record in MLflow, reproducibility, each trick, divergence, pruning, bad input."""
import logging
import math
import subprocess
import sys
import warnings

import numpy as np
import optuna
import pytest
import pytorch_lightning as pl
import torch
import yaml
from mlflow.artifacts import load_dict, load_text
from timm.loss import SoftTargetCrossEntropy
from torch import nn

from ablate import tracking
from ablate.config import METRICS, ModelConfig, TrainConfig, TrialConfig
from ablate.data import build_datamodule
from ablate.errors import AblateError
from ablate.models import build_model
from ablate.train import DivergedError, TrialModule, make_trainer, run_trial

# the EMA copy is eval-only on purpose (run_trial filters this too; make_trainer alone does not)
pytestmark = pytest.mark.filterwarnings("ignore:Found .* module\\(s\\) in eval mode")
WALL_CLOCK = {"train/throughput", "train/epoch_time", "train/peak_mem_mb"}  # differ between identical runs
VAL = ["val/acc1", "val/acc1_best", "val/acc1_ema", "val/acc1_raw", "val/acc5", "val/acc5_ema", "val/acc5_raw",
       "val/loss", "val/loss_ema", "val/loss_raw"]
TRAIN = ["train/epoch_time", "train/loss", "train/lr", "train/peak_mem_mb", "train/throughput"]


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    """One SQLite store for the module (creating its tables is the slow part); one experiment per test."""
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


def tiny(uri=None, experiment="t", model=None, **train) -> TrialConfig:
    """timm's smallest ResNet on 64 synthetic 16 px images: 4 steps an epoch, 2 epochs."""
    return TrialConfig.model_validate({
        "model": {"backbone": "test_resnet", **(model or {})},
        "data": {"name": "synthetic", "image_size": 16, "batch_size": 16, "train_size": 64, "val_size": 32},
        "train": {"epochs": 2, "lr": 0.05, "progress_bar": False, **train},
        "tracking": {"uri": uri, "experiment": experiment},
    })


def history(client, run_id, key):
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def build(cfg: TrialConfig):
    """The trial's data and module, as run_trial builds them (train them with make_trainer, no MLflow)."""
    data = build_datamodule(cfg.data)
    built = build_model(cfg.model, data.num_classes, data.in_chans, data.image_size)
    return TrialModule(built.model, cfg.train, data.num_classes), data


# ---------------------------------------------------------------- the record

def test_run_records_params_metrics_and_artifacts(uri, monkeypatch):
    client = tracking.make_client(uri)
    parent = tracking.start_run(client, tracking.get_or_create_experiment(client, "record"), run_name="study")
    seen, levels, writes = [], [], []

    class Spy(pl.Callback):  # what a study's pruning callback reads
        def on_validation_end(self, trainer, module):
            seen.append(float(trainer.callback_metrics["val/acc1"]))
            levels.append(logging.getLogger("pytorch_lightning").level)

    real_log_metrics = tracking.log_metrics

    def log_metrics(client, run_id, metrics, step):  # every write to MLflow goes through this one function
        writes.append((step, sorted(metrics)))
        real_log_metrics(client, run_id, metrics, step)

    monkeypatch.setattr(tracking, "log_metrics", log_metrics)
    filters, level = warnings.filters[:], logging.getLogger("pytorch_lightning").level
    cfg = tiny(uri, "record", ema=True, label_smoothing=0.1, warmup_epochs=1, min_lr=1e-4)
    result = run_trial(cfg, callbacks=[Spy()], parent_run_id=parent, tags={"optuna.trial": 7})
    # Lightning quiet during the trial only: the caller's warning filters and log level come back
    assert levels == [logging.WARNING] * 2
    assert warnings.filters == filters and logging.getLogger("pytorch_lightning").level == level
    # one write per phase per epoch (one SQLite transaction each), step = epoch
    assert writes == [(0, ["model/gmacs", "model/params"]), (0, VAL), (0, TRAIN), (1, VAL), (1, TRAIN)]

    run = client.get_run(result.run_id)
    assert run.info.status == result.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == parent and run.data.tags["optuna.trial"] == "7"
    params = run.data.params
    assert params["model.backbone"] == "test_resnet" and params["train.ema"] == "True"
    assert int(params["model.num_params"]) == result.metrics["model/params"] > 0
    assert float(params["model.gmacs"]) == pytest.approx(result.metrics["model/gmacs"])
    assert result.metrics["model/gmacs"] > 0

    assert sorted(result.metrics) == sorted(["model/gmacs", "model/params", *TRAIN, *VAL])
    for key in TRAIN + VAL:
        assert [step for step, _ in history(client, result.run_id, key)] == [0, 1], key
        assert result.metrics[key] == pytest.approx(history(client, result.run_id, key)[-1][1]), key
    acc1 = [v for _, v in history(client, result.run_id, "val/acc1")]
    assert seen == pytest.approx(acc1)
    assert [v for _, v in history(client, result.run_id, "val/acc1_best")] == pytest.approx(
        np.maximum.accumulate(acc1))
    assert result.best_acc1 == pytest.approx(max(acc1))
    assert all(v > 0 for _, v in history(client, result.run_id, "train/throughput"))

    # cosine stepped per update (4 a epoch, 8 in all, warmup 4): half-way after epoch 0, min_lr at the end
    lrs = [v for _, v in history(client, result.run_id, "train/lr")]
    assert lrs[0] == pytest.approx(1e-4 + 0.5 * (0.05 - 1e-4) * (1 + math.cos(math.pi * 4 / 8)))
    assert lrs[-1] == pytest.approx(1e-4)

    assert {a.path for a in client.list_artifacts(result.run_id)} >= {"config.yaml", "insertion_report.json"}
    saved = yaml.safe_load(load_text(f"{run.info.artifact_uri}/config.yaml"))
    assert TrialConfig.model_validate(saved) == cfg
    report = load_dict(f"{run.info.artifact_uri}/insertion_report.json")
    assert report["backbone"] == "test_resnet" and report["params"] == result.metrics["model/params"]


def test_a_trial_logs_exactly_the_metrics_a_study_may_optimise(uri):
    """config.METRICS, the names study.metric may take, are what a trial logs: all of them and no other, with EMA on
    (val/*_ema and val/*_raw need train.ema), a holdout (test/* need data.holdout) and more than 5 classes (val/acc5*
    need them: tiny's synthetic data has 10)."""
    cfg = tiny(uri, "metrics", ema=True, epochs=1)
    cfg.data.holdout = 16
    result = run_trial(cfg)
    assert sorted(result.metrics) == sorted(METRICS)


def test_importing_ablate_changes_no_global_setting():
    """A notebook that imports ablate keeps its own warning filters and Lightning's log level."""
    code = ("import logging, warnings, mlflow, pytorch_lightning, timm.data, torchmetrics\n"
            "before = warnings.filters[:], logging.getLogger('pytorch_lightning').level\n"
            "import ablate.train, ablate.interrupt\n"
            "assert (warnings.filters, logging.getLogger('pytorch_lightning').level) == before, "
            "(warnings.filters[:3], before[0][:3])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_same_seed_same_metrics(uri):
    # mixup, EMA and stochastic depth draw random numbers too: all of it must replay
    runs = [run_trial(tiny(uri, "seed", model={"drop_path_rate": 0.1}, mixup=0.2, ema=True, seed=s))
            for s in (0, 0, 1)]
    same, again, other = [{k: v for k, v in r.metrics.items() if k not in WALL_CLOCK} for r in runs]
    assert same == again
    client = tracking.make_client(uri)
    for key in ("train/loss", "val/loss", "val/acc1_ema"):
        assert history(client, runs[0].run_id, key) == history(client, runs[1].run_id, key)
    assert other["train/loss"] != same["train/loss"]  # the seed matters, so equality above means something


# ---------------------------------------------------------------- the tricks

def test_label_smoothing_changes_the_loss_on_a_fixed_batch():
    logits, y = torch.randn(8, 10, generator=torch.Generator().manual_seed(0)), torch.arange(8)
    plain = TrialModule(nn.Identity(), TrainConfig(), 10).criterion(logits, y)
    smooth = TrialModule(nn.Identity(), TrainConfig(label_smoothing=0.1), 10).criterion(logits, y)
    logp = logits.log_softmax(-1)
    assert plain == pytest.approx(float(-logp[range(8), y].mean()))
    assert smooth == pytest.approx(float(0.9 * -logp[range(8), y].mean() + 0.1 * -logp.mean()))


def test_mixup_mixes_inputs_and_targets_with_smoothing_folded_in():
    module = TrialModule(nn.Identity(), TrainConfig(mixup=0.4, label_smoothing=0.1), 10)
    assert isinstance(module.criterion, SoftTargetCrossEntropy)
    x, y = torch.randn(8, 3, 4, 4), torch.arange(8)
    np.random.seed(0)  # timm's Mixup draws lambda from numpy
    mixed, targets = module.mixup(x.clone(), y)
    lam = float(((mixed - x.flip(0)) / (x - x.flip(0))).median())  # each sample is paired with its mirror
    assert 0 < lam < 1
    assert torch.allclose(mixed, lam * x + (1 - lam) * x.flip(0), atol=1e-5)
    smooth = lambda labels: torch.full((8, 10), 0.01).scatter(1, labels[:, None], 0.91)  # noqa: E731
    assert torch.allclose(targets, lam * smooth(y) + (1 - lam) * smooth(y.flip(0)), atol=1e-6)

    cutmix = TrialModule(nn.Identity(), TrainConfig(cutmix=1.0), 10)
    _, targets = cutmix.mixup(torch.randn(8, 3, 8, 8), y)
    assert ((targets > 0) & (targets < 1)).any() and torch.allclose(targets.sum(1), torch.ones(8))


def test_ema_trails_the_live_weights_and_channels_last_reaches_the_model():
    cfg = tiny(ema=True, ema_decay=0.9, channels_last=True, epochs=1, limit_train_batches=3,
               limit_val_batches=1)
    module, data = build(cfg)
    start = {k: v.clone() for k, v in module.model.state_dict().items()}
    layouts = set()  # 3-channel NCHW input is not channels_last-contiguous: True means it was converted
    module.model.register_forward_pre_hook(
        lambda m, args: layouts.add(args[0].is_contiguous(memory_format=torch.channels_last)))
    make_trainer(cfg.train).fit(module, datamodule=data)

    live, ema = module.model.state_dict(), module.ema.module.state_dict()
    weights = [k for k, v in live.items() if v.is_floating_point() and v.ndim > 1]
    assert all(not torch.equal(live[k], ema[k]) for k in weights)  # EMA differs from the live weights
    assert any(not torch.equal(start[k], ema[k]) for k in weights)  # ... and it did move
    convs = [p for p in module.model.parameters() if p.ndim == 4]
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert layouts == {True}  # every batch, train and val


def test_bf16_mixed_runs_the_model_in_bfloat16_with_float32_weights():
    cfg = tiny(precision="bf16-mixed", epochs=1, limit_train_batches=2, limit_val_batches=1)
    module, data = build(cfg)
    dtypes = set()
    module.model.register_forward_hook(lambda m, args, out: dtypes.add(out.dtype))
    make_trainer(cfg.train).fit(module, datamodule=data)
    assert dtypes == {torch.bfloat16}  # Lightning's autocast reached every forward, train and val
    assert {p.dtype for p in module.model.parameters()} == {torch.float32}  # mixed: the weights stay float32


def test_compile_runs_the_training_steps_through_torch_compile(monkeypatch):
    graphs = []

    def keep_graph(gm, example_inputs):  # a torch.compile backend: dynamo's graph, run as traced (no codegen)
        graphs.append(gm)
        return gm.forward

    # inductor's C++ codegen takes minutes on these CPUs; what ablate decides is that the model is compiled
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(fn, **kw, backend=keep_graph))
    cfg = tiny(compile=True, ema=True, epochs=1, limit_train_batches=2, limit_val_batches=1)
    module, data = build(cfg)
    names = [n for n, _ in module.model.named_parameters()]
    torch.compiler.reset()
    try:
        make_trainer(cfg.train).fit(module, datamodule=data)
    finally:
        torch.compiler.reset()  # dynamo's caches are process-wide
    assert graphs  # the model's forward went through dynamo
    assert [n for n, _ in module.model.named_parameters()] == names  # compiled in place: names unchanged
    assert [n for n, _ in module.ema.module.named_parameters()] == names


@pytest.mark.parametrize("knob", ["drop_path_rate", "drop_rate"])
def test_stochastic_depth_and_dropout_act_in_train_mode_only(knob):
    x = torch.randn(4, 3, 16, 16)
    model = build_model(ModelConfig(backbone="test_resnet", **{knob: 0.5}), 10, 3, 16).model
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        nn.init.ones_(bn.weight)  # timm zero-inits each block's last BN: the dropped branch would start at 0
    with torch.no_grad():
        assert not torch.equal(model.train()(x), model(x))
        assert torch.equal(model.eval()(x), model(x))
        plain = build_model(ModelConfig(backbone="test_resnet"), 10, 3, 16).model.train()
        assert torch.equal(plain(x), plain(x))  # train-mode batch norm alone is deterministic


# ---------------------------------------------------------------- stopping

class PoisonWeights(pl.Callback):
    """NaN in every weight before the second batch of epoch 1 (global step 5)."""

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == 1:
            for p in module.model.parameters():
                p.data.fill_(float("nan"))


class PoisonBeforeValidation(pl.Callback):
    """NaN in every weight once epoch 0's training is done: its train loss is finite, its validation loss is not."""

    def on_validation_epoch_start(self, trainer, module):
        for p in module.model.parameters():
            p.data.fill_(float("nan"))


@pytest.mark.parametrize("case, overrides, callbacks, reason", [
    ("injected", {}, [PoisonWeights()], r"train/loss is nan at epoch 1, step 5"),
    ("lr", {"lr": 1e30, "schedule": "constant"}, [], r"train/loss is (nan|inf) at epoch 0, step \d+"),
    ("val", {}, [PoisonBeforeValidation()], r"val/loss is nan at epoch 0"),
])
def test_nan_loss_fails_the_run_with_the_reason(uri, case, overrides, callbacks, reason):
    experiment = f"diverged-{case}"
    with pytest.raises(DivergedError, match=reason):
        run_trial(tiny(uri, experiment, **overrides), callbacks=callbacks)
    client = tracking.make_client(uri)
    exp = client.get_experiment_by_name(experiment).experiment_id
    (run,) = client.search_runs([exp])
    assert run.info.status == "FAILED"
    assert run.data.tags["reason"].startswith(f"DivergedError: {'val' if case == 'val' else 'train'}/loss is")
    assert not client.search_runs([exp], "attributes.status = 'RUNNING'")
    if case == "injected":  # the epoch before the NaN is on record
        assert [s for s, _ in history(client, run.info.run_id, "val/acc1")] == [0]


def test_pruned_trial_is_killed_with_its_last_validation_recorded(uri):
    class PruneAtOnce(pl.Callback):
        def on_validation_end(self, trainer, module):
            raise optuna.TrialPruned(f"val/acc1 {float(trainer.callback_metrics['val/acc1']):.3f} at epoch 0")

    # the caller (the study runner) says which exceptions mean "stopped on purpose"
    with pytest.raises(optuna.TrialPruned):
        run_trial(tiny(uri, "pruned"), callbacks=[PruneAtOnce()], killed_by=(optuna.TrialPruned,))
    client = tracking.make_client(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("pruned").experiment_id])
    assert run.info.status == "KILLED" and run.data.tags["reason"].startswith("TrialPruned: val/acc1")
    assert [s for s, _ in history(client, run.info.run_id, "val/acc1")] == [0]


@pytest.mark.parametrize("section, bad", [
    ("data", {"name": "cifar10", "root": "no-such-folder"}),  # the data module checks the data is there
    ("model", {"backbone": "resnet_nope"}),
    ("train", {"devices": 3, "accelerator": "cpu"}),  # the batch of 64 does not split over 3 ranks
    ("train", {"devices": "2", "accelerator": "cpu"}),  # several devices are given by their number
])
def test_bad_config_raises_before_anything_is_tracked(tmp_path, section, bad):
    data = tiny().model_dump(exclude={"data": {"num_classes"}})  # synthetic's own key: cifar10 refuses it
    data[section].update(bad)
    with pytest.raises(AblateError):
        run_trial(TrialConfig.model_validate(data))  # default store: ./mlruns in this test's folder
    assert not (tmp_path / "mlruns").exists()
