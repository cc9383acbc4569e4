"""Put attention modules into an already-built timm model, at named positions.

Positions (the POSITIONS table; config.POSITION_NAMES names the same ones); an unset position is the module's
paper placement (its registry entry), `block` where the paper names none:
  block      inside each residual block, before the residual add: the block's `se` slot, where timm's
             ResNet/ResNeXt/ResNet-D/Wide, EfficientNet/MobileNetV3 and RegNet blocks put SE. A slot that
             already holds a module (EfficientNet's SE) keeps it; ours runs right after it. A block without the
             slot (ConvNeXt, CSPNet, NFNet, ByobNet, ...) takes it after the module that ends its residual
             branch (blocks.branch_ends); a block without a residual branch (DenseNet, VGG) takes none.
  block_out  after each block's output (SE-POST of the SE paper's Fig. 5 on ResNet; `block` is its standard SE).
  branch_in  on the input of each block's residual branch, the identity path untouched (SE-PRE), and
  shortcut   on each block's identity path, after its projection if any (SE-Identity): ResNet-style residual
             units only (ablate/residual_sites.py).
  stage      after the last block of each stage (between stages, where BAM sits).
  stem       after the stem (on the first block's input).
  head       before global pooling; a `head`-kind module replaces the global pooling itself.
  conv       replaces each block's 3x3 conv (SK, split-attention, BoT MHSA, halo, CoT): ResNet's conv2, else
             the block's last dense 'same' 3x3 conv (blocks.spatial_conv).
  pattern    after (gate) or instead of (conv) every module whose path matches a glob.

A position's site finder names its sites and how each takes the module (the INSTALLERS table): into the
block's `slot`, `replace` a conv, replace the global `pool`, or hooked on after (`out`) or before (`in`) a
module. A new position is one finder and one POSITIONS entry (and its name in config.POSITION_NAMES); a new way
to take a module is one INSTALLERS row. Replacing the global pool is classifier surgery: ablate/head.py.

Blocks and stages come from timm's own `group_matcher` (blocks.find_blocks), so any timm family that timm can
group works. Channels and feature sizes come from one dry forward with hooks; a site that sees no single
(B, C, H, W) map (a list, a tuple, tokens, several shapes) refuses in one line, as does a forward the injector
breaks. Modules added after a module's output hang off that module as child `attn_out` (a forward hook applies
them; off its nearest non-Sequential ancestor if it is one), so every original state_dict key is unchanged and
plain checkpoints still load.

Errors are AblateErrors keyed relative to the attention spec ("position: ...", "knobs.reduction: ..."):
`models.build_model` locates them under `model.attention`.
"""
from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Callable, Literal

import torch
from torch import nn

from ablate.attention import AttentionInfo, Placement, create_attention, get_attention
from ablate.blocks import (  # noqa: F401 (API)
    INPUT,
    Block,
    blocks_for,
    branch_ends,
    dry_forward,
    find_blocks,
    hook_holder,
    select_blocks,
    spatial_conv,
)
from ablate.config import AttentionSpec
from ablate.cost import count_gmacs, count_params
from ablate.errors import AblateError, at, describe, one_line
from ablate.head import replace_pool
from ablate.residual_sites import branch_in_sites, shortcut_sites

SLOT = "se"  # timm's name for the attention slot inside a block


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
            f"{self.backbone} + {self.attention} @ {self.position} "
            f"({len(self.rows)} insertions, {self.image_size}px): "
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


def _apply_attn_out(holder, attr, module, args, output):
    return getattr(holder, attr)(output)


def _apply_attn_in(holder, attr, module, args):
    return (getattr(holder, attr)(args[0]),) + tuple(args[1:])


def _last_per_stage(blocks: list[Block]) -> list[Block]:
    last = {}
    for b in blocks:
        last[b.stage] = b
    return list(last.values())


def _has_3x3(block: nn.Module) -> bool:
    """ResNet-style blocks (the papers' setting) keep their spatial 3x3 conv as `conv2`."""
    conv = getattr(block, "conv2", None)
    return isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3)


