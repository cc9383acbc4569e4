"""Small backbones for CPU-sized studies, registered with timm so `timm.create_model` builds them.

They are timm's own ResNet class with fewer/narrower stages, built by timm's `build_model_with_cfg` as
timm's resnets are: every injection position, group_matcher, stochastic depth, `features_only` and local
weight files (`pretrained_cfg_overlay=dict(file=...)`) work exactly as on resnet18/50. No published
weights exist for them: `pretrained=True` without a file is timm's one-line RuntimeError.
"""
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, ResNet

default_cfgs = generate_default_cfgs({
    # no url / hf_hub_id: weights come only from a local file; the CPU studies run at 32 px
    "resnet10_narrow.untrained": {
        "num_classes": 1000, "input_size": (3, 32, 32), "pool_size": (1, 1), "crop_pct": 1.0,
        "interpolation": "bilinear", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "conv1", "classifier": "fc", "license": "apache-2.0",
    },
})


@register_model
def resnet10_narrow(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-10 (one BasicBlock per stage) at half width, 32-64-128-256 channels: 1.2M params."""
    model_args = dict(block=BasicBlock, layers=(1, 1, 1, 1), channels=(32, 64, 128, 256), stem_width=32)
    return build_model_with_cfg(ResNet, "resnet10_narrow", pretrained, **dict(model_args, **kwargs))
