"""A timm model's blocks and stages, and where inside a block its residual branch ends.

Blocks come from timm's own `group_matcher` (any family timm can group); a matched module that is a stage
holding a `blocks` sequence (CoAtNet, GCViT, EfficientFormerV2, ...) stands for those blocks. A family timm
cannot group (no group_matcher, or one without "blocks") is one line naming it and what still works.

`branch_ends` finds, in blocks without timm's `se` slot (ConvNeXt, CSPNet, NFNet, ByobNet, ...), the module whose
output is the end of the residual branch, just before the add: where SE-style papers put the gate. It is found
from the block's behaviour in one traced forward, not from per-family names:
  1. the block's output is a (B, C, H, W) map;
  2. candidates are the block's submodules, run exactly once in the whole forward, whose output has the block's
     output shape and which do not read the block's input directly (a 1x1 branch or a shortcut projection does),
     outside a shortcut path (a submodule named downsample, shortcut or skip);
  3. walking back from the last one to run, the first whose output, set to zero, (a) changes the block's output
     (it feeds it) and (b) leaves it still depending on the block's input (a shortcut carries the input past it):
     a module after the add (ResNet's act3) fails (b), a module off the output path fails (a).
A block where no candidate passes (DenseNet's concatenating layers, a plain conv stack) has no residual branch.
"""
from __future__ import annotations

import re
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import nn

from ablate.errors import AblateError, at

INPUT = ContextVar("INPUT", default=(3, 224))  # (in_chans, image_size) of the inject call, for site finders' probes
SHORTCUT_NAMES = frozenset({"downsample", "shortcut", "skip", "short_cut"})
CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)  # adding a child to these changes what they run


@dataclass
class Block:
    path: str
    stage: int  # 1-based, as papers count
    index: int  # 0-based within its stage


def _matched(model: nn.Module) -> list[tuple[str, tuple]]:
    """(path, regex groups) of the modules timm's group_matcher calls blocks, in module order."""
    family = type(model).__name__
    matcher = getattr(model, "group_matcher", None)
    if matcher is None:
        raise AblateError(f"{family} has no group_matcher, so its blocks are unknown (position head or pattern "
                          f"still work)")
    groups = matcher(coarse=False)
    spec = groups.get("blocks") if isinstance(groups, dict) else None  # Inception's is a function of names
    if isinstance(spec, (list, tuple)):
        spec = [(p, ordinal) for p, ordinal in spec if isinstance(p, str)]
    if not spec:
        raise AblateError(f"{family}'s group_matcher names no blocks, so its blocks are unknown (position head or "
                          f"pattern still work)")
    patterns = [spec] if isinstance(spec, str) else [p for p, ordinal in spec if ordinal is None]
    found = []
    for name, _ in model.named_modules():
        for pattern in patterns:
            m = re.fullmatch(pattern.lstrip("^"), name)
            if m:
                found.append((name, m.groups()))
    return found


def _expand_stages(model: nn.Module, found: list[tuple[str, tuple]]) -> list[tuple[str, tuple]]:
    """A matched stage that holds a `blocks` sequence stands for its blocks: (stage path, (stage, block))."""
    expanded = []
    for name, groups in found:
        inner = getattr(model.get_submodule(name), "blocks", None)
        if isinstance(inner, (nn.Sequential, nn.ModuleList)) and len(inner) > 0:
            expanded += [(f"{name}.blocks.{i}", (name, str(i))) for i in range(len(inner))]
        else:
            expanded.append((name, groups))
    return expanded