# ---------------------------------------------------------------- positions

def _block_sites(model: nn.Module, spec: AttentionSpec, kind: str) -> list[tuple[str, str]]:
    """timm's `se` slot where a block has one; otherwise after the module that ends its residual branch."""
    chosen = select_blocks(blocks_for(model, spec), spec)
    slotless = [b.path for b in chosen if not hasattr(model.get_submodule(b.path), SLOT)]
    ends = branch_ends(model, slotless, *INPUT.get()) if slotless else {}
    sites = [(f"{b.path}.{SLOT}", "slot") if b.path not in slotless else (ends[b.path], "out")
             for b in chosen if b.path not in slotless or b.path in ends]
    if not sites:
        raise AblateError(f"{type(model).__name__} blocks have neither an attention slot nor a residual branch "
                          f"for position 'block' (use block_out, stage, head or pattern)", key="position")
    return sites


def _block_out_sites(model: nn.Module, spec: AttentionSpec, kind: str) -> list[tuple[str, str]]:
    return [(b.path, "out") for b in select_blocks(blocks_for(model, spec), spec)]


def _stage_sites(model: nn.Module, spec: AttentionSpec, kind: str) -> list[tuple[str, str]]:
    return [(b.path, "out") for b in _last_per_stage(select_blocks(blocks_for(model, spec), spec))]


def _stem_sites(model: nn.Module, spec: AttentionSpec, kind: str) -> list[tuple[str, str]]:
    return [(blocks_for(model, spec)[0].path, "in")]  # the first block's input is the stem's output; no stages


def _head_sites(model: nn.Module, spec: AttentionSpec, kind: str) -> list[tuple[str, str]]:
    pools = [n for n, _ in model.named_modules() if n.split(".")[-1] == "global_pool"]
    if not pools:
        raise AblateError(f"{type(model).__name__} has no timm global_pool (it pools inside its head) for position "
                          f"'head' (use stage: after the last stage, or pattern)", key="position")
    return [(pools[0], "pool" if kind == "head" else "in")]


def _conv_sites(model: nn.Module, spec: AttentionSpec, kind: str) -> list[tuple[str, str]]:
    chosen = select_blocks(blocks_for(model, spec), spec)
    convs = {b.path: "conv2" if _has_3x3(model.get_submodule(b.path)) else spatial_conv(model.get_submodule(b.path))
             for b in chosen}
    in_chans = INPUT.get()[0]  # a conv that reads the image is a stem's, in families whose matcher counts it a block
    sites = [(f"{path}.{conv}", "replace") for path, conv in convs.items()
             if conv and model.get_submodule(f"{path}.{conv}").in_channels != in_chans]
    if not sites:
        raise AblateError(f"{type(model).__name__} blocks have no dense 3x3 conv for position 'conv' "
                          f"(use pattern to name the convs to replace)", key="position")
    return sites


def _pattern_sites(model: nn.Module, spec: AttentionSpec, kind: str) -> list[tuple[str, str]]:
    if not spec.pattern:
        raise AblateError("position 'pattern' needs a module-path glob, e.g. 'layer3.*.conv2'", key="pattern")
    paths = [n for n, _ in model.named_modules() if n and fnmatch.fnmatchcase(n, spec.pattern)]
    if not paths:
        raise AblateError(f"{spec.pattern!r} matches no module of this backbone", key="pattern")
    return [(p, "replace" if kind == "conv" else "out") for p in paths]


@dataclass(frozen=True)
class Position:
    """One `attention.position`: its site finder, (model, spec, module kind) -> [(module path, how)] with
    `how` a key of INSTALLERS, and the module kinds it takes."""

    sites: Callable[[nn.Module, AttentionSpec, str], list[tuple[str, str]]]
    kinds: frozenset[str]


