"""The trial schema: what one training run is (model, data, train, tracking), and reading a trial file."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from ablate.config.base import Strict, effect, seed_field
from ablate.config.data import ClutteredDigitsData, DataConfig
from ablate.config.loading import apply_overrides, load_yaml
from ablate.config.messages import validation_error
from ablate.config.recipes import expand_recipe, recipe_error

POSITION_NAMES = ("block", "block_out", "branch_in", "shortcut", "stage", "stem", "head", "conv",  # inject.POSITIONS'
                  "pattern")
MODULE_KEY = "model.attention.name"  # the dotted key of a trial's attention module
KNOB_PREFIX = "model.attention.knobs."  # dotted keys under it are the module's knobs
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "lamb", "lars", "rmsprop", "nadam", "radam")


class AttentionSpec(Strict):
    """Which module goes where: `name: none` is the plain backbone."""

    name: str = "none"
    position: Literal[POSITION_NAMES] | None = Field(None, description="null = where the module's paper puts it "
                                                "(ablate modules); for a plugin that names none, where its kind goes "
                                                "first: block (gate), conv, head")
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


class TrainConfig(Strict):
    recipe: str | None = Field(None, description="a named preset of train and data keys (ablate recipes), each "
                               "cited; a key the file sets itself wins over the recipe's")
    epochs: int = Field(10, ge=1)
    optimizer: Literal[OPTIMIZERS] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["cosine", "step", "multistep", "constant"] = "cosine"
    warmup_epochs: int = Field(0, ge=0)
    min_lr: float = Field(0.0, ge=0)
    decay_epochs: int = Field(30, ge=1, description="step schedule: epochs between decays")
    decay_milestones: list[int] = Field([30, 60, 90], min_length=1,
                                        description="multistep schedule: the epochs where lr decays")
    decay_rate: float = Field(0.1, gt=0, le=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    loss: Literal["ce", "bce"] = Field("ce", description="ce: softmax cross-entropy; bce: timm's BinaryCrossEntropy "
                                       "on one-hot (or mixup's soft) targets, as ResNet strikes back trains")
    bce_target_threshold: float | None = Field(None, gt=0, lt=1, description="loss: bce: targets above it become 1 "
                                               "(timm's bce_target_thresh; ResNet strikes back: 0.2)")
    mixup: float = Field(0.0, ge=0, description="mixup alpha (0 = off)")
    cutmix: float = Field(0.0, ge=0, description="cutmix alpha (0 = off)")
    ema: bool = False
    ema_decay: float = Field(0.999, gt=0, lt=1)
    eval: Literal["ema", "raw"] = Field("ema", description="with train.ema, which weights val/* measure: the EMA's "
                                        "(val/*_raw then the raw weights') or the raw weights' (as without EMA)")
    precision: Literal["32", "32-true", "bf16-mixed", "16-mixed"] = "32"
    accelerator: str = Field("auto", json_schema_extra=effect("run"))
    devices: int | str = Field(1, json_schema_extra=effect("run"),
                               description="N > 1: one trial on N devices (DDP; N processes on CPU, with gloo)")
    ddp_timeout_s: int = Field(600, ge=10, json_schema_extra=effect("run"),
                               description="the longest a rank waits for the others (a dead rank)")
    channels_last: bool = Field(False, json_schema_extra=effect("layout"))
    compile: bool | Literal[COMPILE_MODES] = Field(False, json_schema_extra=effect("run"), description=(
        "torch.compile the model: true (its default mode) or a mode (reduce-overhead: CUDA graphs)"))
    deterministic: bool | None = Field(None, json_schema_extra=effect("run"), description=(
        "deterministic kernels (exact resume); null = on a CPU only (accelerators: cudnn.benchmark)"))
    seed: int = seed_field(json_schema_extra=effect("repeat"))
    limit_train_batches: int | float | None = Field(None, description="batches per epoch (int >= 1) or a fraction")
    limit_val_batches: int | float | None = None
    val_every: float = Field(1.0, gt=0, le=1, description="validate every this fraction of an epoch (0.25: four "
                             "times), so that a pruner can stop a short trial inside an epoch")
    progress_bar: bool = Field(True, json_schema_extra=effect("record"))
    checkpoint_every: int = Field(1, ge=0, json_schema_extra=effect("record"),
                                  description="epochs between the trial's resume checkpoints; 0 = none")
    checkpoint_dir: str | None = Field(None, json_schema_extra=effect("record"),
                                       description="where resume checkpoints live; null = beside the "
                                                   "tracking store (mlruns/checkpoints)")

    @field_validator("recipe")
    @classmethod
    def _known_recipe(cls, v):
        problem = recipe_error(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_mode(cls, v):
        if isinstance(v, str) and v not in COMPILE_MODES:  # pydantic's union message would only speak of booleans
            raise ValueError(f"{v!r} is neither true/false nor a torch.compile mode ({', '.join(COMPILE_MODES)})")
        return v

    @field_validator("bce_target_threshold")
    @classmethod
    def _threshold_needs_bce(cls, v, info):
        # train.loss is declared before it, so it is validated already (absent from info.data only when invalid)
        if v is not None and info.data.get("loss", "bce") != "bce":
            raise ValueError(f"only train.loss: bce binarises its targets, and train.loss is {info.data['loss']!r} "
                             "(set train.loss: bce, or leave bce_target_threshold null)")
        return v

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
    log_weights: bool = Field(True, description="save the evaluated weights as the run's model.pt (Grad-CAM) and as "
                              "its MLflow model (mlflow.pytorch.load_model('models:/<model_id>'))")
    system_metrics: bool = Field(True, description="MLflow's system metrics on each trial's run (CPU, memory, GPU "
                                 "utilisation and memory; every 10 s)")


class TrialConfig(Strict):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=ClutteredDigitsData)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, json_schema_extra=effect("record"))

    @model_validator(mode="before")
    @classmethod
    def _recipe(cls, data, info: ValidationInfo):
        # here, so that every way to a trial (file, study cell, space axis, override, notebook) gets the expansion;
        # assigning a section to a built config (info.field_name) sets it as given
        return data if info.field_name is not None else expand_recipe(data)


def parse_trial(data: dict, source: str = "config") -> TrialConfig:
    try:
        return TrialConfig.model_validate(data)
    except ValidationError as e:
        raise validation_error(source, e, TrialConfig) from None


def load_trial(path: str | Path, overrides: list[str] = ()) -> TrialConfig:
    return parse_trial(apply_overrides(load_yaml(path), list(overrides)), str(path))
