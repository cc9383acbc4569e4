"""Put attention modules into an already-built timm model, at named positions.

Positions (see config.POSITIONS):
  block      inside each residual block, before the residual add: the block's `se` slot, where timm's
             ResNet/ResNeXt/ResNet-D/Wide, EfficientNet/MobileNetV3 and RegNet blocks put SE. A slot that
             already holds a module (EfficientNet's SE) keeps it; ours runs right after it.
  block_out  after each block's output.
  stage      after the last block of each stage (between stages, where BAM sits).
  stem       after the stem (on the first block's input).
  head       before global pooling; a `head`-kind module replaces the global pooling itself.
  conv       replaces each block's 3x3 conv (SK, split-attention, BoT MHSA, halo, CoT).
  pattern    after (gate) or instead of (conv) every module whose path matches a glob.

Blocks and stages come from timm's own `group_matcher`, so any timm family that timm can group works.
Channels and feature sizes come from one dry forward with hooks. Modules added after a module's
output hang off that module as child `attn_out` (a forward hook applies them), so every original
state_dict key is unchanged and plain checkpoints still load.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ablate.attention import create_attention, get_attention
from ablate.config import AttentionSpec
from ablate.errors import AblateError
from ablate.profile import count_gmacs, count_params

SLOT = "se"  # timm's name for the attention slot inside a block


@dataclass
class Block:
    path: str
    stage: int  # 1-based, as papers count
    index: int  # 0-based within its stage


@dataclass
class Insertion:
    path: str  # where the attention module lives in the model
    position: str
    module: str
    channels: int
    feat_size: tuple[int, int]
    params: int = 0  # added (net of a replaced conv)
    gmacs: float = 0.0  # added at the report's image size


@dataclass
class InsertionReport:
    backbone: str
    attention: str
    position: str
    knobs: dict
    image_size: int
    base_params: int
    base_gmacs: float
    params: int = 0
    gmacs: float = 0.0
    rows: list[Insertion] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_text(self) -> str:
        lines = [f"{'path':<28} {'position':<9} {'module':<12} {'channels':>8} {'feat':>9} "
                 f"{'params':>10} {'GMACs':>9}"]
        for r in self.rows:
            feat = f"{r.feat_size[0]}x{r.feat_size[1]}"
            lines.append(f"{r.path:<28} {r.position:<9} {r.module:<12} {r.channels:>8} {feat:>9} "
                         f"{r.params:>10,} {r.gmacs:>9.5f}")
        lines.append(
            f"{self.backbone} + {self.attention} @ {self.position} ({len(self.rows)} insertions, {self.image_size}px): "
            f"params {self.params / 1e6:.2f}M ({self.base_params / 1e6:.2f}M plain, "
            f"{(self.params - self.base_params):+,}); GMACs {self.gmacs:.4f} ({self.base_gmacs:.4f} plain, "
            f"{self.gmacs - self.base_gmacs:+.4f})")
        return "\n".join(lines)


class IdentityInit(nn.Module):
    """x + a * (m(x) - x), a learnable scalar starting at 0: the model starts at its plain function."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self.alpha = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x + self.alpha * (self.module(x) - x)


def _apply_attn_out(module, args, output):
    return module.attn_out(output)


def _apply_attn_in(module, args):
    return (module.attn_in(args[0]),) + tuple(args[1:])


