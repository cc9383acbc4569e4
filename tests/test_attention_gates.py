"""Gate-kind modules: every registered gate keeps its input's shape; bam, gc, gather_excite, coord, triplet,
simam, external: parameter counts from the papers' formulas, and one behavioural property each."""
import pytest
import torch
import torch.nn.functional as F

from ablate.attention import create_attention, list_attention
from ablate.attention.gather_excite import GatherExcite
from ablate.cost import count_params
from ablate.errors import AblateError


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("name", [info.name for info in list_attention(kind="gate")])
def test_forward_backward_keeps_shape(name):
    """The gate kind's contract, for every module registered as one (the injector relies on it)."""
    m = create_attention(name, 32)
    x = torch.randn(2, 32, 9, 11, requires_grad=True)  # C, H, W all different: catches swapped axes
    y = m(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in m.parameters())


# --- parameter counts, from each paper's layer list -------------------------------------------

def bam_params(c, r=16, n_dilated=2):
    h = c // r
    channel = (c * h + h) + 2 * h + (h * c + c) + 2 * c  # FC, BN, FC, output BN
    spatial = (c * h + h) + 2 * h + n_dilated * (9 * h * h + h + 2 * h) + (h + 1) + 2  # 1x1, 3x3s, 1x1, BN
    return channel + spatial


@pytest.mark.parametrize("c, knobs, r, n", [(64, {}, 16, 2), (32, {"reduction": 8, "num_dilated": 3}, 8, 3)])
def test_bam_param_count(c, knobs, r, n):
    assert count_params(create_attention("bam", c, **knobs)) == bam_params(c, r, n)
    assert bam_params(64) == 1303


@pytest.mark.parametrize("c, r, mip", [(64, 32, 8), (512, 32, 16), (96, 4, 24)])
def test_coord_param_count(c, r, mip):
    expected = (c * mip + mip) + 2 * mip + 2 * (mip * c + c)  # conv1, BN, conv_h and conv_w with biases
    assert count_params(create_attention("coord", c, reduction=r)) == expected


@pytest.mark.parametrize("k", [7, 3])
def test_triplet_param_count(k):
    assert count_params(create_attention("triplet", 64, kernel_size=k)) == 3 * (2 * k * k + 2)


@pytest.mark.parametrize("c, s", [(32, 64), (48, 16)])
def test_external_param_count(c, s):
    # conv1x1 with bias, M_k, M_v, conv1x1 without bias, BN
    expected = (c * c + c) + s * c + c * s + c * c + 2 * c
    assert count_params(create_attention("external", c, memory_units=s)) == expected


def test_simam_has_no_parameters():
    assert count_params(create_attention("simam", 64)) == 0


def test_gc_param_count():
    c, h = 64, 4
    expected = (c + 1) + (c * h + h) + 2 * h + (h * c + c)  # attention conv, W_1, LayerNorm, W_2
    assert count_params(create_attention("gc", c)) == expected
    assert count_params(create_attention("gc", c, fusion="scale")) == expected


def test_gather_excite_param_count():
    c = 32
    assert count_params(create_attention("gather_excite", c)) == 0  # GE-θ-
    assert count_params(create_attention("gather_excite", c, extent=4, extra_params=True)) == 2 * (9 * c + 2 * c)


# --- behaviour ------------------------------------------------------------------------------

def test_simam_matches_the_papers_energy():
    x = torch.tensor([[[[1.0, 2.0, 4.0], [0.0, -3.0, 5.0]]], [[[2.0, 2.0, 2.0], [2.0, 2.0, 2.5]]]],
                     dtype=torch.float64)
    lam = 1e-4
    m = create_attention("simam", 1, e_lambda=lam)
    mu = x.mean((2, 3), keepdim=True)
    var = x.var((2, 3), unbiased=True, keepdim=True)  # sum / (M - 1)
    energy = 4 * (var + lam) / ((x - mu) ** 2 + 2 * var + 2 * lam)  # e_t* of the paper
    torch.testing.assert_close(m(x), x * torch.sigmoid(1 / energy))


def test_simam_on_a_single_position_is_finite():
    x = torch.randn(2, 8, 1, 1)
    torch.testing.assert_close(create_attention("simam", 8)(x), x * torch.sigmoid(torch.tensor(0.5)))


def test_bam_residual_bounds_and_combine_modes_differ():
    add = create_attention("bam", 32, reduction=4).eval()
    mul = create_attention("bam", 32, reduction=4, combine="multiply").eval()
    mul.load_state_dict(add.state_dict())  # same weights, only the combination differs
    x = torch.rand(2, 32, 10, 10) + 0.1
    y_add, y_mul = add(x), mul(x)
    # F' = F + F * sigmoid(.) lies strictly between F and 2F for positive F
    assert (y_add > x).all() and (y_add < 2 * x).all()
    assert not torch.allclose(y_add, y_mul)


def test_gc_is_identity_at_init_and_adds_a_global_vector():
    x = torch.randn(2, 32, 8, 8)
    add = create_attention("gc", 32)
    assert torch.equal(add(x), x)  # the last conv is zero-initialised, weight and bias
    torch.testing.assert_close(create_attention("gc", 32, fusion="scale")(x), x / 2)
    torch.nn.init.normal_(add.mlp_add.fc2.weight)
    delta = add(x) - x
    assert delta.abs().sum() > 0
    torch.testing.assert_close(delta, delta[:, :, :1, :1].expand_as(delta))  # same vector at every position


