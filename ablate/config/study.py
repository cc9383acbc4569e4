"""The study schema (what to vary, how to search, how many seeds), the launcher's, and Slurm's time grammar."""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag, field_validator

from ablate.config.base import Strict

# What a trial logs and a study may optimise (train.py logs these names). val/* measure the evaluated weights (the
# EMA's with train.ema and train.eval: ema), val/*_raw and val/*_ema each set of weights with train.ema only;
# test/* the dataset's own val/test split once training ends, with data.holdout only; val/acc5* only for more than
# 5 classes (top-5 of 5 is always 1)
METRICS = ("val/acc1", "val/acc5", "val/loss", "val/acc1_best", "val/acc1_ema", "val/acc5_ema", "val/loss_ema",
           "val/acc1_raw", "val/acc5_raw", "val/loss_raw", "test/acc1", "test/acc5", "test/loss",
           "train/loss", "train/throughput", "train/epoch_time", "train/peak_mem_mb", "train/lr", "model/params",
           "model/gmacs")
# a max over epochs on the split that chose it: a search may steer by it, a table may not report it
SELECTION_ONLY_METRICS = ("val/acc1_best",)


class Objective(Strict):
    metric: str
    direction: Literal["maximize", "minimize"] = "maximize"


class Range(Strict):
    low: float
    high: float
    step: float | None = Field(None, gt=0)
    log: bool = False
    type: Literal["int", "float"] = "float"


class SeedsOnDemand(Strict):
    """`seeds: {min: 2, max: 10, until: decided}`: every configuration runs seeds 0..min-1, then one more seed at a
    time while its verdict against its control is undecided, up to max seeds; the verdict spends its 5% over the
    looks min..max (Pocock's boundary, stats.pocock_alpha), so looking after every seed keeps it."""

    min: int = Field(2, ge=2, description="seeds every configuration runs (2: the fewest an interval needs)")
    max: int = Field(10, ge=2, description="the most seeds a configuration gets")
    until: Literal["decided"] = "decided"

    @field_validator("max")
    @classmethod
    def _not_below_min(cls, v, info):
        if v < info.data.get("min", 2):
            raise ValueError(f"max ({v}) is below min ({info.data['min']})")
        return v


class Confirm(Strict):
    """`confirm: {top: 3, seeds: 3}`: once a search's trials are done, its top configurations by mean, and the
    baseline, are trained again to the end on fresh seeds (seeds the search never used), never pruned; the table's
    means, deltas and verdicts for a search are these confirmation runs'."""

    top: int = Field(3, ge=0, description="configurations to confirm (0: none; the table then gives no verdicts)")
    seeds: int = Field(3, ge=2, description="fresh seeds each confirmed configuration is trained on")


# what a delta's 95% interval covers: the seeds' spread alone, or also the validation set's sampling error
INTERVALS = ("seeds", "seeds+images")


class Bound(Strict):
    min: float | None = None
    max: float | None = None


def by_shape(kind_of, **members) -> Any:
    """A union whose branch the input's shape picks (`kind_of(value)` -> a member's name), so that pydantic
    reports the errors of that branch alone: a wrong list of objectives is not also 'not a string'."""
    return Annotated[Union[tuple(Annotated[kind, Tag(name)] for name, kind in members.items())],
                     Discriminator(kind_of)]


def _list_or_not(value) -> str:
    return "list" if isinstance(value, list) else "other"


def _mapping_or_not(value) -> str:
    return "mapping" if isinstance(value, (dict, Strict)) else "other"


Metric = by_shape(_list_or_not, list=list[Objective], other=str)  # a metric's name, or objectives
# each listed seed becomes a train.seed: its bounds here, so a bad one is named where the user wrote it
ListedSeed = Annotated[int, Field(ge=0, le=2**32 - 1)]
Seeds = by_shape(_mapping_or_not, mapping=SeedsOnDemand, other=Annotated[list[ListedSeed], Field(min_length=1)])
SpaceValues = by_shape(_mapping_or_not, mapping=Range, other=list)  # a range, or choices


