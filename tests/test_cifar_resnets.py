"""He et al.'s CIFAR ResNets and the pre-activation ResNet-164 as timm models: the papers' parameter counts,
SE on them against a hand formula, every position, identity at init, features_only."""
import copy
from pathlib import Path

import pytest
import timm
import torch

from ablate.backbones.cifar_resnet import CifarResNet, PreActBottleneck, ZeroPadShortcut
from ablate.cells import cell_cost
from ablate.config import AttentionSpec, ModelConfig
from ablate.cost import count_params
from ablate.inject import find_blocks, inject
from ablate.models import build_model
from ablate.report import dry_run_table
from ablate.spec import load_study

SIZE = 32
STUDIES = Path(__file__).resolve().parent.parent / "studies"


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one thread on 2 busy cores


@pytest.mark.parametrize("name, published", [
    # He et al. 2016, Table 6, and Identity Mappings, Table 2 (10 classes); the papers print 1.7M to one decimal
    ("resnet20", 0.27), ("resnet32", 0.46), ("resnet44", 0.66), ("resnet56", 0.85),
    ("resnet110", 1.7), ("preact_resnet164", 1.7),
])
def test_parameter_counts_are_the_papers(name, published):
    params = count_params(timm.create_model(name)) / 1e6
    digits = len(str(published).split(".")[1])
    assert round(params, digits) == published


def test_option_a_is_parameter_free_and_option_b_adds_two_projections():
    a, b = count_params(timm.create_model("resnet20")), count_params(timm.create_model("resnet20", shortcut="B"))
    assert a == 269_722
    assert b - a == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)  # 1x1 conv + BN at each width change
    with pytest.raises(ValueError, match="shortcut must be 'A'"):
        timm.create_model("resnet20", shortcut="C")


def test_option_a_subsamples_and_pads_zero_channels():
    x = torch.randn(2, 16, 8, 8)
    y = ZeroPadShortcut(16, 32, stride=2)(x)
    assert y.shape == (2, 32, 4, 4)
    torch.testing.assert_close(y[:, :16], x[:, :, ::2, ::2])
    assert not y[:, 16:].any()


def se_params(channels: int, reduction: int = 16) -> int:
    """timm's SEModule as ours builds it: fc1 C -> C/r and fc2 C/r -> C, both 1x1 convs with biases."""
    hidden = channels // reduction
    return 2 * channels * hidden + hidden + channels


@pytest.mark.parametrize("backbone, widths", [("resnet110", (16, 32, 64)), ("preact_resnet164", (64, 128, 256))])
@pytest.mark.parametrize("classes", [10, 100])
def test_se_adds_the_hand_formula_in_every_block(backbone, widths, classes):
    def built(name):
        return build_model(ModelConfig(backbone=backbone, attention=AttentionSpec(name=name)), classes, 3, SIZE)

    plain, se = built("none"), built("se")
    assert len(se.report.rows) == 54  # 18 blocks a stage, SE in each one's slot before the add
    assert se.params - plain.params == 18 * sum(se_params(c) for c in widths)


def test_stages_and_blocks_come_from_timms_group_matcher():
    blocks = find_blocks(timm.create_model("resnet56"))
    assert [sum(b.stage == s for b in blocks) for s in (1, 2, 3)] == [9, 9, 9]
    assert blocks[0].path == "layer1.0" and blocks[-1].path == "layer3.8"


def test_features_only_gives_the_stem_and_three_stages():
    for name, channels in (("resnet20", [16, 16, 32, 64]), ("preact_resnet164", [16, 64, 128, 256])):
        features = timm.create_model(name, features_only=True).eval()
        assert features.feature_info.channels() == channels
        maps = features(torch.randn(1, 3, SIZE, SIZE))
        assert [m.shape[1:] for m in maps] == [(c, s, s) for c, s in zip(channels, (32, 32, 16, 8))]


# a 3-stage pre-activation net of 2 bottlenecks a stage: the preact_resnet164 structure at a test's cost
NETS = {"resnet20": lambda: timm.create_model("resnet20"),
        "preact": lambda: CifarResNet(PreActBottleneck, layers=(2, 2, 2))}


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("position, module, rows", [
    ("block", "se", {"resnet20": 9, "preact": 6}), ("block_out", "cbam", {"resnet20": 9, "preact": 6}),
    ("stage", "se", {"resnet20": 3, "preact": 3}), ("stem", "eca", {"resnet20": 1, "preact": 1}),
    ("head", "se", {"resnet20": 1, "preact": 1}),
])
def test_every_gate_position_starts_at_identity_and_trains(net, position, module, rows):
    torch.manual_seed(0)
    reference = NETS[net]().eval()
    model = copy.deepcopy(reference)
    report = inject(model, AttentionSpec(name=module, position=position, init="identity"), image_size=SIZE)
    assert len(report.rows) == rows[net]
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-6, rtol=0)
    model.train()
    model(x).square().mean().backward()
    assert all(m.alpha.grad is not None for m in model.modules() if hasattr(m, "alpha"))


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("position, module, knobs", [
    ("conv", "split_attn", {}), ("conv", "sk", {"groups": 4}), ("head", "attn_pool", {}),
    ("pattern", "cbam", {}),
])
def test_conv_head_and_pattern_positions_build_and_train(net, position, module, knobs):
    model = NETS[net]()
    spec = AttentionSpec(name=module, position=position, knobs=knobs, pattern="layer2.*.conv2")
    report = inject(model, spec, image_size=SIZE)
    assert report.rows
    out = model(torch.randn(2, 3, SIZE, SIZE))
    assert out.shape == (2, 10)
    out.mean().backward()


def test_a_replaced_conv_takes_the_blocks_following_norm_and_activation():
    # split attention normalises and activates its output: the injector drops bn2/act2 after conv2 in both blocks
    for net in NETS.values():
        model = net()
        inject(model, AttentionSpec(name="split_attn", position="conv", stages=[3]), image_size=SIZE)
        block = model.layer3[1]
        assert isinstance(block.bn2, torch.nn.Identity) and isinstance(block.act2, torch.nn.Identity)
        assert isinstance(block.bn1, torch.nn.BatchNorm2d)


@pytest.mark.parametrize("study, rows, errors", [
    ("resnet_cifar_table", 5, [8.75, 7.51, 7.17, 6.97, 6.43]),
    ("se_cifar_table", 8, [6.37, 5.21, 26.88, 23.85, 5.46, 4.39, 24.33, 21.31]),
])
def test_the_cifar_studies_dry_run_without_data_beside_the_papers_numbers(study, rows, errors, tmp_path,
                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)  # data.root is relative: no CIFAR under this folder
    table = dry_run_table(load_study(STUDIES / f"{study}.yaml"), cell_cost)
    assert len(table) == rows and table["paper top-1 err"].tolist() == errors
    paper, ours = table["paper params (M)"], table["ours params (M)"]
    for published, counted in zip(paper[paper.notna()], ours[paper.notna()]):
        assert round(counted, len(str(published).split(".")[1])) == published
    if study == "se_cifar_table":  # SE's rows: the plain row's params and SE's, in each of the 54 blocks
        se = ours[table["model.attention.name"] == "se"].to_numpy()
        plain = ours[table["model.attention.name"] == "none"].to_numpy()
        added = [18 * sum(se_params(c) for c in widths) / 1e6 for widths in ((16, 32, 64), (64, 128, 256))]
        assert se - plain == pytest.approx([added[0], added[0], added[1], added[1]], abs=1e-9)