_GATE = frozenset({"gate"})
POSITIONS: dict[str, Position] = {
    "block": Position(_block_sites, _GATE),
    "block_out": Position(_block_out_sites, _GATE),
    "branch_in": Position(branch_in_sites, _GATE),
    "shortcut": Position(shortcut_sites, _GATE),
    "stage": Position(_stage_sites, _GATE),
    "stem": Position(_stem_sites, _GATE),
    "head": Position(_head_sites, frozenset({"gate", "head"})),
    "conv": Position(_conv_sites, frozenset({"conv"})),
    "pattern": Position(_pattern_sites, frozenset({"gate", "conv"})),
}


# ---------------------------------------------------------------- installers: how a site takes its module

@dataclass
class Site:
    """One place a module goes: its path, what the dry forward saw there, and what to put there."""

    model: nn.Module
    path: str
    channels: int
    feat_size: tuple[int, int]
    spec: AttentionSpec
    info: AttentionInfo

    @property
    def parent(self) -> nn.Module:  # looked up each time: timm's reset_classifier may rebuild it
        parent_path = self.path.rpartition(".")[0]
        return self.model.get_submodule(parent_path) if parent_path else self.model

    @property
    def attr(self) -> str:
        return self.path.rpartition(".")[2]

    @property
    def module(self) -> nn.Module:
        return self.model.get_submodule(self.path)

    def error(self, message: str, key: str | None = None) -> AblateError:
        return AblateError(f"{message} (at {self.path}, {self.channels} channels)", key=key)

    def make(self, in_channels: int | None = None, **structural) -> nn.Module:
        """The spec's module for `in_channels` (default: the channels seen here), in IdentityInit when the
        spec asks; a knob or a shape it cannot take is a one-line error that names this site."""
        spec = self.spec
        try:
            with at("knobs"):
                attn = create_attention(spec.name, self.channels if in_channels is None else in_channels,
                                        **structural, **spec.knobs)
        except AblateError as e:
            raise self.error(e.message, e.key) from None
        except ValueError as e:  # a module's own shape check (e.g. halo block size vs feature size)
            height, width = self.feat_size
            raise AblateError(f"{spec.name} cannot go at {self.path} ({self.channels}x{height}x{width}): "
                              f"{e}") from None
        return IdentityInit(attn) if spec.init == "identity" else attn


@dataclass(frozen=True)
class Installed:
    """What an installer did, for the insertion report's row."""

    path: str  # where the attention module lives now
    params: int  # parameters added, net of what it replaced
    replaced: str | None = None  # the original module whose place it took: the row's GMACs net it out


def _fill_slot(site: Site) -> Installed:
    """The block's attention slot; a module already there (EfficientNet's SE) stays, ours runs after it."""
    attn = site.make()
    native = getattr(site.parent, site.attr)
    if native is None or isinstance(native, nn.Identity):
        setattr(site.parent, site.attr, attn)
        return Installed(site.path, count_params(attn))
    setattr(site.parent, site.attr, nn.Sequential(native, attn))
    return Installed(f"{site.path}.1", count_params(attn))


def _replace_conv(site: Site) -> Installed:
    old = site.module
    if not isinstance(old, nn.Conv2d):  # only a pattern can point at something else
        raise site.error(f"{site.path} is a {type(old).__name__}, not a conv to replace", key="pattern")
    attn = site.make(old.in_channels, out_channels=old.out_channels, stride=old.stride[0],
                     feat_size=site.feat_size)
    parent = site.parent
    setattr(parent, site.attr, attn)
    if site.info.includes_norm_act:  # the module normalises and activates its own output
        # ResNet's block: bn2, act2 follow conv2; timm's ConvNormAct: its bn (a BatchNormAct2d) follows its conv
        for follower in ("bn2", "act2") if site.attr != "conv" else ("bn", "norm", "act"):
            if isinstance(getattr(parent, follower, None), nn.Module):
                setattr(parent, follower, nn.Identity())
    return Installed(site.path, count_params(attn) - count_params(old), replaced=site.path)


def _replace_pool(site: Site) -> Installed:
    """A head module in timm's global pool's place; it may rebuild the classifier (head.py). Its GMACs are the
    head's own: the counter sees none in a pool, and the classifier is not the head's."""
    return Installed(f"{site.path}.attn", replace_pool(site.model, site.path, site.make(), site.spec.name))


