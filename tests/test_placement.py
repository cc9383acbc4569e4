"""Paper placements: an unset position (and, for that position, unset stages) is where the module's paper puts it."""
import pytest
import timm
import torch

from ablate.attention import BUILTIN, AttentionInfo, get_attention
from ablate.config import AttentionSpec, ModelConfig
from ablate.inject import with_placement
from ablate.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one thread on 2 busy cores


def built(backbone, image_size=64, classes=1000, **attention):
    return build_model(ModelConfig(backbone=backbone, attention=attention), classes, 3, image_size).report


@pytest.mark.parametrize("attention", [{}, {"position": "stage"}])
def test_bam_sits_at_the_bottlenecks_between_stages_with_the_papers_params(attention):
    report = built("resnet50", name="bam", **attention)
    assert [r.path for r in report.rows] == ["layer1.2.attn_out", "layer2.3.attn_out", "layer3.5.attn_out"]
    assert abs(report.params / 1e6 - 25.92) <= 0.01  # Park et al., Table: ResNet50 + BAM 25.92M
    assert report.position == "stage"


def test_what_the_user_says_wins_over_the_paper():
    assert len(built("resnet50", name="bam", position="stage", stages=[1, 2, 3, 4]).rows) == 4
    assert len(built("resnet50", name="bam", position="block").rows) == 16
    # on a 3-stage CIFAR ResNet, "every stage but the last" is stages 1 and 2
    assert [r.path for r in built("resnet20", 32, 10, name="bam").rows] == ["layer1.2.attn_out", "layer2.2.attn_out"]


def test_every_built_in_module_has_its_papers_placement():
    assert [info.name for info in BUILTIN if info.placement is None] == []


@pytest.mark.parametrize("name, backbone, size, position, paths", [
    # GCNet: after the last 1x1 conv, before the add (the block's slot), stages c3-c5
    ("gc", "resnet18", 64, "block", [f"layer{s}.{i}.se" for s in (2, 3, 4) for i in (0, 1)]),
    # EANet: on the backbone's output
    ("external", "resnet18", 64, "stage", ["layer4.1.attn_out"]),
    # VOLO: outlookers in the first, finest stage
    ("outlook", "resnet18", 64, "block_out", ["layer1.0.attn_out", "layer1.1.attn_out"]),
    # HaloNet: every 3x3 conv (block_size 8 divides all of resnet20's 32/16/8 px maps)
    ("halo", "resnet20", 32, "conv", [f"layer{s}.{i}.conv2" for s in (1, 2, 3) for i in (0, 1, 2)]),
])
def test_the_name_alone_builds_what_the_paper_built(name, backbone, size, position, paths):
    report = built(backbone, size, 10, name=name)
    assert report.position == position == get_attention(name).placement.position
    assert [r.path for r in report.rows] == paths


def test_a_plugin_without_a_placement_goes_where_its_kind_goes_first():
    model = timm.create_model("resnet18")
    for kind, position in (("gate", "block"), ("conv", "conv"), ("head", "head")):
        info = AttentionInfo("x", "x:X", kind=kind, paper="-")
        assert with_placement(model, AttentionSpec(name="x"), info).position == position


def test_conv_modules_replace_convs():
    bot = built("resnet18", name="bot_mhsa")  # BoTNet: the 3x3 convs of the last stage (c5)
    assert [r.path for r in bot.rows] == ["layer4.0.conv2", "layer4.1.conv2"]
    assert [r.path for r in built("resnet18", name="sk").rows][:1] == ["layer1.0.conv2"]


def test_split_attention_downsamples_as_the_released_resnest50():
    assert get_attention("split_attn").knobs["avd"].default is True
    released = timm.create_model("resnest50d", pretrained=False)  # the paper's ResNeSt-50 in timm
    assert isinstance(released.layer2[0].avd_last, torch.nn.AvgPool2d) and released.layer2[0].avd_first is None
    ours = build_model(ModelConfig(backbone="resnet50", attention={"name": "split_attn"}), 1000, 3, 64).model
    assert ours.layer2[0].conv2.conv.stride == (1, 1) and isinstance(ours.layer2[0].conv2.avd, torch.nn.AvgPool2d)
