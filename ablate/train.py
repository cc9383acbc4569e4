"""One trial, top to bottom: a timm backbone trained by Lightning with timm's tricks, tracked in MLflow.

Lightning's split, kept: the LightningModule holds what is learned and measured (loss, EMA, accuracy as
torchmetrics objects that Lightning computes and resets), callbacks measure the epoch and make the trial
durable (checkpoint.py: a checkpoint at epoch ends and after the batch a stop signal came in, so a killed or
preempted trial resumes where it was), and a small Lightning logger writes each phase's metrics to the
trial's MLflow run in one batch (SQLite is slow per call), with step = epoch. The run itself belongs to
`tracking.tracked_run`, so it always ends FINISHED, FAILED (with the reason) or KILLED, and bad input is refused
before the store is touched. Lightning's log level and warning filters are set for the trial only: importing
ablate changes nothing in a notebook.

Every trick is a TrainConfig key and timm's implementation: create_optimizer_v2 (no weight decay on
biases and norms), create_scheduler_v2 stepped per update, the criterion train.loss names (losses.py: timm's
cross-entropy or BinaryCrossEntropy, on Mixup/CutMix's soft targets when they are on), ModelEmaV3. Stochastic
depth and dropout are model keys (timm.create_model); precision (Lightning's mixed precision), channels_last and
compile (torch.compile) are train keys. val/loss is cross-entropy on the evaluated logits whatever train.loss is.

What a trial measures: val/* are the evaluated weights (the EMA's with train.ema under train.eval: ema, as timm's
train.py selects on them; val/*_raw and val/*_ema then each set) on the split selection sees (a data.holdout, else
the dataset's val split). Once training ends, evaluate.py scores the evaluated weights once on the split the table
reports (the dataset's own val/test split): each image's correctness (TrialResult.correct) and, with a holdout,
test/*.
"""
from __future__ import annotations

import logging
import os
import tempfile
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from mlflow import MlflowClient
from pytorch_lightning.callbacks import Checkpoint
from pytorch_lightning.loggers import Logger
from pytorch_lightning.plugins.environments import LightningEnvironment
from pytorch_lightning.strategies import DDPStrategy
from timm.data import Mixup
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, distribute_bn
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.aggregation import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from ablate import tracking
from ablate.checkpoint import AtomicCheckpointIO, Resume, TrialCheckpoint, config_digest, remove
from ablate.config import TrainConfig, TrialConfig, flatten
from ablate.correct import pack_correct
from ablate.data import build_datamodule
from ablate.device_flags import apply_determinism, trial_flags, wants_determinism
from ablate.distributed import followers, world
from ablate.divergence import DivergedError, DivergenceWatch
from ablate.epoch_stats import EpochStats
from ablate.errors import AblateError, one_line
from ablate.evaluate import FinalScore, score_split
from ablate.interrupt import StopOnInterrupt, deferred_interrupt, interruption
from ablate.logged_model import log_trial_model, signature
from ablate.losses import training_criterion
from ablate.models import BuiltModel, build_model
from ablate.system_metrics import system_metrics
from ablate.track_inputs import log_datasets

__all__ = ["DivergedError", "TrialResult", "TrialModule", "EpochStats", "MLflowEpochLogger", "make_trainer",
           "run_trial"]


@dataclass
class TrialResult:
    run_id: str
    metrics: dict[str, float] = field(default_factory=dict)  # final value of every logged metric
    best_acc1: float | None = None  # best val/acc1 over epochs; None when validation never ran
    status: str = "FINISHED"
    # each image's top-1 correctness on the reported split (the test split with data.holdout, else val), by the
    # final evaluated weights: correct.pack_correct's string (unpack_correct reads it); None without validation
    correct: str | None = None


def accuracy(num_classes: int, postfix: str = "") -> MetricCollection:
    # top-5 of 5 or fewer classes is always 1: not logged rather than logged as a constant
    ks = {"acc1": 1, "acc5": 5} if num_classes > 5 else {"acc1": 1}
    # validate_args off: its check counts the targets' unique values, a host-device sync in every validation step
    return MetricCollection({name: MulticlassAccuracy(num_classes, top_k=k, average="micro", validate_args=False)
                             for name, k in ks.items()}, prefix="val/", postfix=postfix)


