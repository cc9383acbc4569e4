"""ablate: attention-module ablations and architecture search on timm backbones."""

__version__ = "0.1.0"