def find_blocks(model: nn.Module) -> list[Block]:
    """Residual blocks in module order with their stage, from timm's group_matcher."""
    found = _expand_stages(model, _matched(model))
    if not found:
        return []
    if len(found[0][1]) >= 2:  # (stage, block) numbering in the path itself
        stage_keys = list(dict.fromkeys(groups[0] for _, groups in found))
        stages = [stage_keys.index(groups[0]) + 1 for _, groups in found]
    else:  # one block sequence (Xception): stages end where timm's feature_info taps the network
        taps = [f["module"] for f in getattr(model, "feature_info", [])]
        ends = [i for i, (name, _) in enumerate(found)
                if any(t == name or t.startswith(name + ".") for t in taps)]
        stages = [1 + sum(1 for e in ends if e < i) for i in range(len(found))]
    blocks, counts = [], {}
    for (name, _), stage in zip(found, stages):
        blocks.append(Block(name, stage, counts.get(stage, 0)))
        counts[stage] = counts.get(stage, 0) + 1
    return blocks


def blocks_for(model: nn.Module, spec) -> list[Block]:
    """The model's blocks for a block-wise position (`spec`: an AttentionSpec), or a one-line refusal."""
    with at("position"):
        blocks = find_blocks(model)
    if not blocks:
        raise AblateError(f"{type(model).__name__}: no residual blocks found for position {spec.position!r} "
                          f"(use head or pattern)", key="position")
    return blocks


def select_blocks(blocks: list[Block], spec) -> list[Block]:
    """The blocks `spec.stages` and `spec.every` pick."""
    available = sorted({b.stage for b in blocks})
    if spec.stages:
        missing = [s for s in spec.stages if s not in available]
        if missing:
            raise AblateError(f"stage {missing[0]} does not exist "
                              f"(this backbone has stages {available[0]}-{available[-1]})", key="stages")
    wanted = set(spec.stages or available)
    return [b for b in blocks if b.stage in wanted and b.index % spec.every == 0]


def hook_holder(model: nn.Module, path: str) -> tuple[nn.Module, str, str]:
    """Where the module hooked on `path` lives: (holder, attribute, its path). On the hooked module itself
    (`path.attn_out`), unless that is a Sequential-like container, which would run a new child as one of its
    layers: then on the nearest ancestor that is not one, under a name spelling the path."""
    parts = path.split(".") if path else []
    for depth in range(len(parts), -1, -1):
        holder_path = ".".join(parts[:depth])
        holder = model.get_submodule(holder_path) if holder_path else model
        if not isinstance(holder, CONTAINERS):
            suffix = "_".join(parts[depth:])
            return holder, suffix, holder_path
    return model, "_".join(parts), ""


def spatial_conv(block: nn.Module) -> str | None:
    """The block's last dense (not depthwise) 3x3 'same' conv outside a shortcut path, e.g. ByobNet's `conv2_kxk.conv`,
    CSPNet's and RegNet's `conv2.conv`: the conv that SK, split attention, BoT and halo replace."""
    found = None
    for name, module in block.named_modules():
        if (isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3) and module.padding == (1, 1)
                and not _in_shortcut(name) and (module.groups == 1 or module.groups < module.in_channels)):
            found = name
    return found


# ---------------------------------------------------------------- the end of a block's residual branch

def _tensors_like(value, make):
    if isinstance(value, torch.Tensor):
        return make(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_tensors_like(v, make) for v in value)
    return value


def _in_shortcut(relative: str) -> bool:
    return any(part in SHORTCUT_NAMES for part in relative.split("."))


