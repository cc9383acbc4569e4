"""Trial config: the validated schema (pydantic), YAML loading, dotted overrides, one-line errors.

Light on purpose (no torch import): the CLI validates configs before anything heavy loads, so bad
input fails fast and touches no store.
"""
from __future__ import annotations

import copy
import difflib
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ablate.errors import AblateError

POSITIONS = ("block", "block_out", "stage", "stem", "head", "conv", "pattern")
# data.name -> its classes, known without loading it (None: data.num_classes says); the datamodules are in data.py
DATASETS = {"digits": 10, "cluttered-digits": 10, "synthetic": None, "cifar10": 10, "cifar100": 100,
            "imagefolder": None}
MODULE_KEY = "model.attention.name"  # the dotted key of a trial's attention module
KNOB_PREFIX = "model.attention.knobs."  # dotted keys under it are the module's knobs
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "lamb", "lars", "rmsprop", "nadam", "radam")


SEED = Field(0, ge=0, le=2**32 - 1, description="numpy's and Lightning's seeds are unsigned 32-bit")


class Strict(BaseModel):
    # .inf and .nan are never a sensible setting (a min_lr of inf trains; a range to inf never ends)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class AttentionSpec(Strict):
    """Which module goes where: `name: none` is the plain backbone."""

    name: str = "none"
    position: Literal[POSITIONS] | None = Field(None, description="null = where the module's paper puts it "
                                                "(ablate modules), block when it names no place")
    stages: list[int] | None = Field(None, description="1-based stages to touch, as papers count; null = all")
    every: int = Field(1, ge=1, description="every n-th block within a stage")
    pattern: str | None = Field(None, description="module-path glob for position: pattern")
    init: Literal["default", "identity"] = "default"
    knobs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("stages")
    @classmethod
    def _positive_stages(cls, v):
        if v is not None and (not v or any(s < 1 for s in v)):
            raise ValueError("stages are 1-based and non-empty, e.g. [3, 4]")
        return v


class ModelConfig(Strict):
    backbone: str = "resnet18"
    pretrained: bool = False
    checkpoint: str | None = Field(None, description="local weights file, for machines without a network")
    attention: AttentionSpec = Field(default_factory=AttentionSpec)
    drop_rate: float = Field(0.0, ge=0, lt=1, description="dropout before the classifier")
    drop_path_rate: float = Field(0.0, ge=0, lt=1, description="stochastic depth")


class DataConfig(Strict):
    name: Literal[tuple(DATASETS)] = "cluttered-digits"
    root: str | None = Field(None, description="dataset folder for cifar10/cifar100/imagefolder")
    download: bool = False
    image_size: int = Field(64, ge=8, le=2048, description="beyond 2048 px a batch no longer fits any accelerator")
    batch_size: int = Field(64, ge=1)
    num_workers: int = Field(0, ge=0)
    on_device: bool = Field(True, description="in-memory datasets live on the accelerator (no copy per batch); "
                            "imagefolder batches travel as uint8 and are normalised on the device")
    train_size: int | None = Field(None, ge=1, description="samples in the train split; null = dataset default")
    val_size: int | None = Field(None, ge=1)
    clutter: int = Field(4, ge=0, description="cluttered-digits: fragments per canvas")
    num_classes: int = Field(10, ge=2, description="synthetic and imagefolder (the folders' classes) only")
    auto_augment: str | None = Field(None, description="timm spec: 'rand-m9-mstd0.5' (RandAugment), 'original'")
    hflip: float = Field(0.0, ge=0, le=1)
    seed: int = SEED

    @property
    def class_count(self) -> int:
        """How many classes the model predicts: the dataset's own count, else data.num_classes."""
        return DATASETS.get(self.name) or self.num_classes


