"""Any timm backbone: every position on one model of every CNN or hybrid timm family works or refuses in one line.

"Works": the forward and backward run, a gate in identity init leaves the plain model's eval output unchanged, and
every inserted module gets a gradient. "Refuses": an AblateError of one line. Anything else (a traceback) fails.
The families are timm's own: `timm.list_models()` grouped by the module that defines them; each is represented by
its smallest model (fewest parameters) that runs at a small image size, built with random weights. Pure
transformer families (ViT, Swin, DeiT, ...: token sequences, no feature maps) are not in the sweep.

Budget: families marked HEAVY run only with ABLATE_SWEEP=all (about 5 minutes for all 69 on one core); the 44 others
take about 55 s on 2 CPU cores. The GMAC count is replaced by a plain forward (the
structure is under test, not the cost), which still catches a forward the injector breaks.
`python tests/test_any_backbone.py` prints the families x positions table.
"""
from __future__ import annotations

import copy
import os
import sys
import time

import pytest
import timm
import torch

import ablate.inject
from ablate.blocks import branch_ends
from ablate.config import AttentionSpec
from ablate.errors import AblateError
from ablate.inject import find_blocks, inject

# family (timm's module) -> (its smallest model that runs small, image size: 32 px where the family runs at it)
FAMILIES = {
    "byoanet": ("botnet26t_256", 32),  # halonet_h1, smaller, needs 256 px
    "byobnet": ("test_byobnet", 32),
    "convmixer": ("convmixer_768_32", 64),
    "convnext": ("test_convnext", 32),
    "cpubone": ("cpubone_nano", 32),
    "csatv2": ("csatv2", 64),  # 32 px is too small for it
    "cspnet": ("cs3darknet_focus_s", 32),
    "cspnext": ("cspnext_tiny", 32),
    "davit": ("davit_tiny", 64),
    "densenet": ("densenet121", 32),
    "dla": ("dla46x_c", 32),
    "dpn": ("dpn48b", 32),
    "edgenext": ("edgenext_xx_small", 32),
    "efficientformer": ("efficientformer_l1", 224),  # fixed 7x7 attention biases
    "efficientformer_v2": ("efficientformerv2_s0", 32),
    "efficientnet": ("test_efficientnet", 32),
    "efficientvim": ("efficientvim_m1", 32),
    "efficientvit_mit": ("efficientvit_b0", 32),
    "efficientvit_msra": ("efficientvit_m0", 32),
    "fasternet": ("fasternet_t0", 32),
    "fastvit": ("fastvit_t8", 32),
    "focalnet": ("focalnet_tiny_srf", 64),
    "gcvit": ("gcvit_xxtiny", 32),
    "ghostnet": ("ghostnet_050", 32),
    "hardcorenas": ("hardcorenas_b", 32),
    "hgnet": ("hgnetv2_b0", 32),
    "hrnet": ("hrnet_w18_small", 32),
    "iformer": ("iformer_t", 32),
    "inception_next": ("inception_next_atto", 32),
    "inception_resnet_v2": ("inception_resnet_v2", 96),  # 64 px shrinks a map below its 3x3 kernel
    "inception_v3": ("inception_v3", 75),
    "inception_v4": ("inception_v4", 96),
    "lcnetv2": ("lcnetv2_small", 32),
    "levit": ("levit_128s", 32),
    "lowformer": ("lowformer_b0", 32),
    "mambaout": ("test_mambaout", 32),
    "maxxvit": ("test_coatnet", 32),
    "metaformer": ("poolformerv2_s12", 32),
    "mobilenetv3": ("mobilenetv3_small_050", 32),
    "mobilenetv5": ("mobilenetv5_base", 64),
    "mobilevit": ("mobilevit_xxs", 32),
    "nasnet": ("nasnetalarge", 64),
    "nextvit": ("nextvit_small", 64),
    "nfnet": ("test_nfnet", 32),
    "pnasnet": ("pnasnet5large", 64),
    "rdnet": ("rdnet_tiny", 32),
    "regnet": ("regnetx_002", 32),
    "repghost": ("repghostnet_050", 32),
    "repvit": ("repvit_m1", 32),
    "res2net": ("res2next50", 64),
    "resnest": ("resnest14d", 32),
    "resnet": ("test_resnet", 32),
    "resnetv2": ("resnetv2_18", 32),
    "rexnet": ("rexnet_100", 32),
    "selecsls": ("selecsls42", 64),
    "senet": ("legacy_seresnet18", 32),
    "shvit": ("shvit_s1", 32),
    "sknet": ("skresnet18", 32),
    "starnet": ("starnet_s050", 32),
    "swiftformer": ("swiftformer_xs", 32),
    "tiny_vit": ("tiny_vit_5m_224", 32),
    "tresnet": ("tresnet_m", 64),
    "vgg": ("vgg11", 64),
    "visformer": ("visformer_tiny", 32),
    "vision_transformer_hybrid": ("vit_tiny_r_s16_p8_224", 32),
    "vitamin": ("vitamin_small_224", 64),
    "vovnet": ("ese_vovnet19b_slim_dw", 32),
    "xception": ("legacy_xception", 64),
    "xception_aligned": ("xception41p", 64),
}
# outside CI's 2-core budget (run them with ABLATE_SWEEP=all): a smallest model over ~20M parameters or a slow cell
# net, and the families whose cases take over 2 s here (their refusals and workings match families that stay)
HEAVY = {"convmixer", "davit", "focalnet", "inception_resnet_v2", "inception_v4", "mobilenetv5", "nasnet", "nextvit",
         "pnasnet", "res2net", "selecsls", "tresnet", "vgg", "vitamin", "xception", "xception_aligned",
         "tiny_vit", "repvit", "efficientformer", "rdnet", "efficientvit_msra", "fastvit", "iformer", "shvit",
         "lowformer"}
