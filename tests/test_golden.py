"""Fidelity against the authors' released code: each file in tests/golden/ holds a seeded input, the output the
authors' own module computed on it, and that module's weights in tensor order (parameters then buffers, as
`state_dict()` lists them), with the repository, commit and path the module came from. ablate's module, built
with the fixture's knobs and given those weights by order, must compute the same output within 1e-5.

A fixture is data, read with torch's safe loader. How one is made: tests/golden/README.md.
"""
from pathlib import Path

import pytest
import torch

from ablate.attention import create_attention, get_attention

GOLDEN = sorted((Path(__file__).parent / "golden").glob("*.pt"))


def load_fixture(path: Path) -> dict:
    return torch.load(path, weights_only=True)  # a fixture is data: the safe loader, never the unpickler


def copy_by_order(module: torch.nn.Module, tensors: list[torch.Tensor]) -> None:
    """Give `module` the authors' weights in order; a Linear's (out, in) and a 1x1 conv's (out, in, 1, 1) are the
    same numbers, so a shape may differ where the element count does not."""
    state = module.state_dict()
    floats = [k for k, v in state.items() if v.is_floating_point()]
    assert len(floats) == len(tensors), f"{len(floats)} tensors here, {len(tensors)} in the authors' module"
    for key, theirs in zip(floats, tensors):
        assert state[key].numel() == theirs.numel(), f"{key}: {tuple(state[key].shape)} vs {tuple(theirs.shape)}"
        state[key] = theirs.reshape(state[key].shape).clone()
    module.load_state_dict(state)


@pytest.mark.parametrize("path", GOLDEN, ids=[p.stem for p in GOLDEN])
def test_module_matches_the_authors_code(path):
    fx = load_fixture(path)
    assert {"name", "channels", "knobs", "input", "output", "state", "repo", "commit", "path"} <= set(fx)
    assert len(fx["commit"]) == 40, "a fixture names the exact commit its numbers came from"
    info = get_attention(fx["name"])
    structural = dict(fx.get("structural", {}))
    module = create_attention(fx["name"], fx["channels"], **structural, **fx["knobs"]).eval()
    copy_by_order(module, fx["state"])
    with torch.no_grad():
        ours = module(fx["input"])
    if info.kind == "head" and ours.shape != fx["output"].shape:
        ours = ours.reshape(fx["output"].shape)
    torch.testing.assert_close(ours, fx["output"], rtol=0, atol=1e-5)