class TrainConfig(Strict):
    epochs: int = Field(10, ge=1)
    optimizer: Literal[OPTIMIZERS] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["cosine", "step", "multistep", "constant"] = "cosine"
    warmup_epochs: int = Field(0, ge=0)
    min_lr: float = Field(0.0, ge=0)
    decay_epochs: int = Field(30, ge=1, description="step schedule: epochs between decays")
    decay_milestones: list[int] = Field([30, 60, 90], min_length=1, description="multistep schedule: the epochs where lr decays")
    decay_rate: float = Field(0.1, gt=0, le=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    mixup: float = Field(0.0, ge=0, description="mixup alpha (0 = off)")
    cutmix: float = Field(0.0, ge=0, description="cutmix alpha (0 = off)")
    ema: bool = False
    ema_decay: float = Field(0.999, gt=0, lt=1)
    precision: Literal["32", "32-true", "bf16-mixed", "16-mixed"] = "32"
    accelerator: str = "auto"
    devices: int | str = Field(1, description="N > 1: one trial on N devices (DDP; N processes on CPU, with gloo)")
    ddp_timeout_s: int = Field(600, ge=10, description="the longest a rank waits for the others (a dead rank)")
    channels_last: bool = False
    compile: bool = False
    seed: int = SEED
    limit_train_batches: int | float | None = Field(None, description="batches per epoch (int >= 1) or a fraction")
    limit_val_batches: int | float | None = None
    val_every: float = Field(1.0, gt=0, le=1, description="validate every this fraction of an epoch (0.25: four "
                             "times), so that a pruner can stop a short trial inside an epoch")
    progress_bar: bool = True
    checkpoint_every: int = Field(1, ge=0, description="epochs between the trial's resume checkpoints; 0 = none")
    checkpoint_dir: str | None = Field(None, description="where resume checkpoints live; null = beside the "
                                                         "tracking store (mlruns/checkpoints)")

    @field_validator("limit_train_batches", "limit_val_batches")
    @classmethod
    def _batches(cls, v, info):
        if info.field_name == "limit_val_batches" and v == 0 and not isinstance(v, bool):
            return v  # Lightning's way to turn validation off (throughput benchmarks); a study then has no metric
        if v is not None and not (isinstance(v, int) and v >= 1 or isinstance(v, float) and 0 < v <= 1):
            raise ValueError(f"{v!r} is neither a number of batches (an integer >= 1) nor a fraction in (0, 1]")
        return v


class TrackingConfig(Strict):
    uri: str | None = Field(None, description="MLflow tracking URI; default sqlite:///mlruns/mlflow.db")
    experiment: str = "ablate"
    run_name: str | None = None
    log_weights: bool = Field(True, description="save the trained state_dict as the run's model.pt (Grad-CAM)")


class TrialConfig(Strict):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)


# ---------------------------------------------------------------- loading and errors

# a study, trial or search space file is a few KiB: anything far bigger or deeper is a mistake or an attack
MAX_YAML_BYTES = 1 << 20
MAX_YAML_DEPTH = 64  # nesting levels of lists and mappings
MAX_YAML_NODES = 100_000  # values after aliases are expanded (an alias "billion laughs" stops here)


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with limits on depth and expanded size, and duplicate keys refused."""

    depth = 0

    def fetch_flow_collection_start(self, TokenClass):
        if self.flow_level >= MAX_YAML_DEPTH:  # '[[[[...': stopped in the scanner, whose simple-key bookkeeping
            raise AblateError(f"line {self.line + 1}: nested deeper than {MAX_YAML_DEPTH} levels "  # is quadratic
                              "(the limit for a config file)")
        super().fetch_flow_collection_start(TokenClass)

    def compose_node(self, parent, index):
        self.depth += 1
        try:
            if self.depth > MAX_YAML_DEPTH:  # block nesting: indentation levels
                raise AblateError(f"line {self.peek_event().start_mark.line + 1}: nested deeper than "
                                  f"{MAX_YAML_DEPTH} levels (the limit for a config file)")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_document(self, node):
        count, todo = 0, [node]
        while todo:  # every value as often as aliases repeat it, without building anything
            count += 1
            if count > MAX_YAML_NODES:
                raise AblateError(f"more than {MAX_YAML_NODES} values once aliases are expanded "
                                  "(the limit for a config file)")
            item = todo.pop()
            if isinstance(item, yaml.SequenceNode):
                todo.extend(item.value)
            elif isinstance(item, yaml.MappingNode):
                todo.extend(n for pair in item.value for n in pair)
        return super().construct_document(node)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # '<<: *defaults' may be overridden on purpose
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in first:
                        raise AblateError(f"line {line}: duplicate key {key!r} (first at line {first[key]}); "
                                          "keep one")
                    first[key] = line
                except TypeError:
                    pass  # an unhashable key: PyYAML's own error says so
        return super().construct_mapping(node, deep)


def read_yaml(path: Path, text: str | None = None):
    """The YAML document in `path` (or `text`, read from it) under _Loader's limits; errors name the file."""
    try:
        if text is None:
            if path.stat().st_size > MAX_YAML_BYTES:
                raise AblateError(f"{path.stat().st_size} bytes, more than the {MAX_YAML_BYTES} a config file may have")
            text = decode(path.read_bytes())
        return yaml.load(text, Loader=_Loader)
    except AblateError as e:
        raise AblateError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise AblateError(f"{path}: YAML syntax error{at}: {problem}") from None


