"""CIFAR ResNets as timm models: He et al.'s ResNet-20/32/44/56/110 and the pre-activation ResNet-164.

He et al., Deep Residual Learning for Image Recognition, CVPR 2016 (arXiv:1512.03385), section 4.2: a 3x3
conv of 16 channels on the 32x32 input (no max pool), three stages of n BasicBlocks at 16, 32 and 64
channels (feature maps 32, 16, 8; the first conv of stages 2 and 3 has stride 2), global average pooling and
a fully connected layer: 6n + 2 layers. Shortcuts are identities; where the width grows, option A (the
paper's CIFAR choice) keeps them parameter-free: subsample by 2 and pad the new channels with zeros.
`shortcut='B'` uses a 1x1 conv + BN projection there instead (the paper's option B).

He et al., Identity Mappings in Deep Residual Networks, ECCV 2016 (arXiv:1603.05027): ResNet-164 is 3 stages
of 18 pre-activation bottlenecks (BN-ReLU-conv1x1, BN-ReLU-conv3x3, BN-ReLU-conv1x1; widths 16/32/64, outputs
64/128/256), a 1x1 projection where the width grows, and a final BN-ReLU before pooling. As in the authors'
code (KaimingHe/resnet-1k-layers) the stride sits on the first 1x1 conv, a projection takes the pre-activated
input, and so does the first block's branch (its "activation right after conv1").

The BasicBlock is timm's own (its `se` slot is where `position: block` puts a module, before the add);
the bottleneck keeps timm's names (conv1/bn1/act1 ... conv3, `se`), its pre-activation as `preact`.
Published parameter counts (10 classes): 0.27M, 0.46M, 0.66M, 0.85M, 1.7M; ResNet-164 1.7M.
He init (timm's fan-out normal) and no zero-init of the last BN: the papers initialise that way.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import BatchNormAct2d, DropPath, create_classifier
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, downsample_conv
from torch import nn

__all__ = ["CifarResNet", "PreActBottleneck", "ZeroPadShortcut"]

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class ZeroPadShortcut(nn.Module):
    """Option A: the identity, subsampled by `stride` and padded with zero channels up to `out_channels`."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.stride, self.pad = stride, out_channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, 0, self.pad))