def find_blocks(model: nn.Module, where: str = "model.backbone") -> list[Block]:
    """Residual blocks in forward order with their stage, from timm's group_matcher."""
    matcher = getattr(model, "group_matcher", None)
    if matcher is None:
        raise AblateError(f"{where}: {type(model).__name__} has no group_matcher, so its blocks are unknown "
                          f"(use position: pattern)")
    spec = matcher(coarse=False)["blocks"]
    patterns = [spec] if isinstance(spec, str) else [p for p, ordinal in spec if ordinal is None]
    found = []
    for name, _ in model.named_modules():
        for pattern in patterns:
            m = re.fullmatch(pattern.lstrip("^"), name)
            if m:
                found.append((name, m.groups()))
    if not found:
        return []
    if len(found[0][1]) >= 2:  # (stage, block) numbering in the path itself
        stage_keys = list(dict.fromkeys(groups[0] for _, groups in found))
        stages = [stage_keys.index(groups[0]) + 1 for _, groups in found]
    else:  # one block sequence (Xception): stages end where timm's feature_info taps the network
        taps = [f["module"] for f in getattr(model, "feature_info", [])]
        ends = [i for i, (name, _) in enumerate(found) if any(t == name or t.startswith(name + ".") for t in taps)]
        stages = [1 + sum(1 for e in ends if e < i) for i in range(len(found))]
    blocks, counts = [], {}
    for (name, _), stage in zip(found, stages):
        blocks.append(Block(name, stage, counts.get(stage, 0)))
        counts[stage] = counts.get(stage, 0) + 1
    return blocks


def _select(blocks: list[Block], spec: AttentionSpec, where: str) -> list[Block]:
    available = sorted({b.stage for b in blocks})
    if spec.stages:
        missing = [s for s in spec.stages if s not in available]
        if missing:
            raise AblateError(f"{where}.stages: stage {missing[0]} does not exist "
                              f"(this backbone has stages {available[0]}-{available[-1]})")
    wanted = set(spec.stages or available)
    return [b for b in blocks if b.stage in wanted and b.index % spec.every == 0]


def _last_per_stage(blocks: list[Block]) -> list[Block]:
    last = {}
    for b in blocks:
        last[b.stage] = b
    return list(last.values())


def _has_3x3(block: nn.Module) -> bool:
    """ResNet-style blocks (the papers' setting) keep their spatial 3x3 conv as `conv2`."""
    conv = getattr(block, "conv2", None)
    return isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3)


def _sites(model: nn.Module, spec: AttentionSpec, kind: str, where: str) -> list[tuple[str, str]]:
    """(module path, how) pairs; how is 'slot', 'out', 'in', 'replace' or 'pool'."""
    pos = spec.position
    if pos == "pattern":
        if not spec.pattern:
            raise AblateError(f"{where}.pattern: position 'pattern' needs a module-path glob, e.g. 'layer3.*.conv2'")
        paths = [n for n, _ in model.named_modules() if n and fnmatch.fnmatchcase(n, spec.pattern)]
        if not paths:
            raise AblateError(f"{where}.pattern: {spec.pattern!r} matches no module of this backbone")
        return [(p, "replace" if kind == "conv" else "out") for p in paths]
    if pos == "head":
        pools = [n for n, _ in model.named_modules() if n.split(".")[-1] == "global_pool"]
        if not pools:
            raise AblateError(f"{where}.position: this backbone has no global_pool for position 'head'")
        return [(pools[0], "pool" if kind == "head" else "in")]
    blocks = find_blocks(model, where)
    if not blocks:
        raise AblateError(f"{where}.position: no residual blocks found for position {pos!r} (use pattern)")
    if pos == "stem":
        return [(blocks[0].path, "in")]
    chosen = _select(blocks, spec, where)
    if pos == "stage":
        return [(b.path, "out") for b in _last_per_stage(chosen)]
    if pos == "block_out":
        return [(b.path, "out") for b in chosen]
    if pos == "block":
        sites = [(f"{b.path}.{SLOT}", "slot") for b in chosen if hasattr(model.get_submodule(b.path), SLOT)]
        if not sites:
            raise AblateError(f"{where}.position: {type(model).__name__} blocks have no attention slot for "
                              f"position 'block' (use block_out, stage, head or pattern)")
        return sites
    # conv
    sites = [(f"{b.path}.conv2", "replace") for b in chosen if _has_3x3(model.get_submodule(b.path))]
    if not sites:
        raise AblateError(f"{where}.position: {type(model).__name__} blocks have no 3x3 conv for position 'conv'")
    return sites