class _Trace:
    """One forward: each block's first (input, args, kwargs, output) copied, its submodules' output shapes in the
    order they finished (and whether they read the block's input), and how often every module ran."""

    def __init__(self, model: nn.Module, paths: list[str]):
        self.model, self.calls, self.seen = model, {}, {}
        self.order = {p: [] for p in paths}
        self.owner = {f"{p}.{name}": (p, name) for p in paths for name, _ in model.get_submodule(p).named_modules()
                      if name}
        self.paths = paths

    def _count(self, name):
        def hook(module, args, output):
            self.calls[name] = self.calls.get(name, 0) + 1
            block, relative = self.owner.get(name, (None, None))
            if block in self.seen and "out" not in self.seen[block]:
                reads_input = any(a is self.seen[block]["input"] for a in args)
                shape = output.shape if isinstance(output, torch.Tensor) else None
                self.order[block].append((relative, shape, reads_input))
        return hook

    def _enter(self, path):
        def hook(module, args, kwargs):
            if path not in self.seen:  # copies: later in-place ops (a pre-activation's ReLU) must not change them
                self.seen[path] = {"input": args[0] if args else None, "args": _tensors_like(args, torch.clone),
                                   "kwargs": {k: _tensors_like(v, torch.clone) for k, v in kwargs.items()}}
        return hook

    def _leave(self, path):
        def hook(module, args, kwargs, output):
            if "out" not in self.seen[path]:
                self.seen[path]["out"] = output.clone() if isinstance(output, torch.Tensor) else output
        return hook

    def run(self, x: torch.Tensor) -> _Trace:
        handles = [module.register_forward_hook(self._count(name)) for name, module in self.model.named_modules()]
        for path in self.paths:
            block = self.model.get_submodule(path)
            handles.append(block.register_forward_pre_hook(self._enter(path), with_kwargs=True))
            handles.append(block.register_forward_hook(self._leave(path), with_kwargs=True))
        try:
            with torch.no_grad():
                self.model(x)
        finally:
            for h in handles:
                h.remove()
        return self


def _passes(block: nn.Module, candidate: nn.Module, args, kwargs, reference: torch.Tensor) -> bool:
    """Fixing `candidate`'s output (to noise: zeros would change nothing after a zero-initialised last norm)
    changes the block's output, which still depends on the block's input."""
    noise = {}

    def fixed(module, args, output):
        return noise.setdefault(0, torch.randn_like(output)).clone()  # a clone: the add may be in place

    zero = candidate.register_forward_hook(fixed)
    kw = {k: _tensors_like(v, torch.clone) for k, v in kwargs.items()}
    try:
        with torch.no_grad():
            zeroed = block(*_tensors_like(args, torch.clone), **kw)
            other = block(*_tensors_like(args, lambda t: torch.randn_like(t) + 1.0), **kw)
    except Exception:  # noqa: BLE001 (a block that cannot run on other inputs: not this candidate)
        return False
    finally:
        zero.remove()
    if not isinstance(zeroed, torch.Tensor) or zeroed.shape != reference.shape:
        return False
    # exact comparisons: a branch may start near zero (ConvNeXt's layer scale is 1e-6), and a rerun is bitwise equal
    feeds = not torch.equal(zeroed, reference)
    carries_input = not torch.equal(zeroed, other)
    return feeds and carries_input


def _branch_end(block: nn.Module, path: str, trace: _Trace) -> str | None:
    record = trace.seen.get(path)
    out = record and record.get("out")
    if not isinstance(out, torch.Tensor) or out.dim() != 4:
        return None
    for relative, shape, reads_input in reversed(trace.order[path]):
        full = f"{path}.{relative}"
        if reads_input or trace.calls.get(full) != 1 or _in_shortcut(relative) or shape != out.shape:
            continue
        if _passes(block, block.get_submodule(relative), record["args"], record["kwargs"], out):
            return full
    return None


def dry_forward(model: nn.Module, in_chans: int, image_size: int) -> None:
    """One forward of a zero image in eval mode without grad, the model's mode given back: what hooks read shapes
    and inputs from."""
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_chans, image_size, image_size))
    finally:
        model.train(was_training)


def branch_ends(model: nn.Module, paths: list[str], in_chans: int, image_size: int) -> dict[str, str]:
    """For each block path, the path of the module that ends its residual branch (absent: none found)."""
    was_training = model.training
    model.eval()
    x = torch.randn(1, in_chans, image_size, image_size, generator=torch.Generator().manual_seed(0))
    try:
        with torch.random.fork_rng(devices=[]):  # the noise must not move the seed the modules are built from
            trace = _Trace(model, paths).run(x)
            ends = {path: _branch_end(model.get_submodule(path), path, trace) for path in paths}
    finally:
        model.train(was_training)
    return {path: end for path, end in ends.items() if end}