POSITIONS = ("block", "block_out", "branch_in", "shortcut", "stage", "stem", "head", "conv", "pattern")
# (module, position): a gate everywhere a gate goes, a second gate in the block, a conv module (split attention:
# SK's default 32 groups do not divide the test models' narrow widths, a one-line refusal), a head module
CASES = [("se", p) for p in POSITIONS if p != "conv"] + [("cbam", "block"), ("split_attn", "conv"),
                                                         ("attn_pool", "head")]
RESULTS: dict[str, dict[str, str]] = {}


def selected() -> list[str]:
    every = os.environ.get("ABLATE_SWEEP") == "all"
    return [f for f in FAMILIES if every or f not in HEAVY]


def _forward_only(model, input_size):
    """count_gmacs' stand-in: its forward (which the injector's one-line net relies on), not its FLOP counting."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *input_size))
    model.train(was_training)
    return 0.0, {}


def build(name: str, size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    try:
        return timm.create_model(name, pretrained=False, num_classes=10, img_size=size).eval()
    except TypeError:  # a family without an img_size argument
        return timm.create_model(name, pretrained=False, num_classes=10).eval()


def last_site(model: torch.nn.Module) -> str:
    """A glob for position pattern: the last block, or the last module timm taps for features."""
    try:
        return find_blocks(model)[-1].path
    except (AblateError, IndexError):
        return model.feature_info[-1]["module"]


def logits(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def run_case(plain: torch.nn.Module, x: torch.Tensor, reference: torch.Tensor, module: str, position: str,
             pattern: str | None) -> str:
    """'works' or 'refuses: <the one line>'; an assertion names what did not hold."""
    model = copy.deepcopy(plain)
    gate = module in ("se", "cbam")
    spec = AttentionSpec(name=module, position=position, init="identity" if gate else "default",
                         pattern=pattern if position == "pattern" else None)
    try:
        report = inject(model, spec, image_size=x.shape[-1])
    except AblateError as e:
        assert "\n" not in str(e), f"a refusal of more than one line: {e}"
        return f"refuses: {e}"
    assert report.rows, "nothing inserted and no refusal"
    model.eval()
    with torch.no_grad():
        out = logits(model(x))
    if gate:
        torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-4, msg="identity init changed the output")
    model.train()
    logits(model(x)).float().square().mean().backward()
    for row in report.rows:
        params = list(model.get_submodule(row.path).parameters())
        assert all(p.grad is not None for p in params), f"{row.path} is not reached by the gradient"
    return "works"


@pytest.mark.parametrize("family", selected())
def test_every_position_works_or_refuses_in_one_line(family, monkeypatch):
    monkeypatch.setattr(ablate.inject, "count_gmacs", _forward_only)
    torch.set_num_threads(1)
    name, size = FAMILIES[family]
    plain = build(name, size)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = logits(plain(x))
    pattern = last_site(plain)
    outcomes = RESULTS.setdefault(family, {})
    for module, position in CASES:
        try:
            outcomes[f"{module}@{position}"] = run_case(plain, x, reference, module, position, pattern)
        except AssertionError as e:
            raise AssertionError(f"{family} ({name}), {module} at {position}: {e}") from None
        except Exception as e:  # a traceback: the case neither works nor refuses in one line
            raise AssertionError(f"{family} ({name}), {module} at {position}: {type(e).__name__}: {e}") from e


@pytest.mark.parametrize("name, block, end", [
    ("resnet18", "layer1.0", "layer1.0.bn2"),  # exactly where timm's se slot runs: the finder agrees with timm
    ("resnet50", "layer1.0", "layer1.0.bn3"),
    ("test_convnext", "stages.0.blocks.0", "stages.0.blocks.0.drop_path"),  # after the MLP and the layer scale
    ("cs3darknet_focus_s", "stages.0.blocks.0", "stages.0.blocks.0.drop_path"),
    ("test_nfnet", "stages.0.0", "stages.0.0.drop_path"),  # before `* alpha + shortcut`
    ("test_byobnet", "stages.0.0", "stages.0.0.drop_path"),
    ("repvit_m1", "stages.0.blocks.0", "stages.0.blocks.0.channel_mixer"),  # a branch with no drop path
    ("dla46x_c", "level2.tree1", "level2.tree1.bn3"),  # its shortcut comes in as an argument
])
def test_block_finds_the_end_of_the_residual_branch(name, block, end):
    torch.set_num_threads(1)
    model = build(name, 64)
    assert branch_ends(model, [block], 3, 64) == {block: end}


def test_block_goes_there_in_identity_and_a_block_without_a_branch_refuses():
    torch.set_num_threads(1)
    model = build("test_convnext", 64)
    report = inject(model, AttentionSpec(name="se", stages=[1]), image_size=64)
    assert [r.path for r in report.rows] == ["stages.0.blocks.0.drop_path.attn_out"]
    with pytest.raises(AblateError, match=r"DenseNet blocks have neither an attention slot nor a residual branch"):
        inject(build("densenet121", 64), AttentionSpec(name="se"), image_size=64)


def test_a_module_hooked_on_a_sequential_hangs_off_an_ancestor_and_plain_weights_still_load():
    torch.set_num_threads(1)
    model = build("starnet_s050", 64)  # its first block, stages.0.0, is a ConvBN Sequential
    state = copy.deepcopy(model.state_dict())
    report = inject(model, AttentionSpec(name="se", position="stem"), image_size=64)
    assert [r.path for r in report.rows] == ["attn_in_stages_0_0"]
    assert len(model.stages[0][0]) == 2  # the Sequential runs its own two layers, not ours as a third
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("attn_in_stages_0_0.") for k in missing)


def table(results: dict[str, dict[str, str]]) -> str:
    columns = [f"{m}@{p}" for m, p in CASES]
    lines = [f"{'family':<26}" + "".join(f"{c:>15}" for c in columns)]
    for family, outcomes in sorted(results.items()):
        cells = ["works" if outcomes.get(c) == "works" else "refuses" if c in outcomes else "-" for c in columns]
        lines.append(f"{family:<26}" + "".join(f"{c:>15}" for c in cells))
    works = [sum(o.get(c) == "works" for o in results.values()) for c in columns]
    lines.append(f"{'works (of ' + str(len(results)) + ')':<26}" + "".join(f"{w:>15}" for w in works))
    return "\n".join(lines)


@pytest.fixture(autouse=True, scope="module")
def _print_table():
    yield
    if RESULTS:
        print("\n" + table(RESULTS))


if __name__ == "__main__":  # the full table and every refusal, for docs/modules.md
    os.environ.setdefault("ABLATE_SWEEP", "all")
    ablate.inject.count_gmacs = _forward_only
    torch.set_num_threads(1)
    for fam in (sys.argv[1:] or selected()):
        start = time.perf_counter()
        model_name, image = FAMILIES[fam]
        net = build(model_name, image)
        inputs = torch.randn(2, 3, image, image, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ref = logits(net(inputs))
        RESULTS[fam] = {f"{m}@{p}": run_case(net, inputs, ref, m, p, last_site(net)) for m, p in CASES}
        for case, outcome in RESULTS[fam].items():
            print(f"{fam:<26} {case:<18} {outcome}", flush=True)
        print(f"{fam:<26} {time.perf_counter() - start:.1f} s", flush=True)
    print(table(RESULTS))
