"""The attention registry: one contract for every module, from us or from a plugin.

Torch-free on purpose: a module's metadata (its kind, paper, knobs with the paper's defaults, placement) is all
that study files, search spaces and reports need, so the class behind it is imported only when a model is built.
ablate's own modules are the rows of the table in `ablate/attention/__init__.py`, each naming its class as
"module:Class"; a plugin registers its class with `@register_attention(name, kind=..., paper=..., knobs={...},
placement=...)`. `placement` says where its paper puts it, which `position` (and `stages`) default to.
`create_attention(name, channels, **knobs)` validates the knobs against the metadata and builds it;
`as_timm_layer(name, **knobs)` hands a gate to timm as `attn_layer`.

Kinds (what the injector may do with the module):
  gate  built as cls(channels, **knobs); forward(x) -> tensor of x's shape; goes anywhere a feature map
        flows (and in timm's `attn_layer` slot).
  conv  replaces a block's 3x3 conv: built as cls(channels, out_channels, stride=, feat_size=, **knobs).
        Registered with `includes_norm_act=True` when its output is already normalised and activated:
        the injector then drops the block's following norm and activation (bn2, act2).
  head  built as cls(channels, **knobs); pools (B, C, H, W) features into (B, C') vectors and replaces
        the backbone's global pooling. C' is C unless the module sets an `out_features` attribute (an
        instance attribute, since it may depend on the knobs): the injector then rebuilds the classifier
        to take `out_features` inputs.
Every constructor argument after the structural ones (channels; for conv also out_channels, stride,
feat_size) is a knob, with the same default in the signature and in its `Knob`. Modules raise plain
ValueError for inputs they cannot take (a shape, a width); the injector names the site. Errors here are
AblateErrors keyed relative to the call (a knob's name), located by the caller with `errors.at`.
"""
from __future__ import annotations

import difflib
import importlib
import math
import os
import sys
from dataclasses import dataclass, field, replace
from functools import cached_property, partial
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # annotations only: importing torch is what building a module costs, not naming one
    from torch import nn

from ablate.config import POSITION_NAMES
from ablate.errors import AblateError, at, describe

KINDS = ("gate", "conv", "head")
CONV_STRUCTURAL = ("out_channels", "stride", "feat_size")  # read from the backbone, passed after channels
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
            parts.append(f"in [{_fmt(self.low, '-inf')}, {_fmt(self.high, 'inf')}]")
        if self.odd:
            parts.append("odd")
        if self.nullable:
            parts.append("or null")
        return " ".join(parts)

    # complexity over 10 on purpose: one flat check per knob type; a pydantic TypeAdapter per knob would replace it
    def check(self, label: str, value: Any, channels: int | None) -> Any:  # noqa: C901
        """Return the value converted to the knob's type, or raise a one-line AblateError '{label}=...'
        (label: the knob as the user names it, e.g. 'se.reduction')."""
        if value is None and self.nullable:
            return None
        bad = f"{label}={value!r} is not allowed ({self.describe()})"
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
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise AblateError(bad)  # inf and nan too: no knob is unbounded
            if self.type is int and value != int(value):
                raise AblateError(bad)
            value = self.type(value)
            high = channels if self.high == "channels" else self.high
            if (self.low is not None and value < self.low) or (high is not None and value > high):
                hint = f" for {channels} channels" if self.high == "channels" and channels is not None else ""
                raise AblateError(f"{label}={value} is out of range{hint} ({self.describe()})")
            if self.odd and value % 2 == 0:
                raise AblateError(f"{label}={value} must be odd ({self.describe()})")
            if self.choices is not None and value not in self.choices:
                raise AblateError(bad)
            return value
        if not isinstance(value, self.type) or (self.choices is not None and value not in self.choices):
            raise AblateError(bad)
        return value


def _fmt(bound, unbounded: str) -> str:
    return unbounded if bound is None else str(bound)


STAGE_RULES = ("all", "all_but_last", "last", "first", "all_but_first")


