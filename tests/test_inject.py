"""Injection into timm families: positions, shapes, identity at init, parameter counts, errors."""
import copy

import pytest
import timm
import torch

from ablate.attention import list_attention
from ablate.config import AttentionSpec, ModelConfig
from ablate.errors import AblateError
from ablate.inject import find_blocks, inject
from ablate.models import build_model

# family -> the gate position it has (ConvNeXt has no attention slot in its blocks)
FAMILIES = {
    "resnet18": "block", "resnet50": "block", "resnext50_32x4d": "block", "resnet50d": "block",
    "wide_resnet50_2": "block", "efficientnet_b0": "block", "mobilenetv3_small_100": "block",
    "regnety_002": "block", "convnext_atto": "block_out", "resnet20": "block",  # resnet20: ablate.backbones
}
SIZE = 32
_plain_cache = {}


def plain(name):
    if name not in _plain_cache:
        torch.manual_seed(0)
        _plain_cache[name] = timm.create_model(name, num_classes=10).eval()
    return copy.deepcopy(_plain_cache[name])


def gate_modules():
    return [info.name for info in list_attention(kind="gate")]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("module", gate_modules())
def test_gate_in_every_family_keeps_shape_trains_and_starts_at_identity(family, module):
    x = torch.randn(2, 3, SIZE, SIZE)
    reference = plain(family)
    model = copy.deepcopy(reference)
    report = inject(model, AttentionSpec(name=module, position=FAMILIES[family], init="identity"), image_size=SIZE)
    assert report.rows, "nothing was inserted"
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-6, rtol=0)
    model.train()
    out = model(x)
    assert out.shape == (2, 10)
    out.square().mean().backward()
    alphas = [m.alpha for m in model.modules() if hasattr(m, "alpha") and isinstance(m.alpha, torch.nn.Parameter)]
    assert alphas and all(a.grad is not None for a in alphas)


def test_resnet50_se_and_cbam_give_the_papers_parameter_counts():
    def params(name):
        cfg = ModelConfig(backbone="resnet50", attention=AttentionSpec(name=name))
        return build_model(cfg, 1000, 3, 64).params

    assert round(params("none") / 1e6, 2) == 25.56
    se = params("se")
    assert round(se / 1e6, 2) == 28.09
    assert se == sum(p.numel() for p in timm.create_model("seresnet50").parameters())  # exactly timm's SE-ResNet-50
    assert round(params("cbam") / 1e6, 2) == 28.09
    assert 0 < params("eca") - params("none") < 100


def test_cbam_gmac_delta_on_resnet50_matches_the_paper():
    report = build_model(ModelConfig(backbone="resnet50", attention=AttentionSpec(name="cbam")), 1000, 3, 224).report
    assert abs((report.gmacs - report.base_gmacs) - 0.006) <= 0.003  # paper: 3.858 -> 3.864 "GFLOPs", which are GMACs
    assert sum(r.params for r in report.rows) == report.params - report.base_params
    assert abs(sum(r.gmacs for r in report.rows) - (report.gmacs - report.base_gmacs)) < 1e-6


def test_blocks_and_stages_are_found_from_timm_group_matcher():
    blocks = find_blocks(plain("resnet50"))
    assert [sum(b.stage == s for b in blocks) for s in (1, 2, 3, 4)] == [3, 4, 6, 3]
    assert blocks[0].path == "layer1.0" and blocks[-1].path == "layer4.2"
    convnext = find_blocks(plain("convnext_atto"))
    assert {b.stage for b in convnext} == {1, 2, 3, 4}