_KIND_POSITIONS = {"gate": {"block", "block_out", "stage", "stem", "head", "pattern"},
                   "conv": {"conv", "pattern"}, "head": {"head"}}


def _probe_shapes(model: nn.Module, sites, in_chans: int, image_size: int) -> dict[str, tuple]:
    """One dry forward: the feature shape (C, H, W) at every site (a slot's or a replaced conv's input)."""
    shapes, handles, probes = {}, [], []

    def recorder(path):  # hooks must return None, or they would replace the module's input/output
        def record(module, args, output=None):
            shapes.setdefault(path, tuple((args[0] if output is None else output).shape[1:]))
        return record

    for path, how in sites:
        parent, _, attr = path.rpartition(".")
        if how == "slot" and getattr(model.get_submodule(parent), attr) is None:
            setattr(model.get_submodule(parent), attr, nn.Identity())  # a probe in the empty slot
            probes.append((parent, attr))
        mod = model.get_submodule(path)
        if how == "out":
            handles.append(mod.register_forward_hook(recorder(path)))
        else:
            handles.append(mod.register_forward_pre_hook(recorder(path)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_chans, image_size, image_size))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
        for parent, attr in probes:
            setattr(model.get_submodule(parent), attr, None)
    return shapes


def inject(model: nn.Module, spec: AttentionSpec, *, in_chans: int = 3, image_size: int = 224,
           backbone: str = "", where: str = "model.attention") -> InsertionReport:
    """Insert `spec.name` at `spec.position` into `model` in place; return the insertion report."""
    base_params = count_params(model)
    base_gmacs, base_per_module = count_gmacs(model, (in_chans, image_size, image_size))
    report = InsertionReport(backbone or type(model).__name__, spec.name, spec.position, dict(spec.knobs),
                             image_size, base_params, base_gmacs, base_params, base_gmacs)
    if spec.name == "none":
        return report

    info = get_attention(spec.name, f"{where}.name")
    if spec.position not in _KIND_POSITIONS[info.kind]:
        allowed = ", ".join(sorted(_KIND_POSITIONS[info.kind]))
        raise AblateError(f"{where}.position: {spec.name!r} is a {info.kind} module; it goes at {allowed}, "
                          f"not {spec.position!r}")
    if spec.init == "identity" and info.kind != "gate":
        raise AblateError(f"{where}.init: identity init needs a gate module; {spec.name!r} is a {info.kind} module")

    sites = _sites(model, spec, info.kind, where)
    shapes = _probe_shapes(model, sites, in_chans, image_size)
    rows = []
    for path, how in sites:
        if path not in shapes:  # a module the forward never reached (e.g. an unused branch)
            continue
        if len(shapes[path]) != 3:
            raise AblateError(f"{where}: {path} carries a {len(shapes[path]) + 1}-d tensor, not a (B, C, H, W) feature map")
        channels, height, width = shapes[path]
        knob_where = f"{where}.knobs"
        parent_path, _, attr = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        try:
            if how == "replace":
                old = model.get_submodule(path)
                if not isinstance(old, nn.Conv2d):
                    raise AblateError(f"{where}.pattern: {path} is a {type(old).__name__}, not a conv to replace")
                attn = create_attention(spec.name, old.in_channels, where=knob_where, out_channels=old.out_channels,
                                        stride=old.stride[0], feat_size=(height, width), **spec.knobs)
            else:
                attn = create_attention(spec.name, channels, where=knob_where, **spec.knobs)
        except AblateError as e:
            raise AblateError(f"{e} (at {path}, {channels} channels)") from None
        except ValueError as e:  # a module's own shape check (e.g. halo block size vs feature size)
            raise AblateError(f"{where}: {spec.name} cannot go at {path} ({channels}x{height}x{width}): {e}") from None
        if spec.init == "identity":
            attn = IdentityInit(attn)
        added = count_params(attn)

        if how == "slot":
            native = getattr(parent, attr)
            setattr(parent, attr, attn if native is None or isinstance(native, nn.Identity)
                    else nn.Sequential(native, attn))
            installed = path if native is None or isinstance(native, nn.Identity) else f"{path}.1"
        elif how == "replace":
            added -= count_params(old)
            setattr(parent, attr, attn)
            if info.includes_norm_act:  # the module normalises and activates its own output
                for follower in ("bn2", "act2"):
                    if isinstance(getattr(parent, follower, None), nn.Module):
                        setattr(parent, follower, nn.Identity())
            installed = path
        elif how == "pool":
            before = count_params(model)
            out_features = getattr(attn, "out_features", None)
            if out_features is not None:  # the head ends in its own features: the classifier takes those
                _reset_classifier(model, out_features, f"{where}.name: {spec.name}")
                parent = model.get_submodule(parent_path) if parent_path else model  # may be rebuilt
            old_pool = model.get_submodule(path)
            setattr(parent, attr, _HeadPool(attn, flatten=getattr(old_pool, "flatten", None)))
            added = count_params(model) - before  # new head (+ classifier) - replaced pool (+ classifier)
            installed = f"{path}.attn"
        else:
            target = model.get_submodule(path)
            if how == "out":
                target.attn_out = attn
                target.register_forward_hook(_apply_attn_out)
                installed = f"{path}.attn_out"
            else:
                target.attn_in = attn
                target.register_forward_pre_hook(_apply_attn_in)
                installed = f"{path}.attn_in"
        rows.append(Insertion(installed, spec.position, spec.name, int(channels), (int(height), int(width)), added))

    report.params = count_params(model)
    report.gmacs, per_module = count_gmacs(model, (in_chans, image_size, image_size))
    for row in rows:
        replaced = base_per_module.get(row.path, 0.0) if row.position in ("conv", "pattern") else 0.0
        row.gmacs = per_module.get(row.path, 0.0) - replaced
    report.rows = rows
    return report


