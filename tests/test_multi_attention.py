"""The Multi-Attention head: shapes and gradients, its data path, the classifier swap, the CLI and its study."""
from pathlib import Path

import pytest
import timm
import torch

import ablate.backbones  # noqa: F401  (resnet10_narrow)
from ablate.attention import create_attention, get_attention
from ablate.config import AttentionSpec
from ablate.cost import count_params
from ablate.inject import inject

STUDY = Path(__file__).resolve().parents[1] / "studies" / "multi_attention.yaml"
SPEC = AttentionSpec(name="multi_attention", position="head")


def head_params(c: int, hidden: int = 512, reduction: int = 16, k: int = 7) -> int:
    """ChannelGate MLP + two spatial convs + DeepMoji weights + BatchNorm1d + Linear(C, hidden)."""
    r = c // reduction
    return (c * r + r + r * c + c) + 2 * (2 * k * k + 1) + c + 2 * c + (c * hidden + hidden)


def test_registered_as_a_head_with_the_seeds_defaults():
    info = get_attention("multi_attention")
    assert info.kind == "head"
    assert info.defaults() == {"reduction": 16, "kernel_size": 7, "hidden": 512, "dropout": 0.5,
                               "second_spatial": "map"}
    head = create_attention("multi_attention", 64)
    assert head.out_features == 512 and count_params(head) == head_params(64)


@pytest.mark.parametrize("family, size", [("resnet18", 32), ("xception41", 64), ("convnext_atto", 32)])
def test_forward_backward_and_the_classifier_takes_the_heads_features(family, size):
    torch.manual_seed(0)
    model = timm.create_model(family, num_classes=7)
    old_classifier = count_params(model.get_classifier())
    report = inject(model, SPEC, image_size=size, backbone=family)
    channels = report.rows[0].channels
    assert model.get_classifier().in_features == 512 and model.get_classifier().out_features == 7
    assert model.num_features == channels  # restored after timm's reset_classifier
    # added = new head + new classifier - old classifier (- ConvNeXt's head norm, which the head's BN replaces)
    norm = 2 * channels if family == "convnext_atto" else 0
    assert report.rows[0].params == head_params(channels) + (512 * 7 + 7) - old_classifier - norm
    assert report.params - report.base_params == report.rows[0].params
    model.train()
    out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 7)
    out.sum().backward()
    head = model.get_submodule(report.rows[0].path)
    assert all(p.grad is not None for p in head.parameters())


@pytest.mark.parametrize("second_spatial", ["map", "features"])
def test_data_path_with_constant_gates_is_plain_tensor_arithmetic(monkeypatch, second_spatial):
    torch.manual_seed(0)
    model = timm.create_model("resnet10_narrow", num_classes=5)
    report = inject(model, AttentionSpec(name="multi_attention", position="head",
                                         knobs={"second_spatial": second_spatial}), image_size=32)
    head = model.get_submodule(report.rows[0].path)
    with torch.no_grad():  # a non-trivial eval-mode BatchNorm
        head.norm.running_mean.uniform_(-1, 1)
        head.norm.running_var.uniform_(0.5, 2)
        head.norm.weight.uniform_(0.5, 1.5)
        head.norm.bias.uniform_(-0.5, 0.5)
    monkeypatch.setattr(head.channel, "gate", lambda x: torch.full((x.shape[0], x.shape[1], 1, 1), 0.5))
    for gate in (head.spatial1, head.spatial2):
        monkeypatch.setattr(gate, "gate", lambda x: torch.full((x.shape[0], 1, *x.shape[2:]), 0.5))
    monkeypatch.setattr(head.awg, "attention", lambda x: torch.full((x.shape[0], *x.shape[2:]), 1 / x[0, 0].numel()))
    model.eval()
    x = torch.randn(3, 3, 64, 64)  # 2x2 feature maps
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape[2:] == (2, 2)
        mean = feats.mean((2, 3))
        gapx = 0.25 * mean  # channel 0.5, then spatial 0.5
        wvgx = torch.full_like(mean, 0.5) if second_spatial == "map" else 0.25 * mean
        pooled = (gapx + wvgx) / 2 + mean  # + DeepMoji with uniform weights = plain mean
        bn = head.norm
        normed = (pooled - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
        hidden = torch.relu(normed @ head.fc.weight.T + head.fc.bias)  # dropout is identity in eval
        classifier = model.get_classifier()
        expected = hidden @ classifier.weight.T + classifier.bias
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def test_inspect_xception41_prints_the_heads_params_and_gmacs(run_cli):
    proc = run_cli("inspect", "xception41", "--attention", "multi_attention", "--position", "head",
                   "--image-size", "71")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    row = next(line for line in out.splitlines() if line.startswith("head.global_pool.attn"))
    # 1000 classes: the classifier shrinks from 2048 to 512 inputs
    added = head_params(2048) + (512 * 1000 + 1000) - (2048 * 1000 + 1000)
    assert row.split()[1:5] == ["head", "multi_attention", "2048", "3x3"]
    assert f"{added:,}" in row and float(row.split()[-1]) > 0
    assert "xception41 + multi_attention @ head (1 insertions, 71px)" in out and f"{added:+,}" in out


def test_study_dry_run_lists_the_three_cells(run_cli):
    proc = run_cli("run", STUDY, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    # each cell's row: trials (3 seeds), params (M), GMACs, then the module and the position it resolved to
    rows = {label: line[len(label):].split() for line in proc.stdout.splitlines()
            for label in ("plain head", "multi-attention head", "cbam @ block") if line.startswith(label)}
    assert set(rows) == {"plain head", "multi-attention head", "cbam @ block"}, proc.stdout
    assert all(row[0] == "3" for row in rows.values()), proc.stdout
    assert rows["plain head"][5] == "none"  # after params, GMACs and the step's price (time x, peak MB)
    assert rows["multi-attention head"][5:] == ["multi_attention", "head"]
    assert rows["cbam @ block"][5:] == ["cbam", "block"]
    assert float(rows["multi-attention head"][1]) > float(rows["plain head"][1])  # the head adds weights


def test_ci_sized_study_run_completes(run_cli):
    proc = run_cli("run", STUDY, "data.train_size=64", "data.val_size=32", "train.epochs=1", "study.seeds=[0]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for label in ("plain head", "multi-attention head", "cbam @ block"):
        assert label in proc.stdout
    assert Path("mlruns").is_dir()