# study.constraints keys: a configuration's cost from its dry forward (*_delta_pct against the plain backbone) and
# from the micro-benchmark of its training step (step_cost.py: time over the plain backbone's, peak memory)
CONSTRAINTS = ("params_m", "gmacs", "params_delta_pct", "gmacs_delta_pct", "step_time_ratio", "peak_mem_mb")
STEP_CONSTRAINTS = ("step_time_ratio", "peak_mem_mb")


class StudySection(Strict):
    # a folder name for its checkpoints (255 bytes), with '.before-<time>' appended when set aside
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=128)
    metric: Metric = "val/acc1"
    direction: Literal["maximize", "minimize"] = "maximize"
    sampler: Literal["grid", "tpe", "random", "gp"] = "grid"
    pruner: Literal["none", "median", "hyperband", "asha"] = "none"
    trials: int | None = Field(None, ge=1, description="default: every grid cell x seed")
    seeds: Seeds = Field(default_factory=lambda: [0])
    constraints: dict[Literal[CONSTRAINTS], Bound] = Field(
        default_factory=dict, description="cost limits checked before a trial trains, e.g. params_m: {max: 1.3}")
    price_steps: bool = Field(True, description="time each configuration's training step against the plain "
                              "backbone's and measure its peak memory before training (step_cost.py)")
    warm_start: str | None = Field(None, description="a searched study's sampler starts from this earlier study's "
                                                     "finished trials (same storage)")
    ladder: bool = Field(False, description="cells are cumulative: each adds its keys to the previous one")
    baseline: str | None = Field(None, max_length=1000, description=(
        "the configuration every other is compared with: its row label ('attention=none', a ladder row's name) or "
        "key=value pairs ('attention=none, lr=0.1'; a search takes pairs only); default: a grid compares each cell "
        "with the plain cell of its other settings (else the first row), a search its confirmed rows with "
        "attention=none"))
    confirm: Confirm | None = Field(None, description="searches: confirm the top configurations on fresh seeds "
                                    "(default for a search: top 3 on 3 seeds; grids take no confirm)")
    interval: Literal[INTERVALS] = Field("seeds", description=(
        "seeds: a t interval over per-seed values; seeds+images: also the validation images' sampling error "
        "(per-image paired differences, accuracies only)"))
    adjust: Literal["holm", "none"] = Field("holm", description=(
        "the verdicts of the rows compared with one control (a ladder's steps) as a family: holm keeps the chance "
        "of any false better/worse at 5% (Holm 1979); none judges each at 95% alone"))
    min_effect: float | None = Field(None, gt=0, description=(
        "the smallest delta that matters (points), stated before the study: an interval inside +-min_effect is "
        "'equivalent' (two one-sided tests), and seeds on demand stop there too"))
    # PostgreSQL only: a worker silent this long is dead, and its trial is retried by another worker
    heartbeat_interval: int = Field(30, ge=1, description="seconds between a running trial's heartbeats")
    grace_period: int = Field(120, ge=1, description="seconds without a heartbeat before a trial is failed")
    # a minute, the outage: with the default heartbeats (30 s) and grace (120 s) a trial whose heartbeats an
    # outage paused is back (60 + 30 + an 8 s backoff step) before anyone may take it for dead and run it again
    db_outage_s: int = Field(60, ge=0, description=(
        "seconds a restarting database may be unreachable while workers wait and reconnect (keep db_outage_s + "
        "heartbeat_interval below grace_period: heartbeats pause too)"))

    @property
    def on_demand(self) -> SeedsOnDemand | None:
        return self.seeds if isinstance(self.seeds, SeedsOnDemand) else None

    @property
    def confirmation(self) -> Confirm:
        """The confirmation stage a search ends with (study.confirm, or the default top 3 on 3 seeds)."""
        return self.confirm or Confirm()

    @property
    def seed_list(self) -> list[int]:
        """Every seed a configuration may run: the list, or 0..max-1 on demand."""
        return list(range(self.seeds.max)) if self.on_demand else self.seeds

    @property
    def first_seeds(self) -> list[int]:
        """The seeds every configuration runs from the start: the list, or 0..min-1 on demand."""
        return list(range(self.seeds.min)) if self.on_demand else self.seeds
    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, v):
        twice = sorted({s for s in v if v.count(s) > 1}) if isinstance(v, list) else []
        if twice:  # a repeat of a seed is the same run again: it would count twice in n
            raise ValueError(f"seed {twice[0]} is listed twice; each seed is one repeat of every cell")
        return v

    def objectives(self) -> list[Objective]:
        if isinstance(self.metric, str):
            return [Objective(metric=self.metric, direction=self.direction)]
        return self.metric