def decode(raw: bytes) -> str:
    """UTF-8 text (a UTF-8 byte-order mark is dropped); anything else is refused with where it went wrong."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise AblateError("UTF-16 text (it starts with a UTF-16 byte-order mark); save it as UTF-8")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise AblateError(f"not UTF-8 text (byte 0x{raw[e.start]:02x} at line {line}, column {column}); "
                          "save it as UTF-8") from None


def load_yaml(path: str | Path) -> dict:
    """Safe-load a YAML mapping; syntax errors become one line with the file and position."""
    path = Path(path)
    if not path.is_file():
        raise AblateError(f"{path}: no such file")
    data = read_yaml(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise AblateError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def apply_overrides(data: dict, overrides: list[str], source: str = "command line", nested: bool = True) -> dict:
    """Return a copy of `data` with `a.b.c=value` overrides applied (values parsed as YAML).

    nested=False sets the dotted key itself (a search space's keys are dotted paths)."""
    data = copy.deepcopy(data)
    given: dict[str, str] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise AblateError(f"{source}: override {item!r} is not of the form key.path=value")
        if key in given:  # as with a key written twice in a file: the user meant both
            raise AblateError(f"{source}: {key} is given twice ({given[key]!r} and {raw!r}); keep one")
        given[key] = raw
        try:
            value = yaml.load(raw, Loader=_Loader)
        except yaml.YAMLError:
            value = raw
        except AblateError as e:
            raise AblateError(f"{source}: {key}: {e}") from None
        node = data
        parts = key.split(".") if nested else [key]
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise AblateError(f"{source}: {key}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return data


# pydantic names the branch of a union it tried in the error's location: 'str', 'list[any]', 'Range'
_UNION_TAG = re.compile(r"^(str|int|float|bool|list\[.*\]|dict\[.*\]|[A-Z]\w*)$")


def _is_tag(part) -> bool:
    return isinstance(part, str) and bool(_UNION_TAG.match(part))


def _first_error(err: ValidationError) -> dict:
    """The error to show: the first, or for a union the branch that got furthest into the user's input
    (metric: [{direction: sideways}] fails as a list of objectives, not as 'not a string')."""
    errors = err.errors()
    first = errors[0]
    tags = [i for i, part in enumerate(first["loc"]) if _is_tag(part)]
    if not tags:
        return first
    same = [e for e in errors if e["loc"][:tags[0]] == first["loc"][:tags[0]]]
    return max(same, key=lambda e: (len(e["loc"]), e["type"] == "extra_forbidden"))


def validation_error(source: str, err: ValidationError, schema: type[BaseModel], prefix: str = "") -> AblateError:
    """The first pydantic error as one line: 'file: key.path: message (did you mean ...?)'."""
    first = _first_error(err)
    loc = [str(p) for p in first["loc"] if not _is_tag(p)]
    key = ".".join(([prefix] if prefix else []) + loc)
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        allowed = _fields_at(schema, list(first["loc"][:-1]))
        close = difflib.get_close_matches(loc[-1], allowed, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(allowed)}"
        msg = f"unknown key ({hint})"
    elif first["type"] == "literal_error":
        msg = f"{first['input']!r} is not allowed ({first['ctx']['expected']})"
    elif "input" in first and not isinstance(first["input"], (dict, list)):
        msg = f"{msg} (got {first['input']!r})"
    return AblateError(f"{source}: {key}: {msg}")


def _fields_at(schema: type[BaseModel], loc: list) -> list[str]:
    """The keys allowed at `loc` (for did-you-mean), following union branch tags like 'Range' or 'list[Objective]'."""
    current: type[BaseModel] | None = schema
    mapped = None  # a dict field's value schema: the next part is one of its keys
    for part in loc:
        if isinstance(part, int):
            continue  # a list index: same schema
        if mapped is not None:
            current, mapped = mapped, None
            continue
        tagged = globals().get(re.sub(r"^list\[(\w+)\]$", r"\1", part)) if _is_tag(part) else None
        if isinstance(tagged, type) and issubclass(tagged, BaseModel):
            current = tagged
            continue
        field = current.model_fields.get(part) if current else None
        ann = getattr(field, "annotation", None)
        if typing.get_origin(ann) is dict:  # constraints: {params_m: Bound}
            value = typing.get_args(ann)[1]
            mapped = value if isinstance(value, type) and issubclass(value, BaseModel) else None
        current = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return list(current.model_fields) if current else []


def parse_trial(data: dict, source: str = "config") -> TrialConfig:
    try:
        return TrialConfig.model_validate(data)
    except ValidationError as e:
        raise validation_error(source, e, TrialConfig) from None


def load_trial(path: str | Path, overrides: list[str] = ()) -> TrialConfig:
    return parse_trial(apply_overrides(load_yaml(path), list(overrides)), str(path))


def flatten(cfg: BaseModel | dict, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> leaf value (MLflow params, report columns)."""
    data = cfg.model_dump(mode="json") if isinstance(cfg, BaseModel) else cfg
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{path}."))
        else:
            out[path] = value
    return out


# ---------------------------------------------------------------- study files

# What a trial logs and a study may optimise (train.py logs these names).
METRICS = ("val/acc1", "val/acc5", "val/loss", "val/acc1_best", "val/acc1_ema", "train/loss", "train/throughput",
           "train/epoch_time", "model/params", "model/gmacs")


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
    time while its 95% interval against the baseline still holds 0, up to max seeds."""

    min: int = Field(2, ge=2, description="seeds every configuration runs (2: the fewest an interval needs)")
    max: int = Field(10, ge=2, description="the most seeds a configuration gets")
    until: Literal["decided"] = "decided"

    @field_validator("max")
    @classmethod
    def _not_below_min(cls, v, info):
        if v < info.data.get("min", 2):
            raise ValueError(f"max ({v}) is below min ({info.data['min']})")
        return v


class Bound(Strict):
    min: float | None = None
    max: float | None = None


# study.constraints keys: a configuration's cost from its dry forward; *_delta_pct against the plain backbone
CONSTRAINTS = ("params_m", "gmacs", "params_delta_pct", "gmacs_delta_pct")


class StudySection(Strict):
    # a folder name for its checkpoints (255 bytes), with '.before-<time>' appended when set aside
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=128)
    metric: str | list[Objective] = "val/acc1"
    direction: Literal["maximize", "minimize"] = "maximize"
    sampler: Literal["grid", "tpe", "random", "gp"] = "grid"
    pruner: Literal["none", "median", "hyperband", "asha"] = "none"
    trials: int | None = Field(None, ge=1, description="default: every grid cell x seed")
    seeds: Annotated[list[int], Field(min_length=1)] | SeedsOnDemand = Field(default_factory=lambda: [0])
    constraints: dict[Literal[CONSTRAINTS], Bound] = Field(
        default_factory=dict, description="cost limits checked before a trial trains, e.g. params_m: {max: 1.3}")
    warm_start: str | None = Field(None, description="a searched study's sampler starts from this earlier study's "
                                                     "finished trials (same storage)")
    ladder: bool = Field(False, description="cells are cumulative: each adds its keys to the previous one")
    # PostgreSQL only: a worker silent this long is dead, and its trial is retried by another worker
    heartbeat_interval: int = Field(30, ge=1, description="seconds between a running trial's heartbeats")
    grace_period: int = Field(120, ge=1, description="seconds without a heartbeat before a trial is failed")

    @property
    def on_demand(self) -> SeedsOnDemand | None:
        return self.seeds if isinstance(self.seeds, SeedsOnDemand) else None

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


LAUNCHERS = ("local", "slurm")


class LauncherConfig(Strict):
    """Where `ablate run --launcher slurm|local` runs the study's workers: one submitit job array, a worker per task.

    The keys are sbatch's (submitit passes them on); `sbatch` holds any other option as '--key=value' lines."""

    name: Literal[LAUNCHERS] | None = Field(None, description="default launcher; --launcher overrides it")
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
    space: dict[str, list | Range] = Field(default_factory=dict, description="dotted key -> choices or range")
    cells: list[dict] = Field(default_factory=list, description="explicit configurations (dotted key -> value)")
    reference: list[dict] = Field(default_factory=list, description="published numbers: {match: {...}, column: value}")
