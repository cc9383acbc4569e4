"""Conv-, gate- and head-kind attention modules: sk, split_attn, bot_mhsa, halo, cot, outlook, attn_pool."""
import pytest
import torch
import torch.nn.functional as F

from ablate.attention import create_attention, get_attention, list_attention
from ablate.cost import count_params
from ablate.errors import AblateError

CONV_MODULES = ("sk", "split_attn", "bot_mhsa", "halo", "cot")
B, C_IN, C_OUT, HW = 2, 32, 64, 16


def conv(name, stride=1, channels=C_IN, out_channels=C_OUT, hw=HW, **knobs):
    return create_attention(name, channels, out_channels=out_channels, stride=stride, feat_size=(hw, hw), **knobs)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one thread on 2 busy cores


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --- every conv-kind module: shapes, gradients, metadata ---

@pytest.mark.parametrize("name", CONV_MODULES)
@pytest.mark.parametrize("stride", [1, 2])
def test_conv_shape_and_backward(name, stride):
    m = conv(name, stride)
    x = torch.randn(B, C_IN, HW, HW, requires_grad=True)
    y = m(x)
    assert y.shape == (B, C_OUT, HW // stride, HW // stride)
    y.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    missing = [k for k, p in m.named_parameters() if p.grad is None]
    assert not missing, f"{name}: parameters without gradient: {missing}"


@pytest.mark.parametrize("name", CONV_MODULES)
def test_includes_norm_act_only_where_the_output_is_normalised_and_activated(name):
    """The flag makes the injector drop the block's bn2 + act2: true only when the module's own output
    is normalised (BN in train mode: its scale does not follow the input's) and activated (ReLU/SiLU)."""
    m = conv(name)
    x = torch.randn(B, C_IN, HW, HW)
    y, y10 = m(x), m(10 * x)
    normalised = bool(y10.std() < 2 * y.std())  # unnormalised attention outputs grow ~10x
    assert normalised is get_attention(name).includes_norm_act
    if normalised:
        assert y10.min() >= -0.28  # SiLU's minimum is -0.278; ReLU's 0


@pytest.mark.parametrize("name", [info.name for info in list_attention(kind="head")])
def test_heads_pool_to_vectors_of_out_features(name):
    """The head kind's contract: (B, C, H, W) -> (B, out_features), out_features defaulting to C."""
    m = create_attention(name, 32)
    y = m(torch.randn(B, 32, 5, 7))
    assert y.shape == (B, getattr(m, "out_features", 32))


# --- Selective Kernel ---

def test_sk_param_count_and_attention_width():
    # two 3x3 grouped paths (BN each), fc_reduce + BN, fc_select; d = max(C / r, L) as the paper
    c_in, c_out, g, d = 64, 64, 32, 32
    m = conv("sk", channels=c_in, out_channels=c_out)
    assert m.attn.fc_reduce.out_channels == d
    paths = 2 * (c_in // g * 9 * c_out + 2 * c_out)
    attn = c_out * d + 2 * d + d * 2 * c_out
    assert count_params(m) == paths + attn
    assert [p.conv.dilation for p in m.paths] == [(1, 1), (2, 2)]  # 3x3 and "5x5" as dilated 3x3


def test_sk_reduction_sets_width_above_min():
    m = conv("sk", channels=64, out_channels=128, reduction=2, min_attn_channels=8)
    assert m.attn.fc_reduce.out_channels == 64


def test_sk_bad_groups_is_clear():
    with pytest.raises(ValueError, match="groups=24"):
        conv("sk", channels=32, out_channels=32, groups=24)


# --- ResNeSt split attention ---

def test_split_attn_param_count():
    c_in, c_out, r, g = 32, 64, 2, 1
    attn = max(c_in * r // 4, 32)  # official: max(C * radix / reduction, 32)
    m = conv("split_attn", channels=c_in, out_channels=c_out)
    expected = (c_in // (g * r) * 9 * c_out * r + 2 * r * c_out  # grouped conv + bn0
                + c_out // g * attn + attn + 2 * attn  # fc1 (bias) + bn1
                + attn // g * r * c_out + r * c_out)  # fc2 (bias)
    assert count_params(m) == expected


def test_split_attn_avd_is_avg_pool_after_block():
    strided = conv("split_attn", stride=2, avd=True).eval()
    plain = conv("split_attn", stride=1).eval()
    plain.load_state_dict(strided.state_dict())
    x = torch.randn(B, C_IN, HW, HW)
    with torch.no_grad():
        torch.testing.assert_close(strided(x), F.avg_pool2d(plain(x), 3, 2, padding=1))


def test_split_attn_radix_weights_are_a_softmax():
    m = conv("split_attn", radix=4).eval()
    logits = torch.randn(B, m.fc2.out_channels)
    w = m.rsoftmax(logits).view(B, 4, -1)
    torch.testing.assert_close(w.sum(1), torch.ones(B, C_OUT))


# --- BoTNet MHSA ---

def test_bot_mhsa_param_count():
    # q, k, v all out_channels wide (no bias) + relative embeddings (2H-1 and 2W-1 rows of head dim)
    heads, h, w = 4, 8, 12
    m = create_attention("bot_mhsa", C_IN, out_channels=C_OUT, feat_size=(h, w), heads=heads)
    assert count_params(m) == C_IN * 3 * C_OUT + (2 * h - 1 + 2 * w - 1) * (C_OUT // heads)
    assert m(torch.randn(B, C_IN, h, w)).shape == (B, C_OUT, h, w)


def test_bot_mhsa_stride_is_avg_pool_after_attention():
    strided = conv("bot_mhsa", stride=2)
    plain = conv("bot_mhsa", stride=1)
    plain.load_state_dict(strided.state_dict())
    x = torch.randn(B, C_IN, HW, HW)
    with torch.no_grad():
        torch.testing.assert_close(strided(x), F.avg_pool2d(plain(x), 2))


def test_bot_mhsa_needs_feat_size_and_dividing_heads():
    with pytest.raises(ValueError, match="feature size"):
        create_attention("bot_mhsa", C_IN, out_channels=C_OUT)
    with pytest.raises(ValueError, match="heads=3"):
        conv("bot_mhsa", heads=3)


# --- HaloNet ---

def test_halo_param_count():
    heads, block, halo = 8, 8, 3
    win = block + 2 * halo
    m = conv("halo", heads=heads, block_size=block, halo_size=halo)
    assert count_params(m) == C_IN * 3 * C_OUT + 2 * (2 * win - 1) * (C_OUT // heads)


@pytest.mark.parametrize("hw,block", [(12, 8), (14, 4)])
def test_halo_rejects_feat_size_not_divisible_by_block(hw, block):
    with pytest.raises(ValueError, match=f"{hw}x{hw} is not divisible by block_size={block}"):
        conv("halo", hw=hw, block_size=block)


def test_halo_accepts_smaller_block():
    m = conv("halo", hw=12, block_size=4, halo_size=1)
    assert m(torch.randn(B, C_IN, 12, 12)).shape == (B, C_OUT, 12, 12)


# --- CoT ---

def cot_param_count(c_in, c_out, k=3, reduction=2):
    maps, embed, fuse = c_out // 8, c_out // reduction, max(c_out * 2 // 4, 32)
    key = c_in // 4 * k * k * c_out + 2 * c_out  # 4-group kxk conv + BN
    attn = (c_in + c_out) * embed + 2 * embed + embed * k * k * maps + k * k * maps + 2 * k * k * maps  # ..+ GN
    value = c_in * c_out + 2 * c_out
    bn = 2 * c_out
    se = c_out * fuse + fuse + 2 * fuse + fuse * 2 * c_out + 2 * c_out
    return key + attn + value + bn + se


@pytest.mark.parametrize("c_in,c_out,k,reduction", [(64, 64, 3, 2), (32, 64, 5, 4)])
def test_cot_param_count(c_in, c_out, k, reduction):
    m = conv("cot", channels=c_in, out_channels=c_out, kernel_size=k, reduction=reduction)
    assert count_params(m) == cot_param_count(c_in, c_out, k, reduction)


def test_cot_local_aggregation_matches_official_indexing():
    # channel c is aggregated with attention map c % (C / 8) over its kxk neighbourhood (zero padded)
    m = conv("cot", channels=C_OUT, out_channels=C_OUT, hw=8).eval()
    seen = {}
    m.embed.register_forward_hook(lambda mod, i, o: seen.__setitem__("w", o))
    m.value_embed.register_forward_hook(lambda mod, i, o: seen.__setitem__("v", o))
    m.bn.register_forward_hook(lambda mod, i, o: seen.__setitem__("agg", i[0]))
    with torch.no_grad():
        m(torch.randn(B, C_OUT, 8, 8))
    w, v = seen["w"], seen["v"]
    maps = C_OUT // 8
    w = w.view(B, maps, 9, 8, 8)[:, torch.arange(C_OUT) % maps]  # B, C, 9, H, W
    v_pad = F.pad(v, [1, 1, 1, 1])
    expected = sum(w[:, :, 3 * a + b] * v_pad[:, :, a:a + 8, b:b + 8] for a in range(3) for b in range(3))
    torch.testing.assert_close(seen["agg"], expected)


def test_cot_stride_is_avg_pool_before_layer():
    strided = conv("cot", stride=2).eval()
    plain = conv("cot", stride=1, hw=HW // 2).eval()
    plain.load_state_dict(strided.state_dict())
    x = torch.randn(B, C_IN, HW, HW)
    with torch.no_grad():
        torch.testing.assert_close(strided(x), plain(F.avg_pool2d(x, 3, 2, padding=1)))


def test_cot_knob_validation():
    with pytest.raises(AblateError, match="must be odd"):
        conv("cot", kernel_size=4)
    with pytest.raises(ValueError, match="output channels"):
        conv("cot", out_channels=60)


# --- Outlook attention (gate) ---

@pytest.mark.parametrize("stride,hw", [(1, 8), (2, 8), (2, 7)])
def test_outlook_preserves_shape(stride, hw):
    m = create_attention("outlook", 32, heads=4, stride=stride)
    x = torch.randn(B, 32, hw, hw, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape
    y.square().mean().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_outlook_stride_is_a_knob_not_a_structural_argument():
    # a gate's stride must reach the module (conv kinds alone take stride from the backbone)
    x = torch.randn(B, 32, 8, 8)
    outs = []
    for stride in (1, 2):
        torch.manual_seed(0)  # the same weights: stride changes no parameter shape
        outs.append(create_attention("outlook", 32, heads=4, stride=stride)(x))
    assert not torch.allclose(*outs)
    with pytest.raises(AblateError, match=r"outlook.stride=9 is out of range \(int in \[1, 4\]\)"):
        create_attention("outlook", 32, heads=4, stride=9)


def test_outlook_param_count_and_residual():
    c, heads, k = 32, 4, 3
    m = create_attention("outlook", c, heads=heads, kernel_size=k)
    # LayerNorm, v (no bias), attn (k^4 * heads, bias), proj (bias)
    assert count_params(m) == 2 * c + c * c + c * k ** 4 * heads + k ** 4 * heads + c * c + c
    torch.nn.init.zeros_(m.attn.proj.weight)
    torch.nn.init.zeros_(m.attn.proj.bias)
    x = torch.randn(B, c, 8, 8)
    torch.testing.assert_close(m(x), x)  # a zero attention branch leaves the features unchanged


def test_outlook_heads_must_divide_channels():
    with pytest.raises(ValueError, match="heads=3 must divide the 32 channels"):
        create_attention("outlook", 32, heads=3)
    with pytest.raises(AblateError, match="out of range"):
        create_attention("outlook", 32, heads=64)


# --- attention-weighted average pooling (head) ---

def test_attn_pool_params_and_shape():
    m = create_attention("attn_pool", 48)
    assert count_params(m) == 48
    x = torch.randn(B, 48, 7, 9, requires_grad=True)
    y = m(x)
    assert y.shape == (B, 48)
    y.sum().backward()
    assert m.weight.grad is not None and x.grad is not None


def test_attn_pool_weights_sum_to_one():
    m = create_attention("attn_pool", 32)
    a = m.attention(torch.randn(B, 32, 5, 6) * 10)
    assert a.shape == (B, 5, 6)
    assert (a >= 0).all()
    torch.testing.assert_close(a.sum((1, 2)), torch.ones(B))


def test_attn_pool_constant_scores_give_mean_pooling():
    m = create_attention("attn_pool", 32)
    with torch.no_grad():
        m.weight.zero_()
        m.weight[0] = 1.0
    x = torch.randn(B, 32, 6, 6)
    x[:, 0] = 3.0  # scores x . w are the same at every position
    torch.testing.assert_close(m(x), x.mean((2, 3)))


def test_attn_pool_follows_the_scores():
    m = create_attention("attn_pool", 32)
    with torch.no_grad():
        m.weight.zero_()
        m.weight[0] = 1.0
    x = torch.randn(B, 32, 6, 6)
    x[:, 0, 2, 4] = 100.0  # one position dominates the softmax
    torch.testing.assert_close(m(x), x[:, :, 2, 4])
    assert not torch.allclose(m(x), x.mean((2, 3)))