class PreActBottleneck(nn.Module):
    """BN-ReLU-conv1x1, BN-ReLU-conv3x3, BN-ReLU-conv1x1 (Identity Mappings, Fig. 4e, with bottleneck), the
    attention slot `se` on the branch before the add."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 drop_path: nn.Module | None = None):
        super().__init__()
        width, out = planes, planes * self.expansion
        self.preact = BatchNormAct2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, width, 1, stride=stride, bias=False)
        self.bn1, self.act1 = nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2, self.act2 = nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.se = None
        self.downsample = downsample
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_pre = self.preact(x)
        # a projection (width change) takes the pre-activated input, an identity the raw one
        shortcut = x if self.downsample is None else self.downsample(x_pre)
        x = self.act1(self.bn1(self.conv1(x_pre)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.conv3(x)
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        return x + shortcut


def _shortcut(in_channels: int, out_channels: int, stride: int, kind: str) -> nn.Module:
    """Where the width grows: option A (zero padding), B (1x1 conv + BN), or P, the pre-activation
    networks' bare 1x1 conv on the already normalised input."""
    if kind == "A":
        return ZeroPadShortcut(in_channels, out_channels, stride)
    if kind == "B":
        return downsample_conv(in_channels, out_channels, 1, stride, norm_layer=nn.BatchNorm2d)
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class CifarResNet(nn.Module):
    """The CIFAR ResNet of He et al.: 3x3 stem, stages of `layers` blocks at `channels` widths, pooled head.

    `block` is timm's BasicBlock (post-activation, ResNet-20...110) or PreActBottleneck (pre-activation,
    ResNet-164: the stem is a bare conv and a BN-ReLU `norm` follows the last stage). The model keeps timm's
    ResNet attribute names (conv1, layerN.M, global_pool, fc), group_matcher and feature_info, so injection,
    timm's optimizer grouping and `features_only` work as on timm's ResNets.
    """

    def __init__(self, block: type[nn.Module] = BasicBlock, layers: tuple[int, ...] = (3, 3, 3),
                 channels: tuple[int, ...] = (16, 32, 64), num_classes: int = 10, in_chans: int = 3,
                 stem_width: int = 16, shortcut: str = "A", global_pool: str = "avg", drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, zero_init_last: bool = False):
        super().__init__()
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' (zero-padded identity) or 'B' (1x1 projection), got {shortcut!r}")
        preact = block is PreActBottleneck
        self.num_classes, self.drop_rate, self.grad_checkpointing = num_classes, drop_rate, False
        self.conv1 = nn.Conv2d(in_chans, stem_width, 3, padding=1, bias=False)
        # pre-activation: the first block's `preact` is the stem's BN-ReLU
        self.bn1 = nn.Identity() if preact else nn.BatchNorm2d(stem_width)
        self.act1 = nn.Identity() if preact else nn.ReLU(inplace=True)
        self.feature_info = [dict(num_chs=stem_width, reduction=1, module="conv1" if preact else "act1")]

        inplanes, reduction, total, index = stem_width, 1, sum(layers), 0
        for stage, (depth, planes) in enumerate(zip(layers, channels), start=1):
            stride = 1 if stage == 1 else 2
            reduction *= stride
            out = planes * getattr(block, "expansion", 1)
            blocks = []
            for i in range(depth):
                s = stride if i == 0 else 1
                downsample = None
                if s != 1 or inplanes != out:
                    downsample = _shortcut(inplanes, out, s, "P" if preact else shortcut)
                # stochastic depth grows linearly with depth, as in timm's ResNet
                dpr = drop_path_rate * index / max(1, total - 1)
                blocks.append(block(inplanes, planes, s, downsample, drop_path=DropPath(dpr) if dpr else None))
                inplanes, index = out, index + 1
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=out, reduction=reduction, module=f"layer{stage}"))
        self.norm = BatchNormAct2d(inplanes) if preact else nn.Identity()
        if preact:
            self.feature_info[-1]["module"] = "norm"
        self.num_features = self.head_hidden_size = inplanes
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)
        self.init_weights(zero_init_last)

    def init_weights(self, zero_init_last: bool = False) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_last:
            for m in self.modules():
                if hasattr(m, "zero_init_last"):
                    m.zero_init_last()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^conv1|bn1", blocks=r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self, name_only: bool = False):
        return "fc" if name_only else self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        pool = self.global_pool.pool_type if global_pool is None else global_pool
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=pool)

    def stages(self) -> list[nn.Module]:
        return [m for name, m in self.named_children() if name.startswith("layer")]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.stages(), x, flatten=True)
        else:
            for stage in self.stages():
                x = stage(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs) -> dict:
    # no url / hf_hub_id: weights come only from a local file
    return {"num_classes": 10, "input_size": (3, 32, 32), "pool_size": (8, 8), "crop_pct": 1.0,
            "interpolation": "bilinear", "mean": CIFAR10_MEAN, "std": CIFAR10_STD, "first_conv": "conv1",
            "classifier": "fc", "license": "apache-2.0", **kwargs}


default_cfgs = generate_default_cfgs({
    f"{name}.untrained": _cfg() for name in
    ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "preact_resnet164")
})


def _create(variant: str, pretrained: bool, **kwargs) -> CifarResNet:
    # four feature levels (stem and three stages), not timm's default five
    return build_model_with_cfg(CifarResNet, variant, pretrained, feature_cfg=dict(out_indices=(0, 1, 2, 3)), **kwargs)


def _basic(variant: str, n: int, pretrained: bool, kwargs: dict) -> CifarResNet:
    return _create(variant, pretrained, **dict(dict(block=BasicBlock, layers=(n, n, n)), **kwargs))


@register_model
def resnet20(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-20 for CIFAR (He et al. 2016, Table 6): n = 3, 0.27M params."""
    return _basic("resnet20", 3, pretrained, kwargs)


@register_model
def resnet32(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-32 for CIFAR (He et al. 2016, Table 6): n = 5, 0.46M params."""
    return _basic("resnet32", 5, pretrained, kwargs)


@register_model
def resnet44(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-44 for CIFAR (He et al. 2016, Table 6): n = 7, 0.66M params."""
    return _basic("resnet44", 7, pretrained, kwargs)


@register_model
def resnet56(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-56 for CIFAR (He et al. 2016, Table 6): n = 9, 0.85M params."""
    return _basic("resnet56", 9, pretrained, kwargs)


@register_model
def resnet110(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-110 for CIFAR (He et al. 2016, Table 6): n = 18, 1.7M params."""
    return _basic("resnet110", 18, pretrained, kwargs)


@register_model
def preact_resnet164(pretrained: bool = False, **kwargs) -> CifarResNet:
    """Pre-activation ResNet-164 for CIFAR (He et al., Identity Mappings, Table 2): 18 bottlenecks a stage, 1.7M."""
    model_args = dict(block=PreActBottleneck, layers=(18, 18, 18))
    return _create("preact_resnet164", pretrained, **dict(model_args, **kwargs))