@dataclass(frozen=True)
class Placement:
    """Where a module's paper puts it: a position, and on which stages when the user names none."""

    position: str
    # all_but_last: BAM's bottlenecks between stages; last: BoTNet's c5 stage; first: VOLO's fine-level outlookers;
    # all_but_first: GCNet's c3-c5
    stages: str = "all"

    def __post_init__(self):
        if self.position not in POSITION_NAMES or self.stages not in STAGE_RULES:
            raise ValueError(f"placement: position one of {POSITION_NAMES}, stages one of {STAGE_RULES}")

    def select(self, available: list[int]) -> list[int] | None:
        """The 1-based stages to use out of `available`; None: all of them."""
        if self.stages == "all" or len(available) < 2:
            return None
        return {"all_but_last": available[:-1], "last": available[-1:], "first": available[:1],
                "all_but_first": available[1:]}[self.stages]

    def describe(self) -> str:
        return {"all": self.position, "all_but_last": f"{self.position} (not after the last)",
                "last": f"{self.position} (last stage)", "first": f"{self.position} (first stage)",
                "all_but_first": f"{self.position} (not in the first stage)"}[self.stages]


@dataclass(frozen=True)
class AttentionInfo:
    """What `ablate modules` prints and what the injector and search space read."""

    name: str
    target: str | Callable[..., Any]  # the class, or "package.module:Class", imported when first built
    kind: str
    paper: str
    knobs: dict[str, Knob] = field(default_factory=dict)
    source: str = "ablate"  # or "timm.layers.X" where we register timm's class behind an adapter
    # conv kind: the module applies its own norm + activation, so the block's following ones go
    includes_norm_act: bool = False
    placement: Placement | None = None  # where the paper puts it; None: the paper names no single place
    ablations: tuple = ()  # a plugin's own paper ablations (ablate.attention.ablations.Ablation), for `ablate plan`

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "conv" and set(self.knobs) & set(CONV_STRUCTURAL):  # these come from the backbone
            raise ValueError(f"{self.name}: a conv module's knobs cannot be named {', '.join(CONV_STRUCTURAL)}")

    @cached_property
    def cls(self) -> Callable[..., Any]:
        """The module's class (its file, and torch with it, imported on first use)."""
        if not isinstance(self.target, str):
            return self.target
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)

    @property
    def qualname(self) -> str:
        return self.target if isinstance(self.target, str) else f"{self.target.__module__}:{self.target.__qualname__}"

    def defaults(self) -> dict[str, Any]:
        return {k: knob.default for k, knob in self.knobs.items()}


_REGISTRY: dict[str, AttentionInfo] = {}
_plugins_loaded = False


def add_attention(info: AttentionInfo) -> None:
    """Make a module available under `info.name` to the injector, the CLI and the studies."""
    if info.name in _REGISTRY and _REGISTRY[info.name].qualname != info.qualname:
        raise ValueError(f"attention module {info.name!r} is already registered by {_REGISTRY[info.name].qualname}")
    _REGISTRY[info.name] = info


def register_attention(
    name: str,
    *,
    kind: str,
    paper: str,
    knobs: dict[str, Knob] | None = None,
    source: str = "ablate",
    includes_norm_act: bool = False,
    placement: Placement | None = None,
    ablations: tuple = (),
):
    """Class decorator (a plugin's way in): make `cls` available as `name`, with its metadata checked now;
    `ablations`: its paper's (ablate.attention.ablations.Ablation rows), else `ablate plan` makes one per knob."""
    info = AttentionInfo(name, None, kind, paper, dict(knobs or {}), source, includes_norm_act, placement,
                         tuple(ablations))

    def decorate(cls):
        add_attention(replace(info, target=cls))
        return cls

    return decorate


