"""ablate's pieces inside timm: gates as timm's `attn_layer`, and resnet10_narrow as a timm-built model."""
import pytest
import timm
import torch

import ablate.backbones  # noqa: F401  (registers resnet10_narrow with timm)
from ablate.attention import as_timm_layer
from ablate.config import ModelConfig
from ablate.cost import count_params
from ablate.errors import AblateError
from ablate.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one thread on 2 busy cores


def injected_params(name, knobs=None):
    # params do not depend on the image size: 64 px keeps the injector's probing forwards cheap
    cfg = ModelConfig(backbone="resnet50", attention={"name": name, "position": "block", "knobs": knobs or {}})
    return count_params(build_model(cfg, 1000, 3, 64).model)


def test_cbam_in_timm_attn_layer_is_the_injected_cbam_and_the_papers_28_09m():
    params = count_params(timm.create_model("resnet50", block_args=dict(attn_layer=as_timm_layer("cbam"))))
    assert params == injected_params("cbam")
    assert round(params / 1e6, 2) == 28.09  # Woo et al., Table 4: ResNet50 + CBAM


def test_a_knob_reaches_timm_built_modules():
    model = timm.create_model("resnet50", block_args=dict(attn_layer=as_timm_layer("se", reduction=8)))
    assert model.layer1[0].se.fc1.out_channels == 256 // 8
    assert count_params(model) == injected_params("se", {"reduction": 8})


def test_device_and_dtype_from_timm_are_honoured():
    layer = as_timm_layer("eca")
    assert next(layer(64, device=None, dtype=None).parameters()).dtype == torch.float32
    assert next(layer(64, device="cpu", dtype=torch.float64).parameters()).dtype == torch.float64
    model = timm.create_model("resnet18", block_args=dict(attn_layer=layer), device="meta")
    assert next(model.layer1[0].se.parameters()).device.type == "meta"


@pytest.mark.parametrize("call, message", [
    (lambda: as_timm_layer("sk"), "as_timm_layer: 'sk' is a conv module; timm's attn_layer takes a gate"),
    (lambda: as_timm_layer("attn_pool"), "as_timm_layer: 'attn_pool' is a head module"),
    (lambda: as_timm_layer("cbma"), "as_timm_layer: unknown attention module 'cbma' (did you mean cbam"),
    (lambda: as_timm_layer("se", reduction=0), "as_timm_layer: se.reduction=0 is out of range"),
    (lambda: as_timm_layer("se", kernel_size=3), "as_timm_layer: module 'se' takes no knob 'kernel_size'"),
    # bounded by the channels, so known only when timm builds the slot
    (lambda: as_timm_layer("se", reduction=128)(64), "as_timm_layer: se.reduction=128 is out of range for 64"),
])
def test_what_timm_cannot_take_is_a_one_line_error(call, message):
    with pytest.raises(AblateError) as err:
        call()
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


# --- resnet10_narrow, built by timm's builder ---

def test_resnet10_narrow_keeps_its_size_and_has_timm_features():
    # the counts measured on the hand-built model, before the move to timm's builder
    assert count_params(timm.create_model("resnet10_narrow")) == 1_503_336
    assert count_params(timm.create_model("resnet10_narrow", num_classes=10, in_chans=1)) == 1_242_634
    features = timm.create_model("resnet10_narrow", features_only=True).eval()
    assert features.feature_info.channels() == [64, 32, 64, 128, 256]
    maps = features(torch.randn(1, 3, 32, 32))
    assert [tuple(m.shape[1:]) for m in maps] == [(64, 16, 16), (32, 8, 8), (64, 4, 4), (128, 2, 2), (256, 1, 1)]


def test_resnet10_narrow_loads_a_local_file_but_has_no_published_weights(tmp_path):
    trained = timm.create_model("resnet10_narrow")
    weights = tmp_path / "resnet10_narrow.pth"
    torch.save(trained.state_dict(), weights)
    # what ablate.models.create_backbone passes for model.checkpoint
    loaded = timm.create_model("resnet10_narrow", pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)),
                               num_classes=10, in_chans=1)
    torch.testing.assert_close(loaded.layer3[0].conv1.weight, trained.layer3[0].conv1.weight)
    assert loaded.fc.out_features == 10 and loaded.conv1.in_channels == 1  # timm adapted both ends
    with pytest.raises(RuntimeError, match="^No pretrained weights exist for resnet10_narrow") as err:
        timm.create_model("resnet10_narrow", pretrained=True)
    assert "\n" not in str(err.value)
