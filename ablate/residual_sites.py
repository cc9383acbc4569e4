"""SE's integration strategies as positions: a gate on a residual unit's branch input or on its identity path.

Hu et al., Squeeze-and-Excitation Networks, TPAMI 2019 (arXiv:1709.01507v4), section 6.5 (integration strategy),
Fig. 5 and Table 14, place the SE unit of a ResNet-50 four ways around the residual unit (paraphrased):
  standard     on the residual branch's output, before the summation     position `block` (timm's `se` slot)
  SE-PRE       moved before the residual unit: on the branch's input      position `branch_in` (this file)
  SE-POST      after the summation with the identity branch (after ReLU)  position `block_out` (timm's ResNet
               block ends with act(x + shortcut); its hook is on the block's output)
  SE-Identity  on the identity connection, in parallel to the residual unit  position `shortcut` (this file)
Their parameter counts in tests/test_integration_strategies.py are computed here, not taken from the paper.

Both positions need a ResNet-style residual unit, checked from the block's behaviour in one dry forward: a `conv1`
that reads the block's own input (the first layer of the residual branch) and a `downsample` attribute (None or
the projection) that, where it runs, reads the block's input too (the identity path), as in timm's BasicBlock and
Bottleneck (ResNet, ResNeXt, ResNet-D, Wide), the legacy SENet blocks, SKNet, ResNeSt, Res2Net, RegNet, TResNet and
ablate's CIFAR ResNets (timm's BasicBlock). Other blocks refuse in one line naming the position and what it needs,
among them a pre-activation unit (ablate's ResNet-164), whose conv1 and projection read the BN-ReLU'd input.

  branch_in  a forward-pre hook on the block's conv1: the module sees the block's input channels, and the identity
             path keeps the block's input.
  shortcut   the module scales what the sum adds from the identity path, so it sees the block's output channels:
             after the projection where the block downsamples or widens (its `downsample`), and, where the block
             has none (None or an Identity), as the block's `downsample` itself (timm's forward applies a
             downsample that is not None to the shortcut). Every original state_dict key is unchanged.
"""
from __future__ import annotations

from torch import nn

from ablate.blocks import INPUT, Block, blocks_for, dry_forward, select_blocks
from ablate.errors import AblateError

BRANCH_START, IDENTITY = "conv1", "downsample"  # timm's ResNet names: the branch's first layer, the identity path
NEEDS = "a residual unit whose conv1 and downsample (identity path) both read the block's input, as timm's ResNets"


def _reads_of_the_input(model: nn.Module, blocks: list[Block]) -> dict[str, dict[str, bool]]:
    """One dry forward: for each block, whether its conv1 and its downsample (an Identity probe where it is None)
    ran on the block's own input tensor; a layer that never ran is absent."""
    inputs, reads, handles, probes = {}, {}, [], []

    def enter(path):
        def hook(module, args):
            inputs.setdefault(path, args[0] if args else None)
        return hook

    def read(path, name):
        def hook(module, args):
            reads.setdefault(path, {}).setdefault(name, bool(args) and args[0] is inputs.get(path))
        return hook

    for b in blocks:
        block = model.get_submodule(b.path)
        if getattr(block, IDENTITY) is None:
            setattr(block, IDENTITY, nn.Identity())  # a probe in the empty slot, as the shortcut position fills it
            probes.append(block)
        handles.append(block.register_forward_pre_hook(enter(b.path)))
        for name in (BRANCH_START, IDENTITY):
            handles.append(getattr(block, name).register_forward_pre_hook(read(b.path, name)))
    try:
        dry_forward(model, *INPUT.get())
    finally:
        for h in handles:
            h.remove()
        for block in probes:
            setattr(block, IDENTITY, None)
    return reads


def residual_units(model: nn.Module, spec) -> list[Block]:
    """The blocks `spec` selects, once each is known to be a residual unit the two positions understand."""
    chosen = select_blocks(blocks_for(model, spec), spec)
    family, where = type(model).__name__, f"position {spec.position!r} needs {NEEDS}"
    for b in chosen:
        block = model.get_submodule(b.path)
        identity = getattr(block, IDENTITY, False)
        if not isinstance(getattr(block, BRANCH_START, None), nn.Module) or not (
                identity is None or isinstance(identity, nn.Module)):
            raise AblateError(f"{family} block {b.path} has no {BRANCH_START} and {IDENTITY}: {where} "
                              f"(use block, block_out, stage or pattern)", key="position")
    reads = _reads_of_the_input(model, chosen)
    for b in chosen:
        for name in (BRANCH_START, IDENTITY):
            if not reads.get(b.path, {}).get(name):
                raise AblateError(f"{family} block {b.path}: its {name} does not read the block's input (a "
                                  f"pre-activation?): {where} (use block, block_out, stage or pattern)",
                                  key="position")
    return chosen


def branch_in_sites(model: nn.Module, spec, kind: str) -> list[tuple[str, str]]:
    """SE-PRE: before the residual branch's first layer, so the identity path keeps the block's input."""
    return [(f"{b.path}.{BRANCH_START}", "in") for b in residual_units(model, spec)]


def shortcut_sites(model: nn.Module, spec, kind: str) -> list[tuple[str, str]]:
    """SE-Identity: after the block's projection, or as the block's empty (or Identity) downsample slot."""
    sites = []
    for b in residual_units(model, spec):
        identity = getattr(model.get_submodule(b.path), IDENTITY)
        empty = identity is None or isinstance(identity, nn.Identity)
        sites.append((f"{b.path}.{IDENTITY}", "slot" if empty else "out"))
    return sites
