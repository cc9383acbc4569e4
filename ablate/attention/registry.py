"""The attention registry: one contract for every module, from us or from a plugin.

A module registers with `@register_attention(name, kind=..., paper=..., knobs={...})`.
`create_attention(name, channels, **knobs)` validates the knobs against the metadata and builds it.

Kinds (what the injector may do with the module):
  gate  forward(x) -> tensor of x's shape; goes anywhere a feature map flows.
  conv  replaces a block's 3x3 conv: built as cls(channels, out_channels, stride=, feat_size=, **knobs).
  head  pools (B, C, H, W) features into (B, C') vectors; replaces the backbone's global pooling.
"""
from __future__ import annotations

import difflib
import importlib
import os
import sys
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable

from ablate.errors import AblateError, describe

KINDS = ("gate", "conv", "head")
ENTRY_POINT_GROUP = "ablate.attention"
PLUGINS_ENV = "ABLATE_PLUGINS"  # comma-separated module paths from --plugin, inherited by worker processes


@dataclass(frozen=True)
class Knob:
    """One constructor argument: its type, the paper's default and the valid values."""

    type: type
    default: Any
    help: str = ""
    choices: tuple | None = None  # for str knobs; for list knobs, what each element may be
    low: float | None = None
    high: float | str | None = None  # a number, or "channels" (bounded by the input's channels)
    odd: bool = False
    nullable: bool = False  # None is allowed (e.g. ECA's adaptive kernel size)

    def describe(self) -> str:
        if self.choices is not None:
            allowed = "|".join(map(str, self.choices))
            return f"{'list of ' if self.type is list else ''}{allowed}"
        parts = [self.type.__name__]
        if self.low is not None or self.high is not None:
            parts.append(f"in [{_fmt(self.low)}, {_fmt(self.high)}]")
        if self.odd:
            parts.append("odd")
        if self.nullable:
            parts.append("or null")
        return " ".join(parts)

    def check(self, where: str, value: Any, channels: int | None) -> Any:
        """Return the value converted to the knob's type, or raise a one-line AblateError."""
        if value is None and self.nullable:
            return None
        bad = f"{where}={value!r} is not allowed ({self.describe()})"
        if self.type is list:
            items = value.split("+") if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)) or not items:
                raise AblateError(bad)
            if self.choices is not None and any(v not in self.choices for v in items):
                raise AblateError(bad)
            return tuple(items)
        if self.type is bool:
            if not isinstance(value, bool):
                raise AblateError(bad)
            return value
        if self.type in (int, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise AblateError(bad)
            if self.type is int and value != int(value):
                raise AblateError(bad)
            value = self.type(value)
            high = channels if self.high == "channels" else self.high
            if (self.low is not None and value < self.low) or (high is not None and value > high):
                hint = f" for {channels} channels" if self.high == "channels" and channels is not None else ""
                raise AblateError(f"{where}={value} is out of range{hint} ({self.describe()})")
            if self.odd and value % 2 == 0:
                raise AblateError(f"{where}={value} must be odd ({self.describe()})")
            if self.choices is not None and value not in self.choices:
                raise AblateError(bad)
            return value
        if not isinstance(value, self.type) or (self.choices is not None and value not in self.choices):
            raise AblateError(bad)
        return value


def _fmt(bound) -> str:
    return "-inf" if bound is None else str(bound)


@dataclass(frozen=True)
class AttentionInfo:
    """What `ablate modules` prints and what the injector and search space read."""

    name: str
    cls: Callable[..., Any]
    kind: str
    paper: str
    knobs: dict[str, Knob] = field(default_factory=dict)
    source: str = "ablate"  # or "timm.layers.X" where we register timm's class behind an adapter
    # conv kind: the module applies its own norm + activation, so the block's following ones go
    includes_norm_act: bool = False

    def defaults(self) -> dict[str, Any]:
        return {k: knob.default for k, knob in self.knobs.items()}


_REGISTRY: dict[str, AttentionInfo] = {}
_plugins_loaded = False


def register_attention(
    name: str,
    *,
    kind: str,
    paper: str,
    knobs: dict[str, Knob] | None = None,
    source: str = "ablate",
    includes_norm_act: bool = False,
):
    """Class decorator: make `cls` available as `name` to the injector, the CLI and the studies."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")

    def decorate(cls):
        if name in _REGISTRY and _REGISTRY[name].cls is not cls:
            raise ValueError(f"attention module {name!r} is already registered by {_REGISTRY[name].cls}")
        _REGISTRY[name] = AttentionInfo(name, cls, kind, paper, dict(knobs or {}), source, includes_norm_act)
        return cls

    return decorate


def _load_plugins() -> None:
    """Import third-party modules: installed entry points, then the `--plugin` modules named in $ABLATE_PLUGINS."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    import ablate.attention  # noqa: F401  (registers the built-in modules first)

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        ep.load()  # importing the plugin runs its @register_attention decorators
    for name in filter(None, os.environ.get(PLUGINS_ENV, "").split(",")):
        importlib.import_module(name)


def load_plugins(names: list[str]) -> None:
    """Import `--plugin` modules now (one-line error if one cannot be), and name them in $ABLATE_PLUGINS
    so worker processes import them too. Study files never name code: only the command line does."""
    if not names:
        return
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # a plugin file next to the study, as `python -m` would find it
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 (whatever the plugin raises, the user needs one line)
            raise AblateError(f"--plugin: cannot import {name!r}: {describe(e)}") from None
    known = [n for n in os.environ.get(PLUGINS_ENV, "").split(",") if n]
    os.environ[PLUGINS_ENV] = ",".join(dict.fromkeys(known + list(names)))


def list_attention(kind: str | None = None) -> list[AttentionInfo]:
    _load_plugins()
    return [info for _, info in sorted(_REGISTRY.items()) if kind is None or info.kind == kind]


def get_attention(name: str, where: str = "attention") -> AttentionInfo:
    _load_plugins()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), _REGISTRY, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"allowed: {', '.join(sorted(_REGISTRY))}"
        raise AblateError(f"{where}: unknown attention module {name!r} ({hint})")
    return _REGISTRY[name]


def resolve_knobs(name: str, knobs: dict[str, Any], channels: int | None = None,
                  where: str = "attention") -> dict[str, Any]:
    """The module's full knob dict: defaults overlaid with `knobs`, each validated."""
    info = get_attention(name, where)
    unknown = set(knobs) - set(info.knobs)
    if unknown:
        key = sorted(unknown)[0]
        allowed = ", ".join(info.knobs) or "none"
        raise AblateError(f"{where}: module {name!r} takes no knob {key!r} (knobs: {allowed})")
    resolved = info.defaults()
    for key, value in knobs.items():
        at = where if where.endswith(f".{key}") else f"{where}.{key}"  # the full key, named once
        resolved[key] = info.knobs[key].check(f"{at}: {name}.{key}", value, channels)
    return resolved


def create_attention(name: str, channels: int, *, where: str = "attention", **kwargs):
    """Build module `name` for `channels` input channels.

    For conv-kind modules pass `out_channels`, `stride` and `feat_size` too; they are structural
    (read from the backbone), not knobs, so they bypass knob validation.
    """
    info = get_attention(name, where)
    structural = {k: kwargs.pop(k) for k in ("out_channels", "stride", "feat_size") if k in kwargs}
    knobs = resolve_knobs(name, kwargs, channels, where)
    if info.kind == "conv":
        return info.cls(channels, structural.get("out_channels", channels),
                        stride=structural.get("stride", 1), feat_size=structural.get("feat_size"), **knobs)
    return info.cls(channels, **knobs)
