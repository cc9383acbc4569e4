"""Pydantic's validation errors as one line: 'file: key.path: message (did you mean ...?)'."""
from __future__ import annotations

import difflib
import re
import typing

from pydantic import BaseModel, ValidationError

from ablate.config import study
from ablate.errors import AblateError

# pydantic names the branch of a union it tried in the error's location: 'str', 'list[any]', 'Range'
_UNION_TAG = re.compile(r"^(str|int|float|bool|list\[.*\]|dict\[.*\]|[A-Z]\w*)$")


def _is_tag(part) -> bool:
    return isinstance(part, str) and bool(_UNION_TAG.match(part))


def _first_error(err: ValidationError) -> dict:
    """The error to show: the first, or for a union the branch that got furthest into the user's input
    (metric: [{direction: sideways}] fails as a list of objectives, not as 'not a string')."""
    errors = err.errors()
    first = errors[0]
    tags = [i for i, part in enumerate(first["loc"]) if _is_tag(part)]
    if not tags:
        return first
    same = [e for e in errors if e["loc"][:tags[0]] == first["loc"][:tags[0]]]
    return max(same, key=lambda e: (len(e["loc"]), e["type"] == "extra_forbidden"))


def validation_error(source: str, err: ValidationError, schema: type[BaseModel], prefix: str = "") -> AblateError:
    """The first pydantic error as one line: 'file: key.path: message (did you mean ...?)'."""
    first = _first_error(err)
    loc = [str(p) for p in first["loc"] if not _is_tag(p)]
    key = ".".join(([prefix] if prefix else []) + loc)
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        allowed = _fields_at(schema, list(first["loc"][:-1]))
        close = difflib.get_close_matches(loc[-1], allowed, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(allowed)}"
        msg = f"unknown key ({hint})"
    elif first["type"] == "literal_error":
        msg = f"{first['input']!r} is not allowed ({first['ctx']['expected']})"
    elif "input" in first and not isinstance(first["input"], (dict, list)):
        msg = f"{msg} (got {first['input']!r})"
    return AblateError(f"{source}: {key}: {msg}")


def _fields_at(schema: type[BaseModel], loc: list) -> list[str]:
    """The keys allowed at `loc` (for did-you-mean), following union branch tags like 'Range' or 'list[Objective]'."""
    current: type[BaseModel] | None = schema
    mapped = None  # a dict field's value schema: the next part is one of its keys
    for part in loc:
        if isinstance(part, int):
            continue  # a list index: same schema
        if mapped is not None:
            current, mapped = mapped, None
            continue
        tagged = vars(study).get(re.sub(r"^list\[(\w+)\]$", r"\1", part)) if _is_tag(part) else None
        if isinstance(tagged, type) and issubclass(tagged, BaseModel):
            current = tagged
            continue
        field = current.model_fields.get(part) if current else None
        ann = getattr(field, "annotation", None)
        if typing.get_origin(ann) is dict:  # constraints: {params_m: Bound}
            value = typing.get_args(ann)[1]
            mapped = value if isinstance(value, type) and issubclass(value, BaseModel) else None
        current = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return list(current.model_fields) if current else []