LAUNCHER_NAMES = ("local", "slurm")  # ablate.launch.LAUNCHERS' keys


class LauncherConfig(Strict):
    """Where `ablate run --launcher slurm|local` runs the study's workers: one submitit job array, a worker per task.

    The keys are sbatch's (submitit passes them on); `sbatch` holds any other option as '--key=value' lines."""

    name: Literal[LAUNCHER_NAMES] | None = Field(None, description="default launcher; --launcher overrides it")
    workers: int = Field(1, ge=1, description="array tasks, each one worker process (one GPU each)")
    partition: str | None = None
    account: str | None = None
    gpus_per_task: int = Field(1, ge=0, description="0 on CPU-only partitions")
    cpus_per_task: int = Field(8, ge=1)
    mem: str | None = Field(None, description="memory per task as sbatch takes it, e.g. 64G")
    time: int | str = Field(1440, description="time limit per task: minutes, or sbatch's D-HH:MM:SS")
    signal_before_end_s: int = Field(120, ge=1, description="SIGUSR1 this long before the time limit")
    max_requeues: int = Field(10, ge=0, description="requeues after a time limit (preemptions are not counted)")
    sbatch: list[str] = Field(default_factory=list, description="more sbatch options, e.g. ['--qos=high']")
    setup: list[str] = Field(default_factory=list, description="shell lines run before a task (module load ...)")
    folder: str | None = Field(None, description="the jobs' scripts and logs; null = beside the tracking store")

    @field_validator("time")
    @classmethod
    def _slurm_time(cls, v):
        slurm_minutes(v)  # refuse what sbatch would refuse, now
        return v

    @field_validator("mem")
    @classmethod
    def _slurm_memory(cls, v):
        # sbatch --mem's grammar (a number, one unit letter): refused now, not once the job is queued
        if v is not None and not re.fullmatch(r"[0-9]+[KMGTkmgt]?", v):
            raise ValueError(f"{v!r} is not a memory size sbatch takes (a whole number with K, M, G or T, e.g. 64G)")
        return v

    @field_validator("sbatch")
    @classmethod
    def _sbatch_lines(cls, v):
        for line in v:
            if not re.fullmatch(r"--[a-z][a-z0-9-]*(=.+)?", line):
                raise ValueError(f"{line!r} is not an sbatch option of the form --key=value")
        return v


def slurm_minutes(time: int | str) -> int:
    """sbatch's time formats (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S) -> whole minutes, rounded up."""
    if isinstance(time, int):
        if time < 1:
            raise ValueError("a time limit is at least 1 minute")
        return time
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", time.strip())
    if not m:
        raise ValueError(f"{time!r} is not a time limit (minutes, or D-HH:MM:SS as sbatch takes it)")
    days, a, b, c = (int(g) if g else None for g in m.groups())
    if days is not None:  # D-H, D-H:M, D-H:M:S
        seconds = days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    elif c is not None:  # H:M:S
        seconds = a * 3600 + b * 60 + c
    else:  # M or M:S
        seconds = a * 60 + (b or 0)
    if seconds < 60:
        raise ValueError("a time limit is at least 1 minute")
    return -(-seconds // 60)


class StudyConfig(Strict):
    study: StudySection
    launcher: LauncherConfig = Field(default_factory=LauncherConfig)
    base: dict = Field(default_factory=dict, description="the trial config every trial starts from")
    include: list[str] = Field(default_factory=list, description="search_spaces/*.yaml files merged into space")
    space: dict[str, SpaceValues] = Field(default_factory=dict, description="dotted key -> choices or range")
    cells: list[dict] = Field(default_factory=list, description="explicit configurations (dotted key -> value)")
    reference: list[dict] = Field(default_factory=list, description="published numbers: {match: {...}, column: value}")
