"""Extra timm models, registered the way timm registers its own: importing this package makes
`timm.create_model` build them (and `ablate.models` imports it before any lookup).

  narrow        resnet10_narrow, a CPU-sized ResNet for the shipped small studies
  cifar_resnet  He et al.'s CIFAR ResNets (resnet20 ... resnet110) and the pre-activation preact_resnet164
"""
from ablate.backbones import cifar_resnet, narrow  # noqa: F401  (their @register_model calls run on import)
