"""fca, shuffle_attn, epsa, ela: default placement in a small backbone, ResNet-50 parameter counts against the
papers, ELA's formula by an independent computation (no authors' code to make a golden fixture from), and one
behavioural property each. Fidelity to the authors' code for fca, shuffle_attn and epsa: tests/golden/."""
import math

import pytest
import torch
import torch.nn.functional as F

from ablate.attention import create_attention
from ablate.config import AttentionSpec, ModelConfig
from ablate.models import build_model

NAMES = ("fca", "shuffle_attn", "epsa", "ela")


@pytest.fixture(autouse=True)
def _one_thread_seeded():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def built(backbone, name, image_size=32, num_classes=10, **knobs):
    spec = AttentionSpec(name=name, knobs=knobs)
    return build_model(ModelConfig(backbone=backbone, attention=spec), num_classes, 3, image_size)


# epsa's default groups (up to 16 per branch) need 64-wide 3x3 convs: resnet18's narrowest stage, not resnet10_narrow's
@pytest.mark.parametrize("name", NAMES)
def test_default_placement_trains(name):
    backbone = "resnet18" if name == "epsa" else "resnet10_narrow"
    result = built(backbone, name)
    assert result.report.rows, "nothing was inserted"
    assert {r.position for r in result.report.rows} == {"conv" if name == "epsa" else "block"}
    model = result.model.train()
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters()), "every parameter gets a gradient"


def test_epsa_names_what_a_narrow_conv_lacks():
    with pytest.raises(Exception, match="groups=16 must divide"):
        built("resnet10_narrow", "epsa")


# --- ResNet-50 parameter counts against the papers (round(params / 1e6, 2), as test_inject does for SE) ---

@pytest.mark.parametrize("name, paper", [
    ("fca", 28.07),  # FcaNet (ICCV 2021), ImageNet comparison table: FcaNet-50 28.07M
    ("epsa", 22.56),  # EPSANet (arXiv:2105.14447), ImageNet table: EPSANet-50 (Small) 22.56M
    ("shuffle_attn", 25.56),  # SA-Net (ICASSP 2021), abstract: "300 vs. 25.56M"
])
def test_resnet50_param_count_matches_the_paper(name, paper):
    params = built("resnet50", name, image_size=64, num_classes=1000).report.params
    assert round(params / 1e6, 2) == paper


