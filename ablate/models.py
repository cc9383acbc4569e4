"""build_model(model config) -> a timm backbone with its attention injected, and what that cost."""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ablate.config import ModelConfig
from ablate.errors import AblateError
from ablate.inject import InsertionReport, inject


@dataclass
class BuiltModel:
    model: nn.Module
    report: InsertionReport

    @property
    def params(self) -> int:
        return self.report.params

    @property
    def gmacs(self) -> float:
        return self.report.gmacs


def check_backbone(name: str, where: str = "model.backbone") -> None:
    import timm

    import ablate.backbones  # noqa: F401  (registers our small CPU backbones with timm)

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.7)
        hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models()"
        raise AblateError(f"{where}: unknown timm backbone {name!r} ({hint})")


def create_backbone(cfg: ModelConfig, num_classes: int, in_chans: int) -> nn.Module:
    """timm.create_model, with weights from timm's hub or a local file (`model.checkpoint`)."""
    import timm

    check_backbone(cfg.backbone)
    kwargs = dict(num_classes=num_classes, in_chans=in_chans)
    if cfg.drop_rate:
        kwargs["drop_rate"] = cfg.drop_rate
    if cfg.drop_path_rate:
        kwargs["drop_path_rate"] = cfg.drop_path_rate
    if cfg.checkpoint:
        if not Path(cfg.checkpoint).is_file():
            raise AblateError(f"model.checkpoint: no weights file at {cfg.checkpoint}")
        # timm loads the file like hub weights: adapts in_chans, drops a classifier of another size
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(Path(cfg.checkpoint).resolve())))
    else:
        kwargs["pretrained"] = cfg.pretrained
    try:
        return timm.create_model(cfg.backbone, **kwargs)
    except TypeError as e:  # e.g. drop_path_rate on a family that has no stochastic depth
        raise AblateError(f"model: {cfg.backbone} does not accept {e}") from None
    except (OSError, RuntimeError):
        if cfg.pretrained and not cfg.checkpoint:
            raise AblateError(f"model.pretrained: could not fetch {cfg.backbone} weights (offline?): set "
                              f"model.checkpoint to a local weights file") from None
        raise


def build_model(cfg: ModelConfig, num_classes: int, in_chans: int, image_size: int) -> BuiltModel:
    model = create_backbone(cfg, num_classes, in_chans)
    report = inject(model, cfg.attention, in_chans=in_chans, image_size=image_size, backbone=cfg.backbone)
    return BuiltModel(model, report)
