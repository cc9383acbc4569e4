"""Recipes: named, cited bundles of existing train/data/model keys (`train.recipe: rsb_a2`), each overridable key by
key, listed by `ablate recipes`.

Expansion (expand_recipe, run by TrialConfig's before-validator, so every path gets it: trial files, a study's base
and cells, a search space axis, --set overrides, the notebook API): the recipe that the trial's final
`train.recipe` names puts its values under the trial's own keys; a key the trial's raw config sets (in the base, a
cell, a space axis or an override) wins. A study's base is kept raw until each trial is resolved, so a cell that
names another recipe gets that recipe's values in place of the base recipe's, while keys the base wrote out
itself still win over both. The expansion lands in the validated config, so flatten(cfg) (MLflow's params, cell
keys, the study fingerprint) records every value that ran. No torch here.
"""
from __future__ import annotations

import copy
import textwrap
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from ablate.errors import AblateError

RECIPE_KEY = "train.recipe"
SECTIONS = ("model", "data", "train")  # a recipe's keys are `section.key`, one level under a trial section
# a recipe value that only means something beside another of its values: dropped when the trial sets that key itself
# (rsb_a2 with `train.loss: ce` trains cross-entropy, without a BCE threshold the file never wrote)
GOES_WITH = {"train.bce_target_threshold": "train.loss"}


@dataclass(frozen=True)
class Recipe:
    """A training recipe as its source states it: `values` (dotted trial keys -> value), `source` (where each value is
    printed: paper, table or section, page where checked), `note` (what ablate does not reproduce of it)."""

    values: dict[str, Any]
    source: str
    note: str
    details: dict[str, str] = field(default_factory=dict)  # a value's own source where it is not `source`


# ResNet strikes back (Wightman, Touvron, Jegou 2021, arXiv:2110.00476): what A1, A2 and A3 share
_RSB = {"train.optimizer": "lamb", "train.schedule": "cosine", "train.warmup_epochs": 5, "train.loss": "bce",
        "train.bce_target_threshold": 0.2, "train.cutmix": 1.0, "data.batch_size": 2048, "data.hflip": 0.5,
        "data.test_size": 224, "data.crop_pct": 0.95}
_RSB_SOURCE = ("Wightman, Touvron, Jegou, \"ResNet strikes back: an improved training procedure in timm\", 2021, "
               "arXiv:2110.00476, Table 1 (procedures A1, A2, A3; page not checked here). The table's text was not "
               "readable in this session: values are taken from the authors' timm (train/test sizes and test crop "
               "ratio: timm/models/resnet.py's pretrained cfgs of resnet50.a1/a2/a3_in1k, huggingface/"
               "pytorch-image-models@aa4b5850) and from OpenMMLab's RSB configs (mmpretrain configs/resnet/"
               "resnet50_8xb256-rsb-a{1,2,3}-*_in1k.py and _base_/schedules/imagenet_bs2048_rsb.py: LAMB, lr, weight "
               "decay, 5 warmup epochs, cosine, BCE, mixup/cutmix alphas, repeated augmentation, stochastic depth, "
               "RandAugment magnitude, batch 2048)")
_RSB_NOTE = ("lr is for a global batch of 2048 (LAMB); ablate does not rescale lr with data.batch_size, so a smaller "
             "batch needs its lr chosen by hand. The 3 repeats of repeated augmentation are timm's RepeatAugSampler "
             "default; the BCE target threshold 0.2 is from third-party configs of these recipes, not read in Table 1 "
             "here. Bicubic resizing (timm's cfgs: interpolation bicubic) and a min_lr are not set: ablate's defaults "
             "stand")
_RSB_DETAILS = {"train.bce_target_threshold": "third-party RSB configs (target_thresh: 0.2); timm: --bce-target-thresh",
                "data.repeated_aug": "mmpretrain RepeatAugSampler / timm RepeatAugSampler(num_repeats=3)"}

