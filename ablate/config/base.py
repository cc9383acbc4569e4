"""What every schema shares: the strict pydantic model, the seed field, and what editing a key changes.

A trial key's effect lives on its field, `Field(..., json_schema_extra=effect("run"))`, and `keys_with_effect`
lists the keys of some effects: the study's fingerprint leaves out the keys that keep trials comparable
(spec.OPERATIONAL_KEYS), a checkpoint resumes across the keys that change neither the maths nor its repeat
(checkpoint.RESUMABLE_ACROSS). A new field is classified once, where it is declared.
"""
from __future__ import annotations

import types
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field

# what editing a key changes; an unmarked field is "result"
EFFECTS = {
    "result": "what a trial computes: old trials are no longer comparable, and no checkpoint resumes across it",
    "repeat": "which repeat of a configuration a trial is (its seed): comparable, each repeat its own checkpoint",
    "layout": "the memory layout of the model's tensors: comparable, but a checkpoint resumes only into its own",
    "run": "where and how fast a trial runs (devices, workers, the data's place): comparable, and resumable",
    "record": "how a trial is shown and recorded (tracking, progress, checkpoints): comparable, and resumable",
}


def effect(kind: str) -> dict[str, str]:
    """A field's json_schema_extra saying what editing it changes (one of EFFECTS)."""
    if kind not in EFFECTS:
        raise ValueError(f"{kind!r} is not an effect ({', '.join(EFFECTS)})")
    return {"effect": kind}


def seed_field(**kwargs: Any) -> Any:
    return Field(0, ge=0, le=2**32 - 1, description="numpy's and Lightning's seeds are unsigned 32-bit", **kwargs)


SEED = seed_field()


class Strict(BaseModel):
    # .inf and .nan are never a sensible setting (a min_lr of inf trains; a range to inf never ends)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def keys_with_effect(schema: type[BaseModel], *effects: str, prefix: str = "") -> tuple[str, ...]:
    """The dotted keys of `schema` whose field has one of `effects`, as prefixes for `str.startswith`: a marked
    section ends in '.' (all its keys). Unmarked sections are walked, each class of a union too (a key several
    datasets take is listed once)."""
    unknown = set(effects) - set(EFFECTS)
    if unknown:
        raise ValueError(f"{sorted(unknown)} are not effects ({', '.join(EFFECTS)})")
    keys: list[str] = []
    for name, field in schema.model_fields.items():
        sections, mark = models_in(field.annotation), (field.json_schema_extra or {}).get("effect")
        if sections and mark is None:  # an unmarked section: each of its keys says its own
            for section in sections:
                keys += keys_with_effect(section, *effects, prefix=f"{prefix}{name}.")
        elif (mark or "result") in effects:
            keys.append(prefix + name + ("." if sections else ""))
    return tuple(dict.fromkeys(keys))


def models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models a field holds: its class, or a union's classes."""
    union = get_origin(annotation) in (Union, types.UnionType)
    return [m for m in (get_args(annotation) if union else (annotation,))
            if isinstance(m, type) and issubclass(m, BaseModel)]
