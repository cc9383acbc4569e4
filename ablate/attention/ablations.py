"""Each paper's own ablations, as registry metadata (no torch): per module, the axes its paper ablates, their values,
the table that prints them and the numbers it publishes, with the setup that table measured.

An axis is a dotted trial key (`model.attention.knobs.X`, `model.attention.position`, `model.attention.stages`,
`model.attention.name` for a component variant) and its values; `with_params` are keys every cell of the axis also
sets (CBAM's Table 1 ablates the channel gate alone: `model.attention.name: cbam_channel`). A number is here only
where the paper prints it in a table; a figure's numbers, and any we could not check against the paper, are left out
(their axis is still declared). A module without a declaration gets one per knob from its registry row (`declared`):
its choices (str, bool) or a small grid round its default (numbers), marked as not from the paper, with no numbers.
ablate/paper_plan.py writes a study from them (`ablate plan MODULE`) and lists what a study has not run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ablate.attention.registry import Knob, get_attention

POSITION = "model.attention.position"
STAGES = "model.attention.stages"
NAME = "model.attention.name"


@dataclass(frozen=True)
class PaperSetup:
    """What a paper's ablation tables measured: each a reference row's setup (ablate/reference.py SETUP_KEYS)."""

    paper: str  # the citation a checklist line gives: "Hu et al., TPAMI 2019 (arXiv:1709.01507v4)"
    dataset: str  # as the paper names it: ImageNet-1K, CIFAR-100
    backbone: str  # the timm name of the paper's backbone
    image_size: int
    recipe: str | None = None  # the recipe the generated study trains (train.recipe): the paper's, or the closest
    recipe_stated: bool = True  # is `recipe` what the paper trained (its rows then say so)? False: only the closest
    epochs: int | None = None  # left out where we could not check it
    baseline: dict = field(default_factory=dict)  # the plain backbone's published numbers in these tables
    baseline_source: str = ""
    default: dict = field(default_factory=dict)  # the module's own row (its default configuration) in a main table
    default_source: str = ""


@dataclass(frozen=True)
class Ablation:
    """One ablated axis: a dotted trial key, its values, where the paper prints them (None: not from the paper)."""

    axis: str
    title: str  # how a reader names it: "reduction ratio r"
    values: tuple
    source: str | None = None  # "Table 10"; None: the registry's choices or a grid round the default, no numbers
    default: Any = None  # the value the paper's default configuration has (its cell is shared by every axis)
    labels: dict = field(default_factory=dict)  # value -> the paper's name for it (SE-PRE)
    published: dict = field(default_factory=dict)  # value -> {top1_err, top5_err, params_m, gmacs}
    with_params: dict = field(default_factory=dict)  # keys every cell of this axis also sets
    note: str = ""  # what of the paper's table ablate cannot express

    @property
    def key(self) -> str:  # the axis's last part, as a cell and a checklist name it
        return self.axis.split(".")[-1]


@dataclass(frozen=True)
class PaperAblations:
    module: str
    setup: PaperSetup | None  # None: the generator's default setup (ImageNet-1K, resnet50, 224 px), no numbers
    ablations: tuple[Ablation, ...]
    image_size: int | None = None  # without a setup: the generated study's, where 224 px does not fit the module


SE_PAPER = PaperSetup(
    "Hu et al., TPAMI 2019 (arXiv:1709.01507v4), Sec. 6", "ImageNet-1K", "resnet50", 224, recipe="resnet_classic",
    recipe_stated=False, baseline={"top1_err": 23.30, "top5_err": 6.55, "params_m": 25.6, "gmacs": 3.86},
    baseline_source="Table 10 (original), Table 13 (ResNet-50)")
# Tables 10-14 (Section 6, ablation study): SE-ResNet-50 on ImageNet, single-crop top-1 / top-5 error (%). Checked
# against a transcription of the TPAMI text (English with a Chinese translation; not the PDF itself), which also says
# how Section 6 trained: lr 0.1, divided by 10 whenever the validation loss plateaus, three times (not the 100-epoch,
# lr 0.6 recipe of Sec. 5.1, hu2018_se). No ablate recipe is that rule: the plan trains resnet_classic, the closest (lr
# 0.1, / 10 three times in 90 epochs), and its rows state no recipe. The transcription's Table 10 has no r = 2 row:
# r = 2 stays an axis value (issue 26 lists it) without numbers.
# Table 13's "stage 2/3/4" are conv2_x..conv4_x, timm's layer1..layer3, which ablate counts as stages 1..3 (the
# params prove it: SE in conv4_x's six 1024-wide blocks adds 0.79M, 25.6 -> 26.4); the paper ablates no conv5_x alone.
# Table 15 (SE after each branch's 3x3 conv) is not declared: no ablate position is that place.
SE_DEFAULT_ERR = {"top1_err": 22.28, "top5_err": 6.03}
SE = PaperAblations("se", SE_PAPER, (
    Ablation("model.attention.knobs.reduction", "reduction ratio r", (2, 4, 8, 16, 32), "Table 10", 16,
             published={4: {"top1_err": 22.25, "top5_err": 6.09, "params_m": 35.7},
                        8: {"top1_err": 22.26, "top5_err": 5.99, "params_m": 30.7},
                        16: {**SE_DEFAULT_ERR, "params_m": 28.1},
                        32: {"top1_err": 22.72, "top5_err": 6.20, "params_m": 26.9}}),
    Ablation("model.attention.knobs.squeeze", "squeeze operator", ("avg", "max"), "Table 11", "avg",
             published={"max": {"top1_err": 22.57, "top5_err": 6.09}, "avg": SE_DEFAULT_ERR}),
    Ablation("model.attention.knobs.excitation", "excitation operator", ("sigmoid", "tanh", "relu"), "Table 12",
             "sigmoid", published={"relu": {"top1_err": 23.47, "top5_err": 6.98},
                                   "tanh": {"top1_err": 23.00, "top5_err": 6.38}, "sigmoid": SE_DEFAULT_ERR}),
    Ablation(STAGES, "stages", ((1,), (2,), (3,), None), "Table 13", None,
             labels={(1,): "SE_Stage_2", (2,): "SE_Stage_3", (3,): "SE_Stage_4", None: "SE_All"},
             published={(1,): {"top1_err": 23.03, "top5_err": 6.48, "params_m": 25.6, "gmacs": 3.86},
                        (2,): {"top1_err": 23.04, "top5_err": 6.32, "params_m": 25.7, "gmacs": 3.86},
                        (3,): {"top1_err": 22.68, "top5_err": 6.22, "params_m": 26.4, "gmacs": 3.86},
                        None: {**SE_DEFAULT_ERR, "params_m": 28.1, "gmacs": 3.87}}),
    Ablation(POSITION, "integration strategy", ("block", "branch_in", "block_out", "shortcut"), "Table 14", "block",
             labels={"block": "SE (standard)", "branch_in": "SE-PRE", "block_out": "SE-POST",
                     "shortcut": "SE-Identity"},
             published={"block": SE_DEFAULT_ERR, "branch_in": {"top1_err": 22.23, "top5_err": 6.00},
                        "block_out": {"top1_err": 22.78, "top5_err": 6.35},
                        "shortcut": {"top1_err": 22.20, "top5_err": 6.15}},
             note="SE-POST is after the summation (Fig. 5); ablate's block_out is after the sum and its ReLU, "
                  "as timm's ResNet block ends"),
))

CBAM_PAPER = PaperSetup(
    "Woo et al., ECCV 2018 (arXiv:1807.06521)", "ImageNet-1K", "resnet50", 224, recipe="resnet_classic",
    baseline={"top1_err": 24.56, "top5_err": 7.50, "params_m": 25.56, "gmacs": 3.858}, baseline_source="Table 4",
    default={"top1_err": 22.66, "top5_err": 6.31, "params_m": 28.09, "gmacs": 3.864}, default_source="Table 4")
# Tables 1-3: ResNet-50 on ImageNet-1K, top-1 / top-5 error (%), as studies/cbam_ablation.yaml transcribed them, and
# as a third-party transcription of the paper's tables has them too (not the PDF itself); the full CBAM row (k=7,
# channel first) is Table 4's, with its params and GMACs. resnet_classic is the recipe this paper's ImageNet runs name.
CBAM_FULL = {"top1_err": 22.66, "top5_err": 6.31}
CBAM = PaperAblations("cbam", CBAM_PAPER, (
    Ablation("model.attention.knobs.pool_types", "channel pooling", ("avg", "max", "avg+max"), "Table 1",
             with_params={NAME: "cbam_channel"}, labels={"avg": "AvgPool (SE)", "max": "MaxPool",
                                                         "avg+max": "AvgPool & MaxPool"},
             published={"avg": {"top1_err": 23.14, "top5_err": 6.70}, "max": {"top1_err": 23.20, "top5_err": 6.83},
                        "avg+max": {"top1_err": 22.80, "top5_err": 6.52}}),
    Ablation("model.attention.knobs.kernel_size", "spatial kernel size k", (3, 7), "Table 2", 7,
             published={3: {"top1_err": 22.68, "top5_err": 6.41}, 7: CBAM_FULL},
             note="its 1x1-conv spatial pooling rows: no cbam knob"),
    Ablation("model.attention.knobs.arrangement", "arrangement", ("channel_first", "spatial_first", "parallel"),
             "Table 3", "channel_first", published={"channel_first": CBAM_FULL,
                                                    "spatial_first": {"top1_err": 22.78, "top5_err": 6.42},
                                                    "parallel": {"top1_err": 22.95, "top5_err": 6.59}}),
))

ECA = PaperAblations("eca", PaperSetup(
    "Wang et al., CVPR 2020 (arXiv:1910.03151)", "ImageNet-1K", "resnet50", 224, recipe="resnet_classic",
    recipe_stated=False), (  # its schedule is not checked here against resnet_classic's: the rows claim no recipe
    # Fig. 4 plots ResNet-50's top-1 for k = 3..9 and the adaptive k; a figure prints no numbers
    Ablation("model.attention.knobs.kernel_size", "1D kernel size k (null: adaptive)", (3, 5, 7, 9, None),
             "Fig. 4", None),
))

BAM = PaperAblations("bam", PaperSetup(
    "Park et al., BMVC 2018 (arXiv:1807.06514)", "CIFAR-100", "resnet50", 32), (
    # Table 1 (CIFAR-100, ResNet50): the dilation value d and the reduction ratio r; numbers left out (not checked)
    Ablation("model.attention.knobs.dilation", "dilation value d", (1, 2, 4, 6), "Table 1", 4),
    Ablation("model.attention.knobs.reduction", "reduction ratio r", (4, 8, 16), "Table 1", 16),
    Ablation("model.attention.knobs.combine", "how the branches meet", ("add", "multiply"), None, "add"),
))

# modules whose knobs constrain each other, so the one-axis-per-knob grid would hold configurations they refuse
KNOB = "model.attention.knobs."
NOT_FROM_PAPER = (
    PaperAblations("gather_excite", None, (  # a parametric gather needs a local extent (its module says so)
        Ablation(KNOB + "extent", "gather extent e (0: global)", (0, 2, 4, 8), default=0),
        Ablation(KNOB + "extra_params", "parametric gather (GE-θ)", (False, True), default=False,
                 with_params={KNOB + "extent": 8}),
        Ablation(KNOB + "excite_mlp", "MLP in the excite (GE-θ+)", (False, True), default=False),
    )),
    PaperAblations("outlook", None, (  # the centres' pooling stride must not exceed the kernel
        Ablation(KNOB + "heads", "attention heads", (4, 8, 16), default=8),
        Ablation(KNOB + "kernel_size", "neighbourhood size k", (3, 5), default=3),
        Ablation(KNOB + "stride", "pooling of the centres", (1, 2), default=2),
    )),
    PaperAblations("fca", None, (  # of the 18 official frequency sets, the top-k ones: how many frequencies
        Ablation(KNOB + "freq_sel", "DCT frequencies (top-k)", ("top1", "top2", "top4", "top8", "top16", "top32"),
                 default="top16"),
        Ablation(KNOB + "reduction", "excitation reduction ratio r", (8, 16, 32), default=16),
        Ablation(KNOB + "dct_size", "DCT filter size", (7, 14), default=7),
    )),
    PaperAblations("halo", None, (  # a block must tile every stage's features: 8 at 224-256 px on a ResNet
        Ablation(KNOB + "block_size", "query block size b", (4, 8), default=8),
        Ablation(KNOB + "halo_size", "halo h", (1, 2, 3), default=3),
        Ablation(KNOB + "heads", "attention heads", (4, 8, 16), default=8),
    ), image_size=256),
)
DECLARED = {entry.module: entry for entry in (SE, CBAM, ECA, BAM, *NOT_FROM_PAPER)}
COMPONENTS = {"cbam_channel": "cbam", "cbam_spatial": "cbam"}  # a paper's parts: their ablations are the paper's


def declared(module: str) -> PaperAblations | None:
    """The ablations `module` declares (a component's: its paper's), or one per knob from its registry row; None for
    a module without knobs."""
    module = COMPONENTS.get(module, module)
    if module in DECLARED:
        return DECLARED[module]
    info = get_attention(module)
    if info.ablations:  # a plugin's own (register_attention(..., ablations=...))
        return PaperAblations(module, None, info.ablations)
    axes = tuple(Ablation(f"model.attention.knobs.{name}", knob.help or name, values, None, knob.default)
                 for name, knob in info.knobs.items() if len(values := knob_grid(knob)) > 1)
    return PaperAblations(module, None, axes) if axes else None


def knob_grid(knob: Knob) -> tuple:
    """A knob's values to ablate where its paper publishes no grid: its choices, both booleans, or a grid round its
    default (halved and doubled; +-2 for an odd size) inside its bounds. A list knob without choices: none."""
    if knob.type is bool:
        return (False, True)
    if knob.choices is not None and knob.type is not list:
        return tuple(knob.choices)
    if knob.type not in (int, float) or knob.default is None:
        return (None, 3, 5) if knob.nullable else ()
    default = knob.default
    if knob.odd:  # a kernel of 1 is no neighbourhood
        grid = [default - 2, default, default + 2] if default > 3 else [default, default + 2]
    elif default == 0:
        grid = [default]
    else:
        grid = [default / 2, default, default * 2] if knob.type is float else [default // 2, default, default * 2]
    high = knob.high if isinstance(knob.high, (int, float)) else math.inf
    low = knob.low if knob.low is not None else -math.inf
    return tuple(dict.fromkeys(v for v in grid if low <= v <= high))