def test_shuffle_attn_adds_six_parameters_per_sub_feature_channel():
    # the official layer at G = 64 adds 708 to ResNet-50, the paper's abstract says "300": see the module docstring
    report = built("resnet50", "shuffle_attn", image_size=64).report
    widths = [256] * 3 + [512] * 4 + [1024] * 6 + [2048] * 3
    assert report.params - report.base_params == sum(6 * c // 128 for c in widths) == 708


# --- ELA: the formula, computed independently ---

def ela_reference(x, weight, gamma, beta, kernel_size, norm_groups, per_group):
    """Strip means, a 1D conv written as a sum of shifted copies, GroupNorm from its definition."""
    b, c, h, w = x.shape
    pad = kernel_size // 2

    def conv1d(z):  # z: (B, C, L); weight: (C, per_group, k)
        zp = torch.cat([z.new_zeros(b, c, pad), z, z.new_zeros(b, c, pad)], dim=2)
        out = torch.zeros_like(z)
        for o in range(c):
            first = (o // per_group) * per_group
            for j in range(per_group):
                for t in range(kernel_size):
                    out[:, o] += weight[o, j, t] * zp[:, first + j, t:t + z.shape[2]]
        return out

    def group_norm(z):
        zg = z.reshape(b, norm_groups, -1)
        mean = zg.mean(-1, keepdim=True)
        var = ((zg - mean) ** 2).mean(-1, keepdim=True)
        zn = ((zg - mean) / torch.sqrt(var + 1e-5)).reshape(b, c, -1)
        return zn * gamma[None, :, None] + beta[None, :, None]

    z_h = x.sum(3) / w
    z_w = x.sum(2) / h
    y_h = 1 / (1 + torch.exp(-group_norm(conv1d(z_h))))
    y_w = 1 / (1 + torch.exp(-group_norm(conv1d(z_w))))
    return x * y_h[:, :, :, None] * y_w[:, :, None, :]


@pytest.mark.parametrize("knobs", [{}, {"kernel_size": 5, "norm_groups": 32},  # ELA-B (default), ELA-T
                                   {"kernel_size": 5, "channels_per_group": 8}])  # ELA-S
def test_ela_matches_its_formula(knobs):
    c = 32
    m = create_attention("ela", c, **knobs).eval()
    with torch.no_grad():
        m.gn.weight.normal_()
        m.gn.bias.normal_()
    x = torch.randn(2, c, 6, 9)
    k, groups, per = knobs.get("kernel_size", 7), knobs.get("norm_groups", 16), knobs.get("channels_per_group", 1)
    expected = ela_reference(x, m.conv.weight, m.gn.weight, m.gn.bias, k, groups, per)
    with torch.no_grad():
        torch.testing.assert_close(m(x), expected, rtol=0, atol=1e-5)


def test_ela_param_count():
    c = 64
    assert sum(p.numel() for p in create_attention("ela", c).parameters()) == 7 * c + 2 * c  # dw conv, GN
    assert sum(p.numel() for p in create_attention("ela", c, kernel_size=5, channels_per_group=8).parameters()) \
        == 5 * 8 * c + 2 * c


def test_ela_group_norm_falls_back_to_a_dividing_group_count():
    assert create_attention("ela", 24).gn.num_groups == 12
    with pytest.raises(ValueError, match="channels_per_group=8 must divide the 20 channels"):
        create_attention("ela", 20, channels_per_group=8)


# --- fca: the DCT filter, and GAP as its (0, 0) frequency ---

def dct_entry(freq, pos, size):  # the official build_filter
    value = math.cos(math.pi * freq * (pos + 0.5) / size) / math.sqrt(size)
    return value * math.sqrt(2) if freq else value


@pytest.mark.parametrize("channels, dct_size", [(32, 7), (40, 14)])
def test_fca_dct_buffer_is_the_official_filter(channels, dct_size):
    from ablate.attention.fca import FREQ_TABLES

    m = create_attention("fca", channels, dct_size=dct_size)
    xs, ys = FREQ_TABLES["top"]
    scale = dct_size // 7
    sizes = [len(p) for p in torch.arange(channels).tensor_split(16)]  # 40 channels: 3 x 8 then 2 x 8
    start = 0
    for i, n in enumerate(sizes):
        u, v = xs[i] * scale, ys[i] * scale
        expected = torch.tensor([[dct_entry(u, a, dct_size) * dct_entry(v, b, dct_size) for b in range(dct_size)]
                                 for a in range(dct_size)])
        for ch in range(start, start + n):
            torch.testing.assert_close(m.dct[ch], expected, rtol=0, atol=1e-6)
        start += n
    assert not any(n == "dct" for n, _ in m.named_parameters()), "the DCT filter is a fixed buffer"


def test_fca_lowest_frequency_is_global_average_pooling():
    m = create_attention("fca", 16, freq_sel="top1").eval()  # top1 = (0, 0)
    x = torch.randn(2, 16, 14, 14)  # adaptive-pooled to 7x7, as the official layer
    gap = x.mean((2, 3)) * 7  # the (0, 0) basis is 1/7 everywhere on 7x7: sum / 7 = 7 * mean
    with torch.no_grad():
        torch.testing.assert_close(m(x), x * m.fc(gap)[..., None, None], rtol=0, atol=1e-5)


# --- shuffle_attn: group fallback; epsa: branch weights ---

def test_shuffle_attn_groups_fall_back_to_a_divisor_of_half_the_channels():
    assert create_attention("shuffle_attn", 256).groups == 64
    assert create_attention("shuffle_attn", 32).groups == 16
    assert create_attention("shuffle_attn", 24).groups == 12
    with pytest.raises(ValueError, match="must be even"):
        create_attention("shuffle_attn", 15)


def test_epsa_branch_weights_are_a_softmax_over_branches_and_knobs_read_from_the_command_line():
    m = create_attention("epsa", 64, out_channels=64, kernels="3+5+7+9", groups="1+4+8+16").eval()
    x = torch.randn(2, 64, 8, 8)
    feats = torch.stack([conv(x) for conv in m.convs], dim=1)
    att = torch.stack([m.se(feats[:, i]) for i in range(4)], dim=1)
    weights = F.softmax(att, dim=1)
    torch.testing.assert_close(weights.sum(1), torch.ones_like(weights.sum(1)))
    with torch.no_grad():
        torch.testing.assert_close(m(x), (feats * weights).flatten(1, 2))