def weights_scored(cfg: TrainConfig) -> dict[str, str]:
    """val/*'s postfixes and the weights ("raw" or "ema") each measures: "" the evaluated ones (train.eval)."""
    if not cfg.ema:
        return {"": "raw"}
    if cfg.eval == "raw":
        return {"": "raw", "_ema": "ema"}
    return {"": "ema", "_raw": "raw", "_ema": "ema"}  # val/*_ema still logged: older study files read them


EVALUATED = "evaluated"  # the metric objects of val/* without a postfix


def metric_set(postfix: str) -> str:
    """The name of a postfix's metric objects in a ModuleDict (which takes no empty name)."""
    return postfix.lstrip("_") or EVALUATED


class TrialModule(pl.LightningModule):
    def __init__(self, model: nn.Module, cfg: TrainConfig, num_classes: int):
        super().__init__()
        self.cfg = cfg
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        # timm folds label smoothing into mixup's soft targets; without mixup it smooths the loss itself
        self.mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, num_classes=num_classes,
                           label_smoothing=cfg.label_smoothing) if cfg.mixup or cfg.cutmix else None
        self.criterion = training_criterion(cfg, soft_targets=self.mixup is not None)  # train.loss (losses.py)
        self.ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema else None
        if self.ema is not None:
            self.ema.requires_grad_(False)  # averaged, never trained
        self.scored = weights_scored(cfg)  # the EMA's are the evaluated weights by default, as timm's train.py has it
        self.accs = nn.ModuleDict({metric_set(postfix): accuracy(num_classes, postfix) for postfix in self.scored})
        # metric objects, not logged values: on several devices they average over every rank's samples
        # nan_strategy "disable": a NaN batch makes the mean NaN (the trial fails) instead of being dropped unseen
        self.losses = nn.ModuleDict({metric_set(p): MeanMetric(nan_strategy="disable") for p in self.scored})
        self.best_acc1 = MaxMetric()  # logged by value: Lightning resets the metric objects it is given
        self.best_acc1.persistent(True)  # in the checkpoint: a resumed trial keeps its best epoch
        # persistent: an epoch resumed mid-way still averages all its batches; no NaN check (a sync): DivergenceWatch
        self.train_loss = MeanMetric(nan_strategy="disable")
        self.train_loss.persistent(True)
        self.divergence = DivergenceWatch()  # a NaN loss caught without making the host wait for the device
        if cfg.compile:  # in place: parameter names and the EMA copy stay as they are
            model.compile(mode=None if cfg.compile is True else cfg.compile)

    def forward(self, x):
        return self._logits(self.model, x)

    @property
    def evaluated(self) -> nn.Module:
        """The weights val/* measure, and the final score (evaluate.py): the EMA's under train.eval: ema."""
        return self.weights(self.scored[""])

    def weights(self, which: str) -> nn.Module:
        return self.ema.module if which == "ema" else self.model

    def evaluated_logits(self, x):
        return self._logits(self.evaluated, x)

    def _logits(self, model: nn.Module, x):
        if self.cfg.channels_last:  # the input in the weights' layout, or each conv converts it back
            x = x.contiguous(memory_format=torch.channels_last)
        return model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.mixup is not None:
            n = len(y) // 2 * 2  # timm's Mixup pairs each sample with its mirror: even batches only
            x, y = self.mixup(x[:n], y[:n])
        loss = self.criterion(self(x), y)
        self.divergence.update(loss, self.current_epoch, self.global_step)  # a NaN would poison every later epoch
        self.train_loss.update(loss.detach(), weight=batch_weight(y))
        return loss

    def on_validation_start(self):
        self.divergence.check()  # diverged weights are not validated: the trial fails with the training loss's reason

    def on_save_checkpoint(self, checkpoint):
        self.divergence.check()  # nor saved: the checkpoint before the divergence stays the one to resume from

    def on_train_epoch_end(self):
        self.divergence.check()
        # computed and reset here, before an epoch-end checkpoint (which comes after this hook) is written
        self.log("train/loss", self.train_loss.compute(), prog_bar=True)
        self.train_loss.reset()
        if self.trainer.world_size > 1:  # each rank's BatchNorm statistics saw its own shard: average them (timm's)
            distribute_bn(self.model, self.trainer.world_size, reduce=True)
            if self.ema is not None:
                distribute_bn(self.ema.module, self.trainer.world_size, reduce=True)

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:  # with the step, so a checkpoint written after this batch holds its update
            self.ema.update(self.model, step=self.global_step + 1)  # Lightning counts the step once this returns

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = {which: self._logits(self.weights(which), x) for which in dict.fromkeys(self.scored.values())}
        for postfix, which in self.scored.items():
            loss, acc = self.losses[metric_set(postfix)], self.accs[metric_set(postfix)]
            loss.update(F.cross_entropy(logits[which], y), weight=batch_weight(y))
            self.log(f"val/loss{postfix}", loss, on_epoch=True)
            acc.update(logits[which], y)
            self.log_dict(acc, on_epoch=True, prog_bar=not postfix)  # Lightning computes and resets them at the end

    def on_validation_epoch_end(self):
        loss = self.losses[EVALUATED].compute()  # cached like acc1's: Lightning's own call at the epoch's end reuses it
        if not torch.isfinite(loss):  # a finite train loss with a NaN val loss is divergence too, not a result
            raise DivergedError(f"val/loss is {loss.item()} at epoch {self.current_epoch}")
        self.best_acc1(self.accs[EVALUATED]["acc1"].compute())  # compute() caches: Lightning's own call reuses it
        self.log("val/acc1_best", self.best_acc1.compute(), prog_bar=True)

    def configure_optimizers(self):
        cfg = self.cfg
        optimizer = create_optimizer_v2(self.model, cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                        momentum=cfg.momentum)
        # per-update stepping: warmup and decay stay smooth even for trials of a few epochs
        # estimated_stepping_batches honours limit_train_batches
        per_epoch = max(1, self.trainer.estimated_stepping_batches // cfg.epochs)
        scheduler, _ = create_scheduler_v2(optimizer, sched=cfg.schedule, num_epochs=cfg.epochs,
                                           decay_epochs=cfg.decay_epochs, decay_milestones=cfg.decay_milestones,
                                           decay_rate=cfg.decay_rate,
                                           min_lr=cfg.min_lr, warmup_epochs=cfg.warmup_epochs,
                                           step_on_epochs=False, updates_per_epoch=per_epoch)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def lr_scheduler_step(self, scheduler, metric):
        scheduler.step_update(num_updates=self.global_step)  # timm schedulers take the update count


def batch_weight(y: torch.Tensor) -> torch.Tensor:
    """A batch's size as a tensor made on its device (a Python number would be copied there, host-synchronously)."""
    return torch.full((), len(y), dtype=torch.float32, device=y.device)


class MLflowEpochLogger(Logger):
    """Lightning's logger into a trial's MLflow run: one log_batch per phase and epoch, step = epoch.

    Lightning calls it once when validation ends (before any on_validation_end, so a trial pruned there keeps
    that epoch) and once when the training epoch ends. Not Lightning's MLFlowLogger: that one logs at the
    global step, and its finalize ends the run, which here is tracking.tracked_run's job (with the reason).
    """

    def __init__(self, client: MlflowClient, run_id: str):
        super().__init__()
        self.client, self.run_id = client, run_id

    @property
    def name(self) -> str:
        return "mlflow"

    @property
    def version(self) -> str:
        return self.run_id

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass  # the params are the resolved trial config, which run_trial logs before training

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        metrics = dict(metrics)
        # Lightning adds the epoch to its epoch-end calls; its own step counts optimizer updates
        tracking.log_metrics(self.client, self.run_id, metrics, int(metrics.pop("epoch", step)))


STEP_PRICE = ("step_time_ratio", "peak_mem_mb")  # of step_cost.StepPrice, logged as model/*


def ranks(cfg: TrainConfig) -> int:
    """The processes a trial runs as: one per device (train.devices: N)."""
    return cfg.devices if isinstance(cfg.devices, int) else 1


def make_trainer(cfg: TrainConfig, callbacks=()) -> pl.Trainer:
    """Lightning checks accelerator, devices and precision here, before anything is tracked.

    Several devices are one DDP trial whose ranks ablate starts itself (distributed.py), so Lightning is told the
    processes exist (LightningEnvironment); on one device it keeps Lightning away from a Slurm task's SIGUSR1."""
    durable = any(isinstance(c, Checkpoint) for c in callbacks)
    environment = LightningEnvironment()
    n = ranks(cfg)
    strategy = "auto" if n == 1 else DDPStrategy(
        cluster_environment=environment, timeout=timedelta(seconds=cfg.ddp_timeout_s),
        broadcast_buffers=False)  # BatchNorm statistics are averaged at each epoch's end instead (timm's way)
    try:
        trainer = pl.Trainer(
            max_epochs=cfg.epochs, accelerator=cfg.accelerator, devices=cfg.devices, precision=cfg.precision,
            strategy=strategy, use_distributed_sampler=False,  # the datamodule shards its own batches
            limit_train_batches=cfg.limit_train_batches, limit_val_batches=cfg.limit_val_batches,
            val_check_interval=cfg.val_every,  # validations inside an epoch: what a pruner sees of a short trial
            enable_progress_bar=cfg.progress_bar, enable_model_summary=False,
            logger=False,  # run_trial adds the MLflow logger once the run exists
            enable_checkpointing=durable,  # never Lightning's default ModelCheckpoint: ours or none
            plugins=[AtomicCheckpointIO()] + ([environment] if n == 1 else []), num_sanity_val_steps=0,
            callbacks=list(callbacks))
    except Exception as e:  # Lightning's MisconfigurationException and ValueErrors: bad input, one line
        raise AblateError(f"train: {one_line(e)}") from None
    # torch's flags for the device (device_flags.py), set here rather than by Lightning, which would not restore them
    apply_determinism(wants_determinism(cfg.deterministic, trainer.strategy.root_device.type),
                      trainer.strategy.root_device.type)
    if n > 1:  # Lightning's DDP SIGTERM: a broadcast in its handler (rank 0) matched by one per step on every rank,
        # read back each step (a host-device sync on NCCL); rank 0 takes the signals here (interrupt.py) and
        # distributed.StopVote carries them to every rank without a wait, so both of Lightning's halves go
        trainer.fit_loop.epoch_loop._broadcast_sigterm_tensor = lambda: None
        trainer._signal_connector._sigterm_notifier_fn = lambda signum, frame: None
    if trainer.num_devices != n:
        raise AblateError(f"train.devices: {cfg.devices!r} is {trainer.num_devices} devices; give a trial on several "
                          "devices their number (train.devices: 2)")
    return trainer


@contextmanager
def quiet_lightning():
    """Lightning's info lines and known-harmless warnings, silenced for one trial; then the caller's again."""
    log = logging.getLogger("pytorch_lightning")
    level = log.level
    # Lightning's info lines (GPU available, tips, "fit stopped") would bury the study's own progress lines
    log.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*treespec, LeafSpec.*")  # a deprecation inside Lightning
            # in-memory datasets batch in the main process on purpose (num_workers=0 is not a mistake)
            warnings.filterwarnings("ignore", ".*does not have many workers.*")
            # the EMA copy lives in eval mode on purpose
            warnings.filterwarnings("ignore", r".*module\(s\) in eval mode at the start of training.*")
            # metrics are logged per epoch: Lightning's per-step logging interval does not apply
            warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
            # the datamodule's own state resumes the epoch's order (data.ResumableBatchSampler), not the loader's
            warnings.filterwarnings("ignore", ".*your dataloader is not resumable.*")
            # several devices: the epoch's metrics are torchmetrics objects that gather every rank's samples, the
            # rest are rank 0's own measurements (throughput already counts all ranks)
            warnings.filterwarnings("ignore", ".*sync_dist=True.*")
            # rank-local BatchNorm buffers during the epoch are what we want (averaged at its end, as timm does)
            warnings.filterwarnings("ignore", ".*`broadcast_buffers` is deprecated.*")
            # a trial is one process ablate started (its ranks too, distributed.py); a launched study's tasks already
            # run under srun (submitit's sbatch script): Lightning's advice to prepend srun is wrong for both
            warnings.filterwarnings("ignore", ".*The `srun` command is available on your system but is not used.*")
            yield
    finally:
        log.setLevel(level)


@dataclass
class TrialParts:
    """What every rank of a trial builds alike."""

    data: pl.LightningDataModule
    built: BuiltModel  # the model, its size and its insertion report
    module: TrialModule
    durable: list[TrialCheckpoint]  # the checkpoint callback, when the trial saves one
    trainer: pl.Trainer

    def fit(self, resume: Resume | None) -> None:
        try:
            self.trainer.fit(self.module, datamodule=self.data, ckpt_path=resume and resume.path,
                             weights_only=True)  # a shared folder's file: data only (AtomicCheckpointIO insists)
        except SystemExit:  # Lightning turns a KeyboardInterrupt into sys.exit(1); callers need to see it
            if self.trainer.interrupted:
                raise interruption() from None
            raise

    def final_score(self) -> FinalScore | None:
        """The evaluated weights on the reported split once training is over (rank 0); None without validation."""
        module, trainer = self.module, self.trainer
        if module.cfg.limit_val_batches == 0:  # validation off (a throughput benchmark): nothing is scored
            return None
        return score_split(module, module.evaluated_logits, self.data.reported_dataloader(), self.data.transform_batch,
                           trainer.strategy.root_device, self.data.num_classes, module.cfg.limit_val_batches,
                           trainer.precision_plugin.val_step_context())


def _setup(cfg: TrialConfig, callbacks, checkpoint: Path | None, owner: dict, rank: int = 0) -> TrialParts:
    """What every rank builds alike: the data, the model, its LightningModule and the trainer."""
    pl.seed_everything(cfg.train.seed + rank, workers=True, verbose=False)  # ranks draw dropout and mixup apart
    data = build_datamodule(cfg.data, cfg.train.seed)  # train.seed draws the order under data.order: seed
    if data.cfg.batch_size % ranks(cfg.train):
        raise AblateError(f"data.batch_size: {cfg.data.batch_size} does not split over {ranks(cfg.train)} devices "
                          "(train.devices; the batch size is the whole step's, as papers give it)")
    built = build_model(cfg.model, data.num_classes, data.in_chans, data.image_size, data.test_size)
    module = TrialModule(built.model, cfg.train, data.num_classes)
    durable = ([TrialCheckpoint(checkpoint, cfg.train.checkpoint_every, owner)]
               if checkpoint is not None and cfg.train.checkpoint_every else [])
    # a durable trial's checkpoint callback stops it once the checkpoint is written
    trainer = make_trainer(cfg.train, [EpochStats(), *callbacks, *(durable or [StopOnInterrupt()])])
    return TrialParts(data, built, module, durable, trainer)


def follow_trial(cfg: TrialConfig, callbacks, checkpoint: Path | None, resume: Resume | None,
                 stopped_by: tuple[type[BaseException], ...]) -> None:
    """Ranks 1..N-1 of a multi-device trial (distributed.followers runs this): the same training, untracked;
    the stops rank 0 broadcasts (a prune, a signal) end it quietly."""
    with quiet_lightning(), trial_flags(bool(cfg.train.compile)):
        parts = _setup(cfg, callbacks, checkpoint, {}, rank=int(os.environ["LOCAL_RANK"]))
        try:
            parts.fit(resume)
        except stopped_by + (KeyboardInterrupt,):
            pass


def run_trial(cfg: TrialConfig, *, callbacks=(), parent_run_id: str | None = None, tags: dict | None = None,
              killed_by: tuple[type[BaseException], ...] = (), checkpoint: Path | None = None,
              resume: Resume | None = None, owner: dict | None = None, run_name: str | None = None,
              cost: dict | None = None) -> TrialResult:
    """Train one config and record it as an MLflow run (a child of `parent_run_id` when given).

    Bad input raises AblateError before the store is touched; once the run exists it always ends
    FINISHED, FAILED (reason tag, e.g. DivergedError) or KILLED (Ctrl-C, preemption, or an exception in
    `killed_by`: the study runner passes optuna.TrialPruned). With `checkpoint` the trial saves its resume
    checkpoint there (`owner` says whose it is); `resume` (checkpoint.resume_point) continues from one, in a
    new run that takes over the earlier run's epochs. `run_name` names the run (the study's names say what it is)
    over `tracking.run_name`, without entering the config (a resumed trial's checkpoint must still be its own).
    `cost`: the study's price of the configuration's step (step_cost.StepPrice's fields), logged beside its size.
    """
    n = ranks(cfg.train)
    with (deferred_interrupt(), quiet_lightning(), trial_flags(bool(cfg.train.compile)),
          (world(n) if n > 1 else nullcontext()) as rendezvous):
        whose = {"digest": config_digest(cfg), **(owner or {})}  # the run id joins once the run exists
        parts = _setup(cfg, callbacks, checkpoint, whose)
        built = parts.built
        # the other ranks' callbacks: what rank 0's decide, they follow (PruningCallback.follower)
        following = [c.follower() for c in callbacks if hasattr(c, "follower")]

        client = tracking.make_client(cfg.tracking.uri)
        experiment_id = tracking.get_or_create_experiment(client, cfg.tracking.experiment)
        if resume is not None:
            tags = (tags or {}) | {tracking.Tag.RESUMED_AT_EPOCH: str(resume.epoch)}
        with tracking.tracked_run(client, experiment_id, killed_by=killed_by,
                                  run_name=run_name or cfg.tracking.run_name,
                                  parent_run_id=parent_run_id, tags=tags) as run_id, \
                system_metrics(run_id, client.tracking_uri, cfg.tracking.system_metrics):
            size = {"model/params": built.params, "model/gmacs": built.gmacs,
                    **{f"model/{k}": cost[k] for k in STEP_PRICE if cost and k in cost}}
            tracking.log_params(client, run_id, flatten(cfg) | {"model.num_params": built.params,
                                                                "model.gmacs": built.gmacs})
            tracking.log_metrics(client, run_id, size, 0)
            tracking.log_trial_artifacts(client, run_id, cfg.model_dump(mode="json"), built.report)
            log_datasets(client, run_id, parts.data.splits())
            if resume is not None and resume.run_id:
                tracking.continue_history(client, run_id, resume.run_id, before=resume.epoch)
            for callback in parts.durable:
                callback.owner["run_id"] = run_id
            parts.trainer.logger = MLflowEpochLogger(client, run_id)
            ranks_running = (followers(rendezvous, follow_trial, cfg, following, checkpoint, resume, killed_by)
                             if rendezvous else nullcontext())
            try:
                with ranks_running:
                    parts.fit(resume)
            except killed_by:  # pruned: the trial is over, nothing to resume
                remove(checkpoint)
                raise
            final = parts.final_score()
            if final is not None and cfg.data.holdout is not None:  # val/* measured the holdout: the table's split
                tracking.log_metrics(client, run_id, final.metrics("test/"), cfg.train.epochs - 1)
            if cfg.tracking.log_weights:  # the weights val/* and the final score measured (the EMA's, by default)
                log_weights(client, run_id, parts.module.evaluated)
                log_trial_model(client, run_id, parts.module.evaluated, signature(
                    parts.data.in_chans, parts.data.test_size, parts.data.num_classes), cfg.train.epochs - 1)
        remove(checkpoint)  # finished: the weights are the run's model.pt and its MLflow model
        # the last value of each metric the run holds (a resumed run's include its predecessor's epochs); the
        # machine's system/* samples are no result
        metrics = {k: float(v) for k, v in client.get_run(run_id).data.metrics.items()
                   if not k.startswith(tracking.SYSTEM)}
    return TrialResult(run_id, metrics, metrics.get("val/acc1_best"),
                       correct=None if final is None else pack_correct(final.correct))


def log_weights(client: MlflowClient, run_id: str, model: nn.Module) -> None:
    """The evaluated weights' state_dict as the run's model.pt artifact (rebuild from config.yaml, then load it)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / tracking.WEIGHTS
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)
        client.log_artifact(run_id, str(path))
