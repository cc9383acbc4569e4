"""A grid trial's configuration as Optuna params, so that Optuna's own viewers (optuna-dashboard, its plots) show
what each cell sets. Which cell and seed a trial runs stays where it was, in its user attrs (cell key, params,
seed): the params only show it, fixed when the trial is queued (Study.enqueue_trial) and recorded by the objective
(a fixed value is never sampled, so the grid's sampler draws nothing).

Optuna fixes a categorical's choices for the life of a study, and a grid is edited (cells, modules and knob values
added), so each key's kind is stored on the study when it first meets it: numbers are an Int/FloatDistribution
over the grid's values (Optuna lets ranges differ between trials), anything else a categorical over the values the
grid had then, the module name over every registered module. A value its kind cannot hold (a module registered
later, a string where numbers were) stays in the user attrs only."""
from __future__ import annotations

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from ablate.attention import list_attention
from ablate.config import MODULE_KEY
from ablate.plan import Cell, StudyPlan
from ablate.storage import Attr

CHOICE_TYPES = (type(None), bool, int, float, str)  # what an Optuna categorical holds


def _number(v, kind: type) -> bool:
    return isinstance(v, kind) and not isinstance(v, bool)


def kind_of(values: list) -> dict | None:
    """How a key's values are recorded: {"kind": "int"}, {"kind": "float"}, or a categorical's choices."""
    if all(_number(v, int) for v in values):
        return {"kind": "int"}
    if all(_number(v, (int, float)) for v in values):
        return {"kind": "float"}
    if all(isinstance(v, CHOICE_TYPES) for v in values):
        return {"kind": "categorical", "choices": list(dict.fromkeys(values))}
    return None  # lists and mappings: no Optuna param


def grid_values(cells) -> dict[str, list]:
    values: dict[str, list] = {}
    for cell in cells:
        for key, value in cell.params.items():
            values.setdefault(key, []).append(value)
    return values


def param_space(study: optuna.Study, plan: StudyPlan) -> dict[str, dict]:
    """The study's stored kinds, with those of keys this file brings first; under the setup lock."""
    stored = dict(study.user_attrs.get(Attr.PARAM_SPACE, {}))
    new = {}
    for key, values in grid_values(plan.cells.values()).items():
        if key in stored:
            continue
        if key == MODULE_KEY:  # a module added to the file later is one of these choices
            values = ["none", *values, *(info.name for info in list_attention())]
        kind = kind_of(values)
        if kind is not None:
            new[key] = kind
    if new:
        stored |= new
        study.set_user_attr(Attr.PARAM_SPACE, stored)
    return stored


def distribution(key: str, value, space: dict[str, dict], cells) -> BaseDistribution | None:
    """The distribution `value` of `key` is recorded under, or None when its stored kind cannot hold it."""
    kind = space.get(key, {}).get("kind")
    if kind == "categorical":
        choices = space[key]["choices"]
        return CategoricalDistribution(choices) if value in choices and type(value) in CHOICE_TYPES else None
    number = int if kind == "int" else (int, float) if kind == "float" else None
    if number is None or not _number(value, number):
        return None
    values = [v for v in grid_values(cells).get(key, []) if _number(v, number)] + [value]
    if kind == "int":
        return IntDistribution(min(values), max(values))
    return FloatDistribution(float(min(values)), float(max(values)))


def fixed_params(cell: Cell, space: dict[str, dict], cells) -> dict:
    """The params a grid trial of `cell` is queued with (Study.enqueue_trial)."""
    return {k: v for k, v in cell.params.items() if distribution(k, v, space, cells) is not None}


def record_params(trial: optuna.Trial, plan: StudyPlan, cell: Cell) -> None:
    """The queued grid trial's fixed params, recorded by suggesting them: Optuna returns a fixed value as it is.
    Only keys the queue fixed (a trial queued before params were recorded has none): any other would be sampled."""
    frozen = {t.number: t for t in trial.study.get_trials(deepcopy=False)}[trial.number]
    fixed = frozen.system_attrs.get("fixed_params") or {}
    space = trial.study.user_attrs.get(Attr.PARAM_SPACE, {})
    for key, value in fixed.items():
        dist = distribution(key, value, space, plan.cells.values())
        if dist is None or cell.params.get(key) != value:
            continue
        if isinstance(dist, CategoricalDistribution):
            trial.suggest_categorical(key, dist.choices)
        elif isinstance(dist, IntDistribution):
            trial.suggest_int(key, dist.low, dist.high)
        else:
            trial.suggest_float(key, dist.low, dist.high)