RECIPES: dict[str, Recipe] = {
    "he2016_cifar": Recipe(
        values={"data.image_size": 32, "data.batch_size": 128, "data.hflip": 0.5, "train.epochs": 164,
                "train.optimizer": "sgd", "train.lr": 0.1, "train.momentum": 0.9, "train.weight_decay": 0.0001,
                "train.schedule": "multistep", "train.decay_milestones": [82, 123], "train.decay_rate": 0.1},
        source="He, Zhang, Ren, Sun, \"Deep Residual Learning for Image Recognition\", CVPR 2016, Sec. 4.2 (CIFAR-10): "
               "SGD lr 0.1, momentum 0.9, weight decay 1e-4, batch 128, lr / 10 at 32k and 48k iterations, stop at "
               "64k; 4-pixel padding, 32x32 random crop, horizontal flip (page not checked here)",
        note="iterations as epochs at 391 an epoch (50k images / 128): lr / 10 at epochs 82 and 123, 164 epochs. "
             "timm's 'sgd' is Nesterov momentum (the paper's is plain momentum: train.optimizer: momentum), kept as "
             "studies/resnet_cifar_table.yaml trained. The pad-and-crop is the CIFAR data module's own; ResNet-110's "
             "400-iteration warm-up at lr 0.01 is not in the recipe (that study's resnet110 cell sets "
             "train.warmup_epochs: 1)"),
    "resnet_classic": Recipe(
        values={"data.image_size": 224, "data.batch_size": 256, "data.hflip": 0.5, "data.test_size": 224,
                "data.crop_pct": 0.875, "train.epochs": 90, "train.optimizer": "momentum", "train.lr": 0.1,
                "train.momentum": 0.9, "train.weight_decay": 0.0001, "train.schedule": "step",
                "train.decay_epochs": 30, "train.decay_rate": 0.1},
        source="Woo, Park, Lee, Kweon, \"CBAM: Convolutional Block Attention Module\", ECCV 2018, ImageNet-1K "
               "experiments (the recipe studies/imagenet_cbam_table.yaml records: 90 epochs, SGD lr 0.1 at batch 256, "
               "x0.1 every 30 epochs, weight decay 1e-4, 224 px crops; section and page not checked here), on He "
               "et al. CVPR 2016 Sec. 3.4 (batch 256, lr 0.1, momentum 0.9, weight decay 1e-4). Test: 224 px centre "
               "crop of the image resized to 256 (crop_pct 0.875)",
        note="He et al. 2016 divide lr by 10 when the error plateaus (up to 60e4 iterations), train on scale "
             "augmentation (shorter side 256-480) with the standard colour (PCA lighting) augmentation and report "
             "10-crop tests; ablate trains timm's random-resized crop and flip, has no PCA colour noise, and tests one "
             "centre crop. lr 0.1 is for batch 256: ablate does not rescale lr with data.batch_size"),
    "hu2018_se": Recipe(
        values={"data.image_size": 224, "data.batch_size": 1024, "data.hflip": 0.5, "data.test_size": 224,
                "data.crop_pct": 0.875, "train.epochs": 100, "train.optimizer": "momentum", "train.lr": 0.6,
                "train.momentum": 0.9, "train.weight_decay": 0.0001, "train.schedule": "step",
                "train.decay_epochs": 30, "train.decay_rate": 0.1},
        source="Hu, Shen, Albanie, Sun, Wu, \"Squeeze-and-Excitation Networks\", TPAMI 2019 (CVPR 2018), "
               "implementation section: the SE paper's own ImageNet variant of resnet_classic. Batch 1024 and lr 0.6: "
               "the authors' README (github.com/hujie-frank/SENet: \"the results reported in the paper were obtained "
               "by training the networks with a larger batch size (1024) and learning rate (0.6)\"). 100 epochs and lr "
               "/ 10 every 30 epochs as issue 26 states them (section and page not checked here); momentum 0.9 and "
               "weight decay 1e-4 are resnet_classic's (not checked against the SE paper here)",
        note="the authors' augmentation also rotates (+-10 degrees) and jitters pixels (+-20), which ablate does not; "
             "their test is a 224 centre crop of the image resized to 256. lr 0.6 is for batch 1024: ablate does not "
             "rescale lr with data.batch_size"),
    "rsb_a1": Recipe(
        values={**_RSB, "train.epochs": 600, "train.lr": 0.005, "train.weight_decay": 0.01, "train.mixup": 0.2,
                "train.label_smoothing": 0.1, "data.repeated_aug": 3, "model.drop_path_rate": 0.05,
                "data.image_size": 224, "data.auto_augment": "rand-m7-mstd0.5-inc1"},
        source=_RSB_SOURCE, note=_RSB_NOTE + ". A1's label smoothing 0.1 is from mmpretrain's A1 config at one of its "
                                             "commits (LabelSmoothLoss 0.1), not read in Table 1 here",
        details=_RSB_DETAILS),
    "rsb_a2": Recipe(
        values={**_RSB, "train.epochs": 300, "train.lr": 0.005, "train.weight_decay": 0.02, "train.mixup": 0.1,
                "data.repeated_aug": 3, "model.drop_path_rate": 0.05, "data.image_size": 224,
                "data.auto_augment": "rand-m7-mstd0.5-inc1"},
        source=_RSB_SOURCE, note=_RSB_NOTE, details=_RSB_DETAILS),
    "rsb_a3": Recipe(
        values={**_RSB, "train.epochs": 100, "train.lr": 0.008, "train.weight_decay": 0.02, "train.mixup": 0.1,
                "data.repeated_aug": 1, "model.drop_path_rate": 0.0, "data.image_size": 160,
                "data.auto_augment": "rand-m6-mstd0.5-inc1"},
        source=_RSB_SOURCE, note=_RSB_NOTE + ". A3 trains at 160 px and tests at 224 (timm's _r3cfg: input_size 160, "
                                             "test_input_size 224), without repeated augmentation or stochastic depth",
        details={k: v for k, v in _RSB_DETAILS.items() if k != "data.repeated_aug"}),
}


