"""What a study file means: its validated schema, included search spaces, grid cells and their identity.

No Optuna and no torch here: the registry's metadata is all it reads (ablate.cells builds the models), so a report
reads a study file without importing torch. A grid cell is identified by what it is, never by where it stands in
the file: its key is the canonical JSON of the dotted params that make it differ from the base config (a knob at
its module's default, or a key set to the base's own value, changes nothing), and a trial is that key plus its
seed. Editing the file (re-ordering, adding seeds, modules, knob values or cells) keeps every finished trial
attached to its configuration; what would make old trials incomparable (the base config, the metric) is
fingerprinted here and checked by the runner.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from pydantic import ValidationError

from ablate.attention import get_attention, resolve_knobs
from ablate.config import (
    KNOB_PREFIX,
    METRICS,
    MODULE_KEY,
    SELECTION_ONLY_METRICS,
    STEP_CONSTRAINTS,
    Range,
    StudyConfig,
    TrialConfig,
    apply_overrides,
    flatten,
    keys_with_effect,
    load_yaml,
    parse_trial,
    validation_error,
)
from ablate.errors import AblateError, at, path_kind, within
from ablate.reference import check_reference, read_printed

# trial-config keys that change how a trial runs, not what it computes: editing them keeps old trials comparable
OPERATIONAL_KEYS = keys_with_effect(TrialConfig, "repeat", "layout", "run", "record")  # each field says its effect
MAX_GRID_VALUES = 10_000  # a grid range with more steps than this is a typo in its step, not an ablation
MAX_RANGE_STEPS = 10**9  # past this Optuna's decimal arithmetic on the step fails


@dataclass
class StudySpec:
    path: Path
    cfg: StudyConfig
    base: dict  # the base trial config with command-line overrides applied
    space: dict[str, list | Range] = field(default_factory=dict)
    origin: dict[str, Path] = field(default_factory=dict)  # space key -> the included file it came from

    @property
    def name(self) -> str:
        return self.cfg.study.name

    @property
    def is_grid(self) -> bool:
        return self.cfg.study.sampler == "grid"


@dataclass(frozen=True)
class Cell:
    """One configuration: its identity (cell_key), its dotted params, and a ladder row's own name (a study file's
    `cells: [{name: ...}]`), which is a label, never a param."""

    key: str
    params: dict
    name: str | None = None

    @property
    def label(self) -> str:  # the report's row and the trials' `label` attr
        return self.name if self.name is not None else cell_label(self.params)

    @property
    def run_label(self) -> str:  # the configuration run's name in MLflow
        return self.name if self.name is not None else run_label(self.params)

    @property
    def location(self) -> str:  # how an error names it
        return cell_location(self.params) if self.name is None else f"cell {self.name}"

    @classmethod
    def from_attrs(cls, key: str, params: dict, label: str) -> Cell:
        """A cell as a trial recorded it (stores from before this record kept a ladder row's name in its params)."""
        plain = {k: v for k, v in params.items() if k != "name"}
        return cls(key, plain, label if "name" in params or label != cell_label(plain) else None)


# ---------------------------------------------------------------- loading and validation

# complexity over 10 on purpose: the order of a study file's checks is the order of its one-line errors
def load_study(path: str | Path, overrides: list[str] = ()) -> StudySpec:  # noqa: C901
    """Parse and fully validate a study file; every error names the file and the key."""
    path = Path(path)
    data = load_yaml(path)
    study_overrides = [o for o in overrides if o.split("=", 1)[0].split(".")[0] in ("study", "space", "launcher")]
    data = apply_overrides(data, [o for o in study_overrides if not o.startswith("space.")], "command line")
    space = [o.removeprefix("space.") for o in study_overrides if o.startswith("space.")]
    if space:  # space.model.attention.name=[se,cbam]: the rest of the key is one dotted space key
        data["space"] = apply_overrides(data.get("space") or {}, space, "command line", nested=False)
    try:
        cfg = StudyConfig.model_validate(data)
    except ValidationError as e:
        raise validation_error(str(path), e, StudyConfig) from None
    base = apply_overrides(cfg.base, [o for o in overrides if o not in study_overrides], "command line")
    base_cfg = parse_trial(base, f"{path}: base")
    base.setdefault("tracking", {})["experiment"] = cfg.study.name  # one experiment per study

    space: dict[str, list | Range] = {}
    origin: dict[str, Path] = {}
    for include in cfg.include:
        keys, found = _load_space(path, include)
        space.update(keys)
        origin.update(dict.fromkeys(keys, found))
    space.update(cfg.space)
    for key in cfg.space:  # the study's own keys win over included ones
        origin.pop(key, None)
    spec = StudySpec(path, cfg, base, space, origin)
    _check_space(spec, base_cfg)
    for objective in cfg.study.objectives():
        if objective.metric not in METRICS:
            raise AblateError(f"{path}: study.metric: no trial logs {objective.metric!r} "
                              f"(metrics: {', '.join(METRICS)})")
        if objective.metric in SELECTION_ONLY_METRICS:  # one metric end to end: the table reports study.metric
            raise AblateError(f"{path}: study.metric: {objective.metric!r} is a max over epochs on the split that "
                              "chose it, biased upwards as a reported number (use val/acc1, the last epoch's; "
                              "data.holdout keeps selection off the reported split)")
    timed = [k for k in cfg.study.constraints if k in STEP_CONSTRAINTS]
    if timed and not cfg.study.price_steps:
        raise AblateError(f"{path}: study.constraints.{timed[0]}: a limit on the training step's price needs "
                          f"study.price_steps: true (the step is measured before training)")
    if len(cfg.study.objectives()) > 1 and cfg.study.pruner != "none":
        raise AblateError(f"{path}: study.pruner: Optuna cannot prune multi-objective studies (use pruner: none)")
    if spec.is_grid and cfg.study.pruner != "none":
        raise AblateError(f"{path}: study.pruner: a grid estimates each configuration over its seeds, and pruning "
                          f"would leave its mean over the seeds the pruner let finish (use pruner: none; "
                          f"{cfg.study.pruner} prunes a search: sampler tpe, random or gp)")
    if spec.is_grid and cfg.study.confirm is not None:
        raise AblateError(f"{path}: study.confirm: a grid runs every configuration on every seed, so there is no "
                          "search winner to confirm (confirm is for sampler tpe, random or gp)")
    if base_cfg.train.limit_val_batches == 0 and any(o.metric.startswith("val/") for o in cfg.study.objectives()):
        raise AblateError(f"{path}: base.train.limit_val_batches: 0 turns validation off, and the study's metric is "
                          "a validation metric (give a number of batches, or null for all)")
    if spec.is_grid:
        cells = grid_cells(spec)
        for cell in cells:
            trial_config(spec, cell.params, cfg.study.seed_list[0])  # every cell must be a valid trial
        _check_labels(spec, cells)
        if cfg.study.trials is not None:
            raise AblateError(f"{path}: study.trials (or --trials): a grid runs every cell x seed "
                              f"({len(cells) * len(cfg.study.seed_list)} trials here); trials is for sampler tpe, "
                              "random or gp")
    elif cfg.study.trials is None:
        raise AblateError(f"{path}: study.trials: sampler {cfg.study.sampler!r} needs a number of trials")
    elif not spec.space:
        raise AblateError(f"{path}: space: sampler {cfg.study.sampler!r} has nothing to search "
                          "(add keys to space or include, or use sampler: grid)")
    with within(str(path)):
        check_reference(spec.cfg.reference, grid_cells(spec) if spec.is_grid else None)
        read_printed(spec.cfg.reference, path)  # the paper's printed precision: the numbers' text, not YAML's floats
    if not spec.is_grid:
        baseline_params(spec)  # named in advance as key=value pairs, each a key of the trial config
    if spec.is_grid and cfg.study.baseline is not None and not any(
            names_row(cfg.study.baseline, c.params, c.label) for c in grid_cells(spec)):
        rows = ", ".join(c.label for c in grid_cells(spec)[:6])
        raise AblateError(f"{path}: study.baseline: {cfg.study.baseline!r} names no configuration of the grid (a row "
                          f"label or key=value pairs; its rows: {rows})")
    return spec


def _check_labels(spec: StudySpec, cells: list[Cell]) -> None:
    """The report's rows are the cells' labels: two cells under one label would be merged into one row."""
    seen: dict[str, dict] = {}
    for cell in cells:
        shown = cell.params | ({"name": cell.name} if cell.name is not None else {})  # as the file writes it
        if cell.label in seen:
            raise AblateError(f"{spec.path}: cells: two configurations are both named {cell.label!r} "
                              f"({seen[cell.label]} and {shown}); their rows would be merged: give each its own name:")
        seen[cell.label] = shown


def _load_space(study_path: Path, include: str) -> tuple[dict, Path]:
    """An `include:`d search space file: its keys and where it was found."""
    for candidate in (Path(include), study_path.parent / include, study_path.parent.parent / include):
        with within(str(study_path)), at("include"):
            kind = path_kind(candidate)  # a name too long, a loop of links: said as such
        if kind == "file":
            data = load_yaml(candidate)
            others = sorted(set(data) - {"space"}) if "space" in data else []
            if others or "include" in data:  # a study file's base or include would be dropped without a word
                raise AblateError(f"{candidate}: {(others or ['include'])[0]}: a search space file holds only "
                                  "space: (its keys and values); include files from the study file itself")
            data = data.get("space", data)
            try:
                return StudyConfig.model_validate({"study": {"name": "x"}, "space": data}).space, candidate
            except ValidationError as e:
                raise validation_error(str(candidate), e, StudyConfig) from None
    raise AblateError(f"{study_path}: include: no search space file {include!r}")


def _space_source(spec: StudySpec, key: str) -> str:
    """The file a space key came from: the study's own, or the included search space file."""
    return str(spec.origin.get(key, spec.path))


# complexity over 10 on purpose: each space key's checks in the order a user reads the file
def _check_space(spec: StudySpec, base_cfg: TrialConfig) -> None:  # noqa: C901
    modules = spec.space.get(MODULE_KEY, [base_cfg.model.attention.name])
    with within(_space_source(spec, MODULE_KEY)), at(f"space.{MODULE_KEY}"):
        if isinstance(modules, Range):
            raise AblateError("attention modules are choices (a list of names), not a range")
        for name in modules:
            if not isinstance(name, str):
                raise AblateError(f"{name!r} is not a module name (choices are names: [none, se, cbam])")
            if name != "none":
                get_attention(name)
    for key, values in spec.space.items():
        with within(_space_source(spec, key)), at(f"space.{key}"):
            if isinstance(values, list) and not values:
                raise AblateError("empty choices")
            if isinstance(values, Range):
                _check_range(values, spec.is_grid)
    for key, values in spec.space.items():
        if key.startswith(KNOB_PREFIX):
            knob = key.removeprefix(KNOB_PREFIX)
            takers = [m for m in modules if m != "none" and knob in get_attention(m).knobs]
            with within(_space_source(spec, key)), at(f"space.{key}"):
                if not takers:
                    raise AblateError(f"no module in the study takes knob {knob!r}")
            with within(_space_source(spec, key)), at(f"space.{KNOB_PREFIX.rstrip('.')}"):  # + the knob's key
                for value in values_to_check(values):
                    for module in takers:
                        with _range_fits(values, value, key):
                            resolve_knobs(module, {knob: value})
        elif key != "seed":  # every choice (both ends of a range) must make a valid trial config
            for value in values_to_check(values):
                with _range_fits(values, value, key, f"{_space_source(spec, key)}: space.{key}"):
                    parse_trial(set_dotted(copy.deepcopy(spec.base), key, value), f"{_space_source(spec, key)}: space")


def _check_range(r: Range, grid: bool) -> None:
    """What Optuna (or a grid) would refuse or choke on, refused now."""
    if r.low > r.high:
        raise AblateError(f"range low {r.low} > high {r.high}")
    if r.log and r.low <= 0:
        raise AblateError("a log range needs low > 0")
    if r.log and r.step is not None and not (r.type == "int" and r.step == 1):
        raise AblateError("log: true samples on a log scale, step on an even one: give one of them")
    if r.type == "int" and any(v is not None and v != int(v) for v in (r.low, r.high, r.step)):
        raise AblateError(f"a range of type int takes whole numbers (low {r.low}, high {r.high}, step {r.step})")
    if grid and r.step is None:
        raise AblateError("a grid needs choices or a range with step")
    steps = (r.high - r.low) / r.step if r.step else 0
    if not math.isfinite(steps) or steps > MAX_RANGE_STEPS or grid and steps + 1 > MAX_GRID_VALUES:
        limit = f"{MAX_GRID_VALUES} values in a grid" if grid else f"{MAX_RANGE_STEPS} steps"
        raise AblateError(f"step {r.step} makes {steps + 1:.3g} values from {r.low} to {r.high} (at most {limit})")


@contextmanager
def _range_fits(values: list | Range, value, key: str, where: str | None = None) -> Iterator[None]:
    """A float range's inner point refused where its ends pass: the key takes whole numbers. `where`: the error's
    location when the check inside gives a whole line rather than a keyed message."""
    try:
        yield
    except AblateError as e:
        if isinstance(values, Range) and value not in (values.low, values.high):
            problem = f"a float range, but {key} takes whole numbers: give the range type: int"
            raise (AblateError(f"{where}: {problem}") if where else AblateError(problem, key=e.key)) from None
        raise


def values_to_check(values: list | Range) -> list:
    """What validation tries of a space key: every choice, or both ends of a range (and, for a float range, a
    fractional point between them: a sampler suggests such values)."""
    if isinstance(values, list):
        return values
    inner = [] if values.type == "int" or values.step else [values.low + (values.high - values.low) * 0.37]
    return [values.low, values.high, *inner]


def grid_values(values: list | Range) -> list:
    """The values a grid takes of a space key: its choices, or every step of its range."""
    if isinstance(values, list):
        return values
    n = int(round((values.high - values.low) / values.step)) + 1
    steps = [values.low + i * values.step for i in range(n)]
    return [int(v) for v in steps] if values.type == "int" else steps


def set_dotted(tree: dict, dotted: str, value: Any) -> dict:
    node = tree
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return tree


def module_of(params: dict, spec: StudySpec) -> str:
    """The attention module a configuration uses: its own choice, else the base config's."""
    return params.get(MODULE_KEY, spec.base.get("model", {}).get("attention", {}).get("name", "none"))


def knob_applies(key: str, params: dict, spec: StudySpec) -> bool:
    """A knob is sampled only for modules that take it (define-by-run from the registry's metadata)."""
    if not key.startswith(KNOB_PREFIX):
        return True
    module = module_of(params, spec)
    return module != "none" and key.removeprefix(KNOB_PREFIX) in get_attention(module).knobs


# ---------------------------------------------------------------- grid cells and their identity

def keyed_cells(spec: StudySpec) -> dict[str, Cell]:
    """Every configuration of a grid study by its cell key, in file order."""
    explicit = spec.cfg.cells or [{}]
    if spec.cfg.study.ladder:  # each row adds its keys to the previous row
        rows, acc = [], {}
        for cell in explicit:
            acc = acc | cell
            rows.append(dict(acc))
        explicit = rows
    keys = list(spec.space)
    base = flatten(trial_config(spec, {}, 0))  # resolved once: every cell is compared with it
    cells: dict[str, Cell] = {}
    for prefix in explicit:
        name = str(prefix["name"]) if "name" in prefix else None  # a ladder row's label, not a param
        for combo in itertools.product(*(grid_values(spec.space[k]) for k in keys)):
            params = {k: v for k, v in prefix.items() if k != "name"} | dict(zip(keys, combo))
            params = {k: v for k, v in params.items() if knob_applies(k, params, spec)}
            key = cell_key(spec, params, base, name)
            cells.setdefault(key, Cell(key, params, name))  # one per distinct key: the first wins
    return cells


def grid_cells(spec: StudySpec) -> list[Cell]:
    """Every configuration of a grid study, in file order; one per distinct cell key."""
    return list(keyed_cells(spec).values())


def cell_key(spec: StudySpec, params: dict, base: dict | None = None, name: str | None = None) -> str:
    """A configuration's identity: canonical JSON of the dotted params whose resolved value differs from the
    base config's (for a knob: from its module's default), and a ladder row's name (two rows may hold the
    same params: the ladder still shows both). '{}' is the base config itself. `base`: the flattened base
    config, when the caller has it; `name`: a ladder row's."""
    cfg = flatten(trial_config(spec, params, 0))
    base = base if base is not None else flatten(trial_config(spec, {}, 0))
    module = module_of(params, spec)
    knobs = resolve_knobs(module, _knobs(params)) if module != "none" else {}
    differs = {"name": name} if name is not None else {}
    for key in sorted(params):
        if key.startswith(KNOB_PREFIX):
            knob = key.removeprefix(KNOB_PREFIX)
            default = get_attention(module).knobs[knob].default
            if knobs[knob] != default:
                differs[key] = list(knobs[knob]) if isinstance(knobs[knob], tuple) else knobs[knob]
        elif cfg.get(key, params[key]) != base.get(key, object()):
            differs[key] = cfg.get(key, params[key])
    return json.dumps(differs, sort_keys=True, separators=(",", ":"), default=str)


def cell_digest(key: str) -> str:
    """A cell key's short digest: keys are JSON, digests are names (checkpoint folders, run tags)."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _knobs(params: dict) -> dict:
    return {k.removeprefix(KNOB_PREFIX): v for k, v in params.items() if k.startswith(KNOB_PREFIX)}


def trial_config(spec: StudySpec, params: dict, seed: int) -> TrialConfig:
    tree = copy.deepcopy(spec.base)
    for key, value in params.items():
        set_dotted(tree, key, value)
    set_dotted(tree, "train.seed", seed)
    return parse_trial(tree, f"{spec.path}: cell {params}")


def cell_label(params: dict) -> str:
    """A row's name from its varied keys ('attention=se, reduction=8'; a ladder row goes by its own: Cell.label)."""

    def short(key: str) -> str:
        return "attention" if key == MODULE_KEY else key.split(".")[-1]

    return ", ".join(f"{short(k)}={v}" for k, v in params.items()) or "base"


def cell_location(params: dict) -> str:
    """How an error names a configuration: its cell, or the base config when nothing varies."""
    return f"cell {cell_label(params)}" if params else "base"


# ---------------------------------------------------------------- cost limits (study.constraints)

def constraint_excess(spec: StudySpec, cost: dict[str, float]) -> dict[str, float]:
    """Each limit of study.constraints as Optuna takes it: by how much the cost exceeds it (<= 0: within)."""
    excess = {}
    for name, bound in spec.cfg.study.constraints.items():
        over = [cost[name] - bound.max] if bound.max is not None else []
        under = [bound.min - cost[name]] if bound.min is not None else []
        excess[name] = max(over + under)
    return excess


def refusal(spec: StudySpec, cost: dict[str, float]) -> str | None:
    """Why study.constraints refuse a configuration of this cost ('params_m 1.42 > max 1.30'), or None."""
    why = []
    for name, bound in spec.cfg.study.constraints.items():
        if bound.max is not None and cost[name] > bound.max:
            why.append(f"{name} {cost[name]:.3g} > max {bound.max:g}")
        if bound.min is not None and cost[name] < bound.min:
            why.append(f"{name} {cost[name]:.3g} < min {bound.min:g}")
    return "; ".join(why) or None


# ---------------------------------------------------------------- names

KNOB_ABBREVIATIONS = {"reduction": "r", "kernel_size": "k"}  # as papers write them: SE r=16, ECA k=3


def run_label(params: dict) -> str:
    """A configuration as a run is named: the module bare and the rest as key=value ('cbam r=8 k=5', 'se lr=0.1');
    'base' when nothing varies (a ladder row goes by its own name: Cell.run_label)."""
    parts = []
    for key, value in params.items():
        if key == MODULE_KEY:
            parts.insert(0, str(value))
        else:
            short = key.split(".")[-1]
            parts.append(f"{KNOB_ABBREVIATIONS.get(short, short) if key.startswith(KNOB_PREFIX) else short}={value}")
    return " ".join(parts) or "base"


PLAIN_BASELINE = f"{MODULE_KEY}=none"  # a search's default control: the plain backbone, the base config's other values


def baseline_params(spec: StudySpec) -> dict:
    """A search's control, named in advance (study.baseline, default the plain backbone) as the dotted params it
    sets on the base config: 'attention=none, lr=0.1' -> {'model.attention.name': 'none', 'train.lr': 0.1}. A key
    is `attention`, a dotted key of the trial config, or the last part of a space key; a row label is refused (a
    search's rows are not known before it runs)."""
    expr, where = spec.cfg.study.baseline or PLAIN_BASELINE, f"{spec.path}: study.baseline"
    pairs = [part.strip().partition("=") for part in expr.split(",")]
    if any(not sep or not key.strip() for key, sep, _ in pairs):
        raise AblateError(f"{where}: a search names its control in advance as key=value pairs (e.g. "
                          f"'attention=none' or 'model.attention.name=none, train.lr=0.1'), not a row label: {expr!r}")
    params: dict = {}
    for key, _, raw in pairs:
        key = key.strip()
        dotted = MODULE_KEY if key == "attention" else key if "." in key else next(
            (k for k in spec.space if k.endswith("." + key)), None)
        if dotted is None:
            raise AblateError(f"{where}: {key!r} is no key of the search space; give its dotted trial-config key "
                              f"(e.g. train.{key})")
        params |= apply_overrides({}, [f"{dotted}={raw.strip()}"], where, nested=False)
    tree = copy.deepcopy(spec.base)
    for key, value in params.items():
        set_dotted(tree, key, value)
    parse_trial(tree, where)  # each key and value must make a valid trial config
    return params


def names_row(expr: str, params: dict, label: str) -> bool:
    """Does `expr` (study.baseline, report --baseline) name this configuration: its label, or key=value pairs whose
    keys are `attention`, a dotted key or its last part ('attention=none, lr=0.1')?"""
    if expr == label:
        return True
    pairs = [part.strip().partition("=") for part in expr.split(",")]
    if any(not sep for _, sep, _ in pairs):
        return False
    named = lambda key, dotted: dotted == (MODULE_KEY if key == "attention" else key) or dotted.endswith("." + key)  # noqa: E731
    return all(any(named(key, k) and str(v) == value for k, v in params.items()) for key, _, value in pairs)