@pytest.mark.parametrize("position, stages, every, expected", [
    ("block", [3, 4], 1, ["layer3.0.se", "layer3.1.se", "layer4.0.se", "layer4.1.se"]),
    ("block_out", None, 2, ["layer1.0.attn_out", "layer2.0.attn_out", "layer3.0.attn_out", "layer4.0.attn_out"]),
    ("stage", [1, 2, 3], 1, ["layer1.1.attn_out", "layer2.1.attn_out", "layer3.1.attn_out"]),
    ("stem", None, 1, ["layer1.0.attn_in"]),
    ("head", None, 1, ["global_pool.attn_in"]),
])
def test_positions_select_the_right_places(position, stages, every, expected):
    model = plain("resnet18")
    report = inject(model, AttentionSpec(name="se", position=position, stages=stages, every=every), image_size=SIZE)
    assert [r.path for r in report.rows] == expected
    assert model(torch.randn(1, 3, SIZE, SIZE)).shape == (1, 10)


def test_channels_and_feature_sizes_come_from_the_dry_forward():
    report = inject(plain("resnet50"), AttentionSpec(name="bam", position="stage", stages=[1, 2, 3]), image_size=64)
    assert [(r.channels, r.feat_size) for r in report.rows] == [(256, (16, 16)), (512, (8, 8)), (1024, (4, 4))]


def test_efficientnet_keeps_its_native_se_and_adds_ours_after_it():
    model = plain("efficientnet_b0")
    report = inject(model, AttentionSpec(name="cbam", stages=[1]), image_size=SIZE)
    slot = model.get_submodule(report.rows[0].path.rsplit(".", 1)[0])
    assert type(slot[0]).__name__ == "SqueezeExcite" and type(slot[1]).__name__ == "CBAM"


def test_pattern_position_and_plain_checkpoints_still_load():
    model = plain("resnet18")
    state = copy.deepcopy(model.state_dict())
    report = inject(model, AttentionSpec(name="cbam", position="pattern", pattern="layer3.*.conv2"), image_size=SIZE)
    assert [r.path for r in report.rows] == ["layer3.0.conv2.attn_out", "layer3.1.conv2.attn_out"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(".attn_out." in k for k in missing)


@pytest.mark.parametrize("module", ["sk", "split_attn", "cot", "bot_mhsa"])
def test_conv_modules_replace_the_3x3_conv(module):
    model = plain("resnet50")
    report = inject(model, AttentionSpec(name=module, position="conv", stages=[4]), image_size=64)
    assert [r.path for r in report.rows] == ["layer4.0.conv2", "layer4.1.conv2", "layer4.2.conv2"]
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 10)
    out.mean().backward()


@pytest.mark.parametrize("spec, message", [
    (dict(name="cbma"), "unknown attention module 'cbma' (did you mean cbam"),
    (dict(name="se", stages=[5]), "stages: stage 5 does not exist (this backbone has stages 1-4)"),
    (dict(name="se", position="conv"), "'se' is a gate module; it goes at"),
    (dict(name="sk", position="block"), "'sk' is a conv module"),
    (dict(name="sk", position="conv", init="identity"), "identity init needs a gate module"),
    (dict(name="se", position="pattern", pattern="nothing.*"), "matches no module"),
    (dict(name="se", knobs={"reduction": 1024}), "out of range for 64 channels"),
])
def test_bad_specs_raise_one_line_errors(spec, message):
    with pytest.raises(AblateError) as err:
        inject(plain("resnet18"), AttentionSpec(**spec), image_size=SIZE)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_convnext_has_no_block_slot_so_block_ends_its_residual_branch():  # tests/test_any_backbone.py: every family
    report = inject(plain("convnext_atto"), AttentionSpec(name="se", stages=[4]), image_size=SIZE)
    assert [r.path for r in report.rows] == [f"stages.3.blocks.{i}.drop_path.attn_out" for i in (0, 1)]


@pytest.mark.parametrize("family", ["resnet18", "convnext_atto"])  # flattening pool / (B, C, 1, 1) pool
def test_head_module_replaces_global_pooling(family):
    model = plain(family)
    report = inject(model, AttentionSpec(name="attn_pool", position="head"), image_size=SIZE)
    channels = report.rows[0].channels
    assert report.rows[0].params == channels  # one score weight per channel (DeepMoji)
    out = model(torch.randn(2, 3, SIZE, SIZE))
    assert out.shape == (2, 10)
    out.sum().backward()