def recipe_error(name: Any) -> str | None:
    """Why `name` is no recipe (None where it is one): the one line an unknown `train.recipe` gets."""
    if name is None or name in RECIPES:
        return None
    return f"{name!r} is not a recipe (allowed: {', '.join(RECIPES)}; `ablate recipes` lists them)"


def _given(section: Any) -> Any:
    """A trial section as the keys its writer gave: a raw mapping as is, a model (the notebook API) as the fields set
    on it (a data config keeps its name: it picks the dataset)."""
    if not isinstance(section, BaseModel):
        return section
    given = section.model_dump(exclude_unset=True)
    if "name" in type(section).model_fields:
        given.setdefault("name", section.name)
    return given


def expand_recipe(data: Any) -> Any:
    """A raw trial config with its `train.recipe`'s values under it: the keys `data` sets win. Anything that is not a
    mapping, or names no known recipe, is returned as it came (the schema then says what is wrong)."""
    if not isinstance(data, dict):
        return data
    train = _given(data.get("train"))
    name = train.get("recipe") if isinstance(train, dict) else getattr(train, "recipe", None)
    if not isinstance(name, str) or name not in RECIPES:
        return data
    out = {key: (_given(value) if key in SECTIONS else value) for key, value in data.items()}
    for dotted, value in RECIPES[name].values.items():
        if dotted in GOES_WITH and _sets(data, GOES_WITH[dotted]):
            continue
        section, key = dotted.split(".", 1)
        node = out.get(section)
        if node is None:
            node = out[section] = {}
        elif not isinstance(node, dict):
            continue  # not a mapping: the schema's own error says so
        else:
            node = out[section] = dict(node)
        node.setdefault(key, copy.deepcopy(value))
    return out


def _sets(data: dict, dotted: str) -> bool:
    """Whether a raw trial config sets `dotted` itself."""
    section, key = dotted.split(".", 1)
    node = _given(data.get(section))
    return isinstance(node, dict) and key in node


def recipe_text(name: str | None = None) -> str:
    """`ablate recipes [NAME]`: each recipe, its values and its citation (one recipe where named)."""
    if name is not None and name not in RECIPES:
        raise AblateError(recipe_error(name), key="NAME")
    blocks = []
    for key, recipe in RECIPES.items():
        if name is not None and key != name:
            continue
        width = max(map(len, recipe.values))
        lines = [key]
        lines += [f"  {dotted.ljust(width)}  {_shown(value)}" for dotted, value in recipe.values.items()]
        said = [f"source: {recipe.source}", *(f"source of {k}: {why}" for k, why in recipe.details.items()),
                f"not reproduced: {recipe.note}"]
        lines += [textwrap.fill(text, 118, initial_indent="  ", subsequent_indent="    ") for text in said]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + ("" if name else f"\n\n{len(blocks)} recipes (train.recipe: NAME; a key the file "
                                                    "sets itself wins)")


def _shown(value: Any) -> str:
    return "[" + ", ".join(map(str, value)) + "]" if isinstance(value, list) else str(value)
