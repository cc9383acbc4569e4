"""Pydantic's validation errors as one line: 'file: key.path: message (did you mean ...?)'.

After a union, pydantic's error location names the branch it validated: a dataset's name, a tag such as 'range', a
type such as 'int'. `locate` walks the schema beside the location to tell the user's keys from those names, and to
find the model where an unknown key was met (its keys are what is allowed there).
"""
from __future__ import annotations

import difflib
import types
from dataclasses import dataclass, field
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, Tag, ValidationError

from ablate.errors import AblateError


@dataclass
class Place:
    """Where in the schema an error's location points."""

    keys: list[str] = field(default_factory=list)  # the user's key path, without pydantic's branch names
    model: type[BaseModel] | None = None  # the model the last key was looked up in
    branch: str | None = None  # the discriminator's value that chose that model (a dataset's name), if one did
    others: dict[str, type[BaseModel]] = field(default_factory=dict)  # the union's other models, by that value


def validation_error(source: str, err: ValidationError, schema: type[BaseModel], prefix: str = "") -> AblateError:
    """The error to show as one line: 'file: key.path: message (did you mean ...?)'."""
    error = shown_error(err.errors())
    place = locate(schema, error["loc"])
    key = ".".join(([prefix] if prefix else []) + place.keys)
    msg = error["msg"]
    if error["type"] == "extra_forbidden":
        msg = unknown_key(place)
    elif error["type"] == "union_tag_invalid":  # data.name: a dataset no class is for
        key = f"{key}.{error['ctx']['discriminator'].strip(chr(39))}"
        msg = f"{error['ctx']['tag']!r} is not allowed ({error['ctx']['expected_tags']})"
    elif error["type"] == "literal_error":
        msg = f"{error['input']!r} is not allowed ({error['ctx']['expected']})"
    elif "input" in error and not isinstance(error["input"], (dict, list)):
        msg = f"{msg} (got {error['input']!r})"
    return AblateError(f"{source}: {key}: {msg}")


def shown_error(errors: list[dict]) -> dict:
    """The first error; but where a required key is missing beside an unknown one, the unknown one: a misspelt
    key also leaves its right spelling missing, and the misspelling is what to point at."""
    first = errors[0]
    if first["type"] == "missing":
        return next((e for e in errors if e["type"] == "extra_forbidden" and e["loc"][:-1] == first["loc"][:-1]),
                    first)
    return first


def unknown_key(place: Place) -> str:
    name = place.keys[-1]
    allowed = list(place.model.model_fields) if place.model else []
    takers = [branch for branch, model in place.others.items() if name in model.model_fields]
    close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
    if takers:  # a key of another dataset: the dataset is what is wrong, not the spelling
        hint = f"only {', '.join(takers)} take{'s' if len(takers) == 1 else ''} it; allowed: {', '.join(allowed)}"
    elif close:
        hint = f"did you mean {close[0]!r}?"
    else:
        hint = f"allowed: {', '.join(allowed)}"
    return f"unknown key{f' for {place.branch}' if place.branch else ''} ({hint})"


def locate(schema: type[BaseModel], loc: tuple) -> Place:
    """The user's keys in pydantic's error location `loc`, and the model the last one was looked up in."""
    place = Place()
    kind: Any = schema
    discriminator = None  # the discriminating field of the union `kind` is, when a field names one
    chosen: dict[type, tuple[str, dict]] = {}  # a model chosen by a discriminator's value -> (that value, others)
    for part in loc:
        kind = bare(kind)
        if branches(kind):  # a union: this part names the branch pydantic validated, not a user's key
            kind, models = branch(branches(kind), part, discriminator)
            if isinstance(kind, type) and models:
                chosen[kind] = (str(part), {k: m for k, m in models.items() if m is not kind})
            continue
        if part == "[key]":
            continue  # pydantic's mark for an error in a mapping's key itself
        place.keys.append(str(part))
        discriminator = None
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            place.model = kind
            place.branch, place.others = chosen.get(kind, (None, {}))
            info = kind.model_fields.get(part)
            kind, discriminator = (info.annotation, info.discriminator) if info else (None, None)
        elif get_origin(kind) in (list, dict):
            kind = get_args(kind)[-1]  # a list's item or a mapping's value
        else:
            kind = None
    return place


def bare(kind: Any) -> Any:
    """`kind` without Annotated's metadata and without None (pydantic names no branch for an optional value)."""
    while get_origin(kind) is Annotated:
        kind = get_args(kind)[0]
    if type(None) in branches(kind):
        rest = tuple(m for m in get_args(kind) if m is not type(None))
        kind = rest[0] if len(rest) == 1 else Union[rest]
    return kind


def branches(kind: Any) -> tuple:
    """A union's members; () for anything else."""
    return get_args(kind) if get_origin(kind) in (Union, types.UnionType) else ()


def branch(members: tuple, part: Any, discriminator: Any) -> tuple[Any, dict[str, type[BaseModel]]]:
    """The member a union's branch name `part` stands for (None for a plain union of values, whose branches are
    types), and, where a discriminating field chose it, every member model by that field's value."""
    for member in members:  # a callable discriminator's branches: Annotated[kind, Tag(...)]
        if get_origin(member) is Annotated and any(isinstance(m, Tag) and m.tag == part for m in get_args(member)):
            return get_args(member)[0], {}
    if isinstance(discriminator, str):  # Field(discriminator="name"): each model's literal names it
        models = {value: m for m in members for value in get_args(m.model_fields[discriminator].annotation)}
        return models.get(part), models
    return None, {}