def _hook(site: Site, name: str, apply, register: str) -> Installed:
    """The module hangs off the hooked one as child `name` (or, for a Sequential, off an ancestor: blocks.py)."""
    attn = site.make()
    holder, suffix, holder_path = hook_holder(site.model, site.path)
    attr = f"{name}_{suffix}" if suffix else name
    setattr(holder, attr, attn)
    getattr(site.module, register)(partial(apply, holder, attr))
    return Installed(f"{holder_path}.{attr}" if holder_path else attr, count_params(attn))


def _hook_after(site: Site) -> Installed:
    return _hook(site, "attn_out", _apply_attn_out, "register_forward_hook")


def _hook_before(site: Site) -> Installed:
    return _hook(site, "attn_in", _apply_attn_in, "register_forward_pre_hook")


@dataclass(frozen=True)
class Installer:
    """How a site takes its module: `install` puts it there; the dry forward reads the site's shape from its
    input (`hook="pre"`) or its output ("post"); `fills_slot`: the site may be an empty (None) slot, which the
    dry forward fills with an Identity to see its input."""

    install: Callable[[Site], Installed]
    hook: Literal["pre", "post"] = "pre"
    fills_slot: bool = False


INSTALLERS: dict[str, Installer] = {
    "slot": Installer(_fill_slot, fills_slot=True),
    "replace": Installer(_replace_conv),
    "pool": Installer(_replace_pool),
    "out": Installer(_hook_after, hook="post"),
    "in": Installer(_hook_before),
}


def _probe_shapes(model: nn.Module, sites, in_chans: int, image_size: int) -> dict[str, list]:
    """One dry forward: the feature shapes (C, H, W) seen at every site (one per distinct call), as its
    installer's hook says; a type name where it sees no tensor (a list of maps, a tuple)."""
    shapes, handles, probes = {}, [], []

    def recorder(path):  # hooks must return None, or they would replace the module's input/output
        def record(module, args, output=None):
            seen = args[0] if output is None and args else output
            shape = tuple(seen.shape[1:]) if isinstance(seen, torch.Tensor) else type(seen).__name__
            shapes.setdefault(path, [])
            if shape not in shapes[path]:
                shapes[path].append(shape)
        return record

    for path, how in sites:
        installer = INSTALLERS[how]
        parent, _, attr = path.rpartition(".")
        if installer.fills_slot and getattr(model.get_submodule(parent), attr) is None:
            setattr(model.get_submodule(parent), attr, nn.Identity())  # a probe in the empty slot
            probes.append((parent, attr))
        mod = model.get_submodule(path)
        register = mod.register_forward_hook if installer.hook == "post" else mod.register_forward_pre_hook
        handles.append(register(recorder(path)))
    try:
        dry_forward(model, in_chans, image_size)
    finally:
        for h in handles:
            h.remove()
        for parent, attr in probes:
            setattr(model.get_submodule(parent), attr, None)
    return shapes


def _instead(spec: AttentionSpec) -> str:
    others = [p for p in POSITIONS if p not in (spec.position, "conv")] if spec.position != "conv" else ["pattern"]
    return f"try position {', '.join(others)}"


def _check_map(model: nn.Module, spec: AttentionSpec, path: str, seen: list) -> None:
    """One (C, H, W) map at `path`, or a one-line refusal naming the family, the position and what else to try."""
    family, where = type(model).__name__, f"position {spec.position!r} at {path}"
    if any(not isinstance(s, tuple) for s in seen):
        kind = next(s for s in seen if not isinstance(s, tuple))
        raise AblateError(f"{family}: {where} meets a {kind} of tensors, not a (B, C, H, W) map; {_instead(spec)}",
                          key="position")
    if any(len(s) != 3 for s in seen):
        raise AblateError(f"{family}: {where} meets a {len(seen[0]) + 1}-d tensor, not a (B, C, H, W) feature map "
                          f"(a token sequence?); {_instead(spec)}", key="position")
    if len(seen) > 1:
        raise AblateError(f"{family}: {where} runs on {len(seen)} different shapes ({seen[0]}, {seen[1]}) in one "
                          f"forward, so no one module fits; {_instead(spec)}", key="position")