def _load_plugins() -> None:
    """Import third-party modules: installed entry points, then the `--plugin` modules named in $ABLATE_PLUGINS."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    # the built-in rows are registered already: importing this module imports the package ablate.attention first
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()  # importing the plugin runs its @register_attention decorators
        except (Exception, SystemExit) as e:  # noqa: BLE001 (an installed package's bug: one line naming it)
            raise AblateError(f"entry point {ep.name} = {ep.value} ({ENTRY_POINT_GROUP}): cannot load: "
                              f"{describe(e)}") from None
    for name in filter(None, os.environ.get(PLUGINS_ENV, "").split(",")):
        try:
            importlib.import_module(name)
        except (Exception, SystemExit) as e:  # noqa: BLE001
            raise AblateError(f"${PLUGINS_ENV}: cannot import {name!r}: {describe(e)}") from None


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
        except (Exception, SystemExit) as e:  # noqa: BLE001 (whatever the plugin raises, even sys.exit: one line)
            raise AblateError(f"--plugin: cannot import {name!r}: {describe(e)}") from None
    known = [n for n in os.environ.get(PLUGINS_ENV, "").split(",") if n]
    os.environ[PLUGINS_ENV] = ",".join(dict.fromkeys(known + list(names)))


def list_attention(kind: str | None = None) -> list[AttentionInfo]:
    _load_plugins()
    return [info for _, info in sorted(_REGISTRY.items()) if kind is None or info.kind == kind]


def get_attention(name: str) -> AttentionInfo:
    """The registered module `name`, or an unkeyed AblateError (the caller locates it: `at("...name")`)."""
    _load_plugins()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), _REGISTRY, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"allowed: {', '.join(sorted(_REGISTRY))}"
        raise AblateError(f"unknown attention module {name!r} ({hint})")
    return _REGISTRY[name]


def resolve_knobs(name: str, knobs: dict[str, Any], channels: int | None = None) -> dict[str, Any]:
    """The module's full knob dict: defaults overlaid with `knobs`, each validated.

    A bad value is an AblateError keyed by the knob's name ("reduction: se.reduction=0 is out of range
    ..."); an unknown knob is unkeyed. The caller locates both: `with at("model.attention.knobs"):`."""
    info = get_attention(name)
    unknown = set(knobs) - set(info.knobs)
    if unknown:
        key = sorted(unknown)[0]
        allowed = ", ".join(info.knobs) or "none"
        raise AblateError(f"module {name!r} takes no knob {key!r} (knobs: {allowed})")
    resolved = info.defaults()
    for key, value in knobs.items():
        with at(key):
            resolved[key] = info.knobs[key].check(f"{name}.{key}", value, channels)
    return resolved


def create_attention(name: str, channels: int, **kwargs):
    """Build module `name` for `channels` input channels.

    For conv-kind modules pass `out_channels`, `stride` and `feat_size` too; they are structural
    (read from the backbone), not knobs, so they bypass knob validation. Other kinds take knobs only
    (a gate's `stride`, e.g. outlook's, is its knob).
    """
    info = get_attention(name)
    structural = {k: kwargs.pop(k) for k in CONV_STRUCTURAL if k in kwargs} if info.kind == "conv" else {}
    knobs = resolve_knobs(name, kwargs, channels)
    if info.kind == "conv":
        return info.cls(channels, structural.get("out_channels", channels),
                        stride=structural.get("stride", 1), feat_size=structural.get("feat_size"), **knobs)
    return info.cls(channels, **knobs)


def as_timm_layer(name: str, **knobs) -> Callable[..., nn.Module]:
    """Gate `name` as timm's `attn_layer`, e.g.
    `timm.create_model("resnet50", block_args=dict(attn_layer=as_timm_layer("cbam", reduction=8)))`.

    timm builds the slot as `attn_layer(channels, device=, dtype=)` (ResNet and SKNet blocks through
    `create_attn`); EfficientNet's blocks add `act_layer`, MaxxViT's `rd_channels`. The knobs are checked
    here, once, so a bad one fails before timm builds anything; timm's own kwargs are dropped, the module
    keeping the paper's choices, except that the module is moved to a given device/dtype.
    """
    try:
        info = get_attention(name)
        if info.kind != "gate":
            raise AblateError(f"{name!r} is a {info.kind} module; timm's attn_layer takes a gate "
                              f"(forward(x) keeps x's shape)")
        resolve_knobs(name, knobs)  # bounds in channels are checked at each build, when channels are known
    except AblateError as e:
        raise AblateError(f"as_timm_layer: {e.message}") from None
    return partial(_build_for_timm, name, knobs)


def _build_for_timm(name: str, knobs: dict[str, Any], channels: int, device=None, dtype=None, **_timm_kwargs):
    try:
        module = create_attention(name, channels, **knobs)
    except AblateError as e:  # the message names the knob ("se.reduction=..."): no key needed
        raise AblateError(f"as_timm_layer: {e.message}") from None
    if device is not None or dtype is not None:
        module = module.to(device=device, dtype=dtype)
    return module

