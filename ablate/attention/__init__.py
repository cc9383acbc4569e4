"""Attention modules, one file per paper, all registered in `registry` (timm `layers/` style).

Importing this package imports every sibling module file, which registers its classes.
"""
import importlib
import pkgutil

from ablate.attention.registry import (  # noqa: F401
    AttentionInfo, Knob, Placement, as_timm_layer, create_attention, get_attention, list_attention, load_plugins,
    register_attention, resolve_knobs,
)

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "registry":
        importlib.import_module(f"{__name__}.{_mod.name}")