def _reset_classifier(model: nn.Module, in_features: int, where: str) -> None:
    """Rebuild the model's classifier (same classes) to take `in_features`, through timm's reset_classifier.

    timm sizes the new classifier from `model.num_features`, so it is set for the call and restored after.
    reset_classifier may rebuild global_pool too (ResNet), so it runs before the head is installed; a head
    norm between pool and classifier (ConvNeXt's NormMlpClassifierHead) is dropped (`reset_other`): such a
    head normalises its own output.
    """
    import inspect as pyinspect

    reset = getattr(model, "reset_classifier", None)
    num_features = getattr(model, "num_features", None)
    if reset is None or num_features is None:
        raise AblateError(f"{where} owns the classifier, but {type(model).__name__} has no timm reset_classifier")
    kwargs = {"reset_other": True} if "reset_other" in pyinspect.signature(reset).parameters else {}
    model.num_features = in_features
    try:
        reset(model.num_classes, **kwargs)
    except AssertionError as e:
        raise AblateError(f"{where} owns the classifier, but {type(model).__name__}'s head cannot take "
                          f"{in_features} features ({e})") from None
    finally:
        model.num_features = num_features
    classifier = model.get_classifier()
    width = getattr(classifier, "in_features", in_features)
    if not isinstance(classifier, nn.Identity) and width != in_features:
        raise AblateError(f"{where} owns the classifier, but {type(model).__name__}'s classifier still takes "
                          f"{width} features, not {in_features}")


class _HeadPool(nn.Module):
    """A head-kind module in place of timm's global pool, keeping the pool's output layout."""

    def __init__(self, attn: nn.Module, flatten):
        super().__init__()
        self.attn = attn
        self.flatten = bool(flatten) if not isinstance(flatten, nn.Module) else not isinstance(flatten, nn.Identity)

    def forward(self, x):
        pooled = self.attn(x)
        return pooled if self.flatten else pooled[:, :, None, None]