def test_gather_excite_global_is_sigmoid_of_the_mean():
    x = torch.randn(2, 16, 7, 9)
    y = create_attention("gather_excite", 16)(x)
    torch.testing.assert_close(y, x * torch.sigmoid(x.mean((2, 3), keepdim=True)))


@pytest.mark.parametrize("extra_params", [False, True])
def test_gather_excite_extent_gates_per_block(extra_params):
    m = create_attention("gather_excite", 8, extent=2, extra_params=extra_params).eval()
    x = torch.rand(2, 8, 8, 8) + 0.5
    gate = m(x) / x
    # nearest-neighbour excite from a 4 x 4 gathered map: constant on each 2 x 2 block, not globally
    for dh, dw in ((0, 1), (1, 0), (1, 1)):
        torch.testing.assert_close(gate[..., dh::2, dw::2], gate[..., 0::2, 0::2])
    assert not torch.allclose(gate, gate[..., :1, :1].expand_as(gate))


def test_gather_excite_rejects_unbuildable_settings():
    with pytest.raises(AblateError, match=r"gather_excite.extent=3 is not allowed \(0\|2\|4\|8\)"):
        create_attention("gather_excite", 8, extent=3)
    with pytest.raises(ValueError, match="gather_excite.extent=3 is not allowed") as err:
        GatherExcite(8, extent=3)  # built directly, without the registry's knob check
    assert type(err.value) is ValueError
    # a plain ValueError, as every module raises: the injector names the site
    with pytest.raises(ValueError, match="extra_params needs extent 2, 4 or 8") as err:
        create_attention("gather_excite", 8, extent=0, extra_params=True)
    assert type(err.value) is ValueError


def test_coord_gate_factorises_into_h_and_w():
    m = create_attention("coord", 32).eval()
    x = torch.rand(2, 32, 6, 9) + 0.5
    g = m(x) / x
    # g[h, w] = a_h[h] * a_w[w], so g[h, w] * g[0, 0] = g[h, 0] * g[0, w]
    torch.testing.assert_close(g * g[..., :1, :1], g[..., :, :1] * g[..., :1, :])
    assert not torch.allclose(g, g[..., :1, :].expand_as(g))  # it does vary along H


def test_triplet_matches_the_official_rotations():
    m = create_attention("triplet", 16).eval()
    for gate in (m.cw, m.hc, m.hw):
        torch.nn.init.normal_(gate.norm.weight)  # make the three branches differ
    x = torch.randn(2, 16, 5, 7)
    y_cw = m.cw(x.permute(0, 2, 1, 3).contiguous()).permute(0, 2, 1, 3)
    y_hc = m.hc(x.permute(0, 3, 2, 1).contiguous()).permute(0, 3, 2, 1)
    torch.testing.assert_close(m(x), (y_cw + y_hc + m.hw(x)) / 3)


def test_triplet_rejects_even_kernels():
    with pytest.raises(AblateError):
        create_attention("triplet", 16, kernel_size=6)


def test_external_double_normalisation_and_block():
    c, s = 16, 8
    m = create_attention("external", c, memory_units=s).eval()
    x = torch.randn(2, c, 5, 6)
    f = F.conv2d(x, m.proj_in.weight, m.proj_in.bias).flatten(2)  # (B, C, N)
    logits = torch.einsum("sc,bcn->bsn", m.mk.weight[:, :, 0], f)
    attn = logits.softmax(dim=2)  # over the N positions
    attn = attn / attn.sum(dim=1, keepdim=True)  # then L1 over the S units
    torch.testing.assert_close(m.attention(x), attn)
    torch.testing.assert_close(attn.sum(1), torch.ones(2, 30))
    out = torch.einsum("cs,bsn->bcn", m.mv.weight[:, :, 0], attn).view_as(x)
    torch.testing.assert_close(m(x), x + m.proj_out(out))


def test_external_memories_start_transposed_but_untied():
    m = create_attention("external", 16, memory_units=8)
    torch.testing.assert_close(m.mv.weight[:, :, 0], m.mk.weight[:, :, 0].t())
    with torch.no_grad():
        m.mk.weight.zero_()
    assert m.mv.weight.abs().sum() > 0


@pytest.mark.parametrize("squeeze, pool", [("avg", lambda x: x.mean((2, 3), keepdim=True)),
                                           ("max", lambda x: x.amax((2, 3), keepdim=True))])
@pytest.mark.parametrize("excitation, gate", [("sigmoid", torch.sigmoid), ("tanh", torch.tanh), ("relu", torch.relu)])
def test_se_squeeze_and_excitation_operators_are_the_papers_table_11_and_12(squeeze, pool, excitation, gate):
    """SE's journal ablations: the squeeze operator (avg / max pooling) and the excitation's gate, which replaces
    the sigmoid; the weights are the same either way (the default is the paper's SE, parameter for parameter)."""
    m = create_attention("se", 32, reduction=4, squeeze=squeeze, excitation=excitation)
    x = torch.randn(2, 32, 5, 5)
    s = m.fc2(torch.relu(m.fc1(pool(x))))
    torch.testing.assert_close(m(x), x * gate(s))
    assert count_params(m) == count_params(create_attention("se", 32, reduction=4))
