"""non_local, gct, srm, sge: the papers' ResNet-50 parameter counts, the formulas of the variants no fixture in
tests/golden/ covers (computed here independently), and each module at its default placement in a tiny backbone."""
import pytest
import torch
import torch.nn.functional as F

from ablate.attention import create_attention
from ablate.config import AttentionSpec, ModelConfig
from ablate.models import build_model

MODULES = ("non_local", "gct", "srm", "sge")


def resnet50_params(name: str) -> int:
    return build_model(ModelConfig(backbone="resnet50", attention=AttentionSpec(name=name)), 1000, 3, 64).params


def test_resnet50_srm_and_sge_give_the_papers_parameter_counts():
    # SRM paper's ImageNet table: ResNet-50 25.56M, SRM-ResNet-50 25.62M (4C per block: CFC 2C + BN 2C)
    assert round(resnet50_params("none") / 1e6, 2) == 25.56
    assert round(resnet50_params("srm") / 1e6, 2) == 25.62
    # SGE paper's ImageNet table, printed to the thousand: ResNet50 25.557M, SGE-ResNet50 25.559M (G = 64)
    assert round(resnet50_params("none") / 1e6, 3) == 25.557
    assert round(resnet50_params("sge") / 1e6, 3) == 25.559


@pytest.mark.parametrize("name", MODULES)
def test_default_placement_in_a_tiny_backbone_trains(name):
    torch.manual_seed(0)
    built = build_model(ModelConfig(backbone="resnet10_narrow", attention=AttentionSpec(name=name)), 10, 3, 16)
    assert built.report.rows, "nothing was inserted"
    model = built.model.train()
    out = model(torch.randn(4, 3, 16, 16))
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", ("non_local", "gct"))
def test_the_paper_init_is_the_identity(name):
    x = torch.randn(2, 32, 6, 7)
    torch.testing.assert_close(create_attention(name, 32).eval()(x), x)


def _randomise(module):
    torch.manual_seed(1)
    with torch.no_grad():
        for key, t in module.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5 if key.endswith("running_var") else torch.randn_like(t))
    return module.eval()


@pytest.mark.parametrize("sub_sample", ["input", "projections", "none"])
def test_non_local_is_the_embedded_gaussian_formula(sub_sample):
    """z = BN(W_z y) + x, y_i = sum_j softmax_j(theta_i . phi_j) g_j, no scale (the paper), pooled per knob."""
    m = _randomise(create_attention("non_local", 16, sub_sample=sub_sample))
    x = torch.randn(2, 16, 6, 8)
    theta = F.conv2d(x, m.t.weight, m.t.bias)
    src = F.max_pool2d(x, 2) if sub_sample == "input" else x
    phi, g = F.conv2d(src, m.p.weight, m.p.bias), F.conv2d(src, m.g.weight, m.g.bias)
    if sub_sample == "projections":
        phi, g = F.max_pool2d(phi, 2), F.max_pool2d(g, 2)
    assert theta.shape[1] == 8  # C/2
    f = torch.einsum("bci,bcj->bij", theta.flatten(2), phi.flatten(2))
    y = torch.einsum("bij,bcj->bci", f.softmax(-1), g.flatten(2)).reshape(2, 8, 6, 8)
    wz = F.conv2d(y, m.z.weight, m.z.bias)
    bn = F.batch_norm(wz, m.norm.running_mean, m.norm.running_var, m.norm.weight, m.norm.bias, eps=m.norm.eps)
    with torch.no_grad():
        torch.testing.assert_close(m(x), bn + x, atol=1e-5, rtol=1e-5)


def test_srm_and_sge_use_the_papers_biased_statistics():
    x = torch.randn(2, 16, 5, 7)
    srm = _randomise(create_attention("srm", 16))
    mu, sigma = x.mean((2, 3)), (x.var((2, 3), unbiased=False) + 1e-5).sqrt()
    z = mu * srm.cfc[:, 0] + sigma * srm.cfc[:, 1]
    bn = srm.bn
    gate = torch.sigmoid((z - bn.running_mean) / (bn.running_var + bn.eps).sqrt() * bn.weight + bn.bias)
    with torch.no_grad():
        torch.testing.assert_close(srm(x), x * gate[:, :, None, None])

    sge = _randomise(create_attention("sge", 16, groups=4))
    xg = x.reshape(2, 4, 4, 5, 7)  # (B, G, C/G, H, W)
    c = (xg * xg.mean((3, 4), keepdim=True)).sum(2)  # g . x_i per position
    c_hat = (c - c.mean((2, 3), keepdim=True)) / (c.std((2, 3), unbiased=False, keepdim=True) + 1e-5)
    a = c_hat * sge.weight.reshape(1, 4, 1, 1) + sge.bias.reshape(1, 4, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(sge(x), (xg * torch.sigmoid(a)[:, :, None]).reshape(x.shape))


def test_sge_groups_fall_back_to_a_divisor_and_bad_knobs_are_value_errors():
    assert create_attention("sge", 256).groups == 64
    assert create_attention("sge", 40).groups == 8  # gcd(64, 40)
    assert create_attention("sge", 7, groups=3).groups == 1
    with pytest.raises(ValueError, match="channels // reduction"):
        from ablate.attention.non_local import NonLocalBlock
        NonLocalBlock(4, reduction=8)


def test_gct_l1_mode_is_the_papers_l1_embedding():
    m = _randomise(create_attention("gct", 8, mode="l1"))
    x = torch.randn(2, 8, 4, 4)
    s = x.abs().sum((2, 3), keepdim=True) * m.alpha
    gate = 1 + torch.tanh(m.gamma * s / (s.abs().mean(1, keepdim=True) + 1e-5) + m.beta)
    with torch.no_grad():
        torch.testing.assert_close(m(x), x * gate)
