"""Strip pooling, DANet's PAM and CAM, CCNet's criss-cross attention and the lambda layer: each at its paper's
placement in a tiny backbone, the paper formulas where the golden fixtures (the authors' code) do not reach,
and LambdaResNet-50's parameter count."""
import pytest
import torch
import torch.nn.functional as F

from ablate.attention import create_attention, get_attention
from ablate.config import AttentionSpec, ModelConfig
from ablate.errors import AblateError
from ablate.models import build_model

MODULES = ["strip_pool", "danet_position", "danet_channel", "criss_cross", "lambda"]


@pytest.mark.parametrize("name", MODULES)
def test_default_placement_in_a_tiny_backbone_trains(name):
    torch.manual_seed(0)
    built = build_model(ModelConfig(backbone="resnet10_narrow", attention=AttentionSpec(name=name)), 10, 3, 32)
    assert built.report.rows, "nothing was inserted"
    assert {r.position for r in built.report.rows} == {get_attention(name).placement.position}
    out = built.model.train()(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    out.square().mean().backward()
    grads = [p.grad for n, p in built.model.named_parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_lambda_resnet50_has_the_papers_parameter_count():
    """Bello, ICLR 2021, Sec. 5.1: the ResNet-50 comparison table lists the lambda layer (|k|=16, |h|=4, |u|=1,
    r=23 lambda convolutions in place of every bottleneck's 3x3 conv) at 15.0M parameters."""
    built = build_model(ModelConfig(backbone="resnet50", attention=AttentionSpec(name="lambda")), 1000, 3, 64)
    assert len(built.report.rows) == 16  # every bottleneck of ResNet-50
    assert round(built.report.params / 1e6, 1) == 15.0


def _perturb(module):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for t in list(module.parameters()) + [b for b in module.buffers() if b.is_floating_point()]:
            t.copy_(torch.randn(t.shape, generator=g) * 0.5 + (1.0 if t.ndim == 1 else 0.0))
        for name, b in module.named_buffers():
            if name.endswith("running_var"):
                b.abs_().add_(0.5)


@pytest.mark.parametrize("stride", [1, 2])
def test_lambda_layer_computes_the_papers_equations(stride):
    """The author released no runnable PyTorch code; this recomputes the paper's lambda layer (Sec. 3 and its
    pseudo-code) with unfold and einsum: y_n = q_n (K^T V + sum_m E_{n-m} V_m) per head, then a 2x2 average pool
    for stride 2."""
    c, h, w, heads, k, r = 16, 6, 5, 4, 4, 3
    layer = create_attention("lambda", c, out_channels=c, stride=stride, heads=heads, key_depth=k, context=r).eval()
    _perturb(layer)
    x = torch.randn(2, c, h, w)
    with torch.no_grad():
        ours = layer(x)
        bn_q, bn_v = layer.norm_q, layer.norm_v
        qkv = F.conv2d(x, layer.qkv.weight)
        q, keys, v = qkv.split([heads * k, k, c // heads], dim=1)
        q = F.batch_norm(q, bn_q.running_mean, bn_q.running_var, bn_q.weight, bn_q.bias, eps=bn_q.eps)
        v = F.batch_norm(v, bn_v.running_mean, bn_v.running_var, bn_v.weight, bn_v.bias, eps=bn_v.eps)
        q = q.view(2, heads, k, h * w)  # (b, heads, k, n)
        keys = keys.flatten(2).softmax(dim=-1)  # (b, k, m): normalised over the context positions
        v_flat = v.flatten(2)  # (b, v, m)
        content = torch.einsum("bkm,bvm->bkv", keys, v_flat)
        windows = F.unfold(v, r, padding=r // 2).view(2, c // heads, r * r, h * w)  # (b, v, offset, n)
        embedding = layer.conv_lambda.weight.view(k, r * r)  # E: one r x r kernel per key
        position = torch.einsum("ko,bvon->bnkv", embedding, windows)
        y = torch.einsum("bhkn,bkv->bhvn", q, content) + torch.einsum("bhkn,bnkv->bhvn", q, position)
        y = y.reshape(2, c, h, w)
        if stride == 2:
            y = F.avg_pool2d(y, 2, ceil_mode=True)  # 6 x 5 -> 3 x 3, as a strided 3x3 conv
    torch.testing.assert_close(ours, y, rtol=0, atol=1e-5)


def test_lambda_lambda_convolution_has_no_bias_and_checks_its_widths():
    assert create_attention("lambda", 64, out_channels=64).conv_lambda.bias is None
    with pytest.raises(ValueError, match="heads=3 must divide the 64 output channels"):
        create_attention("lambda", 64, out_channels=64, heads=3)
    with pytest.raises(ValueError, match="as many output as input channels"):
        create_attention("lambda", 64, out_channels=128)


def test_danet_channel_attention_is_the_papers_softmax_of_similarities():
    """CAM, Eqs. 3-4: x_ji = softmax_i(A_j . A_i), E_j = beta sum_i x_ji A_i + A_j (the official code's
    max-minus energy is the golden fixture)."""
    cam = create_attention("danet_channel", 6)
    x = torch.randn(2, 6, 4, 3)
    torch.testing.assert_close(cam(x), x)  # beta = 0 at init
    with torch.no_grad():
        cam.gamma.fill_(0.3)
        a = x.flatten(2)
        expected = 0.3 * (torch.softmax(torch.einsum("bjn,bin->bji", a, a), dim=-1) @ a).view_as(x) + x
        torch.testing.assert_close(cam(x), expected)


def test_danet_position_attention_is_c_wide_in_the_paper_and_starts_as_identity():
    pam = create_attention("danet_position", 12)
    assert pam.query_conv.out_channels == pam.key_conv.out_channels == 12  # paper: {B, C} in R^{C x H x W}
    assert create_attention("danet_position", 12, reduction=8).query_conv.out_channels == 1  # official: C // 8
    x = torch.randn(2, 12, 3, 5)
    torch.testing.assert_close(pam(x), x)
    with pytest.raises(AblateError, match="reduction=8 is out of range for 4 channels"):
        create_attention("danet_position", 4, reduction=8)


def test_criss_cross_attends_to_each_positions_row_and_column_once():
    """Brute force over positions: u = (i, j) attends to its column and its row, itself counted once."""
    cca = create_attention("criss_cross", 16, recurrence=1)
    _perturb(cca)
    x = torch.randn(1, 16, 3, 4)
    with torch.no_grad():
        q, k, v = cca.query_conv(x)[0], cca.key_conv(x)[0], cca.value_conv(x)[0]
        expected = torch.empty_like(x[0])
        for i in range(3):
            for j in range(4):
                path = [(g, j) for g in range(3) if g != i] + [(i, g) for g in range(4)]
                logits = torch.stack([q[:, i, j] @ k[:, a, b] for a, b in path])
                weights = logits.softmax(0)
                expected[:, i, j] = sum(wt * v[:, a, b] for wt, (a, b) in zip(weights, path))
        expected = cca.gamma * expected + x[0]
        torch.testing.assert_close(cca(x)[0], expected, rtol=0, atol=1e-5)
        twice = create_attention("criss_cross", 16, recurrence=2)
        twice.load_state_dict(cca.state_dict())
        torch.testing.assert_close(twice(x), cca(cca(x)))


def test_strip_pooling_is_the_papers_gate():
    """z = x * sigmoid(f(y^h + y^v)), y^h / y^v a 1D conv (k=3) of the row / column means (no norm by default)."""
    spm = create_attention("strip_pool", 8)
    x = torch.randn(2, 8, 5, 7)
    with torch.no_grad():
        rows = F.conv1d(x.mean(3), spm.conv1.weight.squeeze(3), padding=1)  # (b, c, H)
        cols = F.conv1d(x.mean(2), spm.conv2.weight.squeeze(2), padding=1)  # (b, c, W)
        y = rows[..., :, None] + cols[..., None, :]
        expected = x * torch.sigmoid(F.conv2d(y, spm.conv3.weight, spm.conv3.bias))
        torch.testing.assert_close(spm(x), expected)
    assert create_attention("strip_pool", 1)(torch.randn(1, 1, 1, 1)).shape == (1, 1, 1, 1)


def test_lambda_halves_odd_maps_as_the_strided_conv_it_replaces():
    layer = create_attention("lambda", 32, out_channels=32, stride=2, feat_size=(7, 7))
    assert layer(torch.randn(1, 32, 7, 7)).shape == (1, 32, 4, 4)
    built = build_model(ModelConfig(backbone="resnet10_narrow", attention=AttentionSpec(name="lambda")), 10, 3, 48)
    assert built.model(torch.randn(1, 3, 48, 48)).shape == (1, 10)  # 12 -> 6 -> 3 -> 2 px