def _position(spec: AttentionSpec, info: AttentionInfo) -> Position:
    """spec.position's table entry, once it is known to take this kind of module and this init."""
    if spec.position not in POSITIONS:  # config validation refuses it first; this guards specs built without
        raise AblateError(f"{spec.position!r} is not a position (allowed: {', '.join(POSITIONS)})",
                          key="position")
    position = POSITIONS[spec.position]
    if info.kind not in position.kinds:
        allowed = ", ".join(sorted(name for name, p in POSITIONS.items() if info.kind in p.kinds))
        raise AblateError(f"{spec.name!r} is a {info.kind} module; it goes at {allowed}, "
                          f"not {spec.position!r}", key="position")
    if spec.init == "identity" and info.kind != "gate":
        raise AblateError(f"identity init needs a gate module; {spec.name!r} is a {info.kind} module",
                          key="init")
    return position


# for a module (a plugin's) whose paper names no single place: where its kind goes first (and block for none)
DEFAULT_PLACEMENT = {"gate": Placement("block"), "conv": Placement("conv"), "head": Placement("head")}


def with_placement(model: nn.Module, spec: AttentionSpec, info: AttentionInfo | None) -> AttentionSpec:
    """`spec` with what the user left unset taken from the paper's placement: the position, and for that
    position the paper's stages (BAM: every stage but the last)."""
    placement = (info.placement if info else None) or DEFAULT_PLACEMENT[info.kind if info else "gate"]
    position = spec.position or placement.position
    stages = spec.stages
    if stages is None and position == placement.position and placement.stages != "all":
        stages = placement.select(sorted({b.stage for b in find_blocks(model)}))
    return spec.model_copy(update=dict(position=position, stages=stages))


def inject(model: nn.Module, spec: AttentionSpec, *, in_chans: int = 3, image_size: int = 224,
           backbone: str = "") -> InsertionReport:
    """Insert `spec.name` at `spec.position` into `model` in place; return the insertion report.
    Errors are keyed relative to the spec ("position", "knobs.reduction"); the caller locates them."""
    input_size = (in_chans, image_size, image_size)
    with at("name"):
        info = None if spec.name == "none" else get_attention(spec.name)
    spec = with_placement(model, spec, info)
    base_params = count_params(model)
    base_gmacs, base_per_module = count_gmacs(model, input_size)
    report = InsertionReport(backbone or type(model).__name__, spec.name, spec.position, dict(spec.knobs),
                             image_size, base_params, base_gmacs, base_params, base_gmacs)
    if info is None:
        return report
    token = INPUT.set((in_chans, image_size))
    try:
        sites = _position(spec, info).sites(model, spec, info.kind)
    finally:
        INPUT.reset(token)
    shapes = _probe_shapes(model, sites, in_chans, image_size)
    placed = []
    for path, how in sites:
        if path not in shapes:  # a module the forward never reached (e.g. an unused branch)
            continue
        _check_map(model, spec, path, shapes[path])
        channels, height, width = shapes[path][0]
        site = Site(model, path, int(channels), (int(height), int(width)), spec, info)
        placed.append((site, INSTALLERS[how].install(site)))

    report.params = count_params(model)
    try:
        report.gmacs, per_module = count_gmacs(model, input_size)
    except Exception as e:  # noqa: BLE001 (a family's forward this injector did not foresee: one line, not a trace)
        raise AblateError(f"{type(model).__name__}: {spec.name} at position {spec.position!r} breaks its forward "
                          f"({one_line(describe(e), 160)}); {_instead(spec)}", key="position") from None
    for site, done in placed:
        replaced = base_per_module.get(done.replaced, 0.0) if done.replaced else 0.0
        gmacs = per_module.get(done.path, 0.0) - replaced
        report.rows.append(Insertion(done.path, spec.position, spec.name, site.channels, site.feat_size,
                                     done.params, gmacs))
    return report
