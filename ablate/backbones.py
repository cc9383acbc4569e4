"""Small backbones for CPU-sized studies, registered with timm so `timm.create_model` builds them.

They are timm's own ResNet class with fewer/narrower stages: every injection position, group_matcher
and stochastic depth work exactly as on resnet18/50. No pretrained weights exist for them.
"""
from timm.models import register_model
from timm.models.resnet import BasicBlock, ResNet


@register_model
def resnet10_narrow(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-10 (one BasicBlock per stage) at half width, 32-64-128-256 channels: 1.2M params."""
    if pretrained:
        raise RuntimeError("resnet10_narrow has no pretrained weights")
    for hub_only in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # timm's weight-loading kwargs
        kwargs.pop(hub_only, None)
    return ResNet(BasicBlock, (1, 1, 1, 1), channels=(32, 64, 128, 256), stem_width=32, **kwargs)
