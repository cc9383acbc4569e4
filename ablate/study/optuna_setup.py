"""The Optuna side of a study: samplers and pruners from the study file, opening (or creating) the study, and the
guards that keep a stored study's trials comparable with the file as it reads now (base config, metric, search
space, warm start), or set them aside (--force-new)."""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone

import optuna
from optuna.trial import TrialState

from ablate.checkpoint import checkpoint_root
from ablate.config import RECIPE_KEY, TrialConfig
from ablate.errors import AblateError
from ablate.plan import StudyPlan
from ablate.spec import OPERATIONAL_KEYS, StudySpec, flatten, trial_config
from ablate.storage import Attr

# study.sampler -> (Optuna sampler class, its settings); each worker adds its own seed
SAMPLERS = {
    "tpe": (optuna.samplers.TPESampler, dict(multivariate=True, group=True, constant_liar=True)),
    "gp": (optuna.samplers.GPSampler, {}),
    "random": (optuna.samplers.RandomSampler, {}),
    "grid": (optuna.samplers.RandomSampler, {}),  # grid trials take their cell from the queue: never sampled
}
# study.pruner -> (Optuna pruner class, its settings); hyperband's max_resource is the trial's epochs
PRUNERS = {
    "none": (optuna.pruners.NopPruner, {}),
    "median": (optuna.pruners.MedianPruner, dict(n_startup_trials=3, n_warmup_steps=1)),
    "hyperband": (optuna.pruners.HyperbandPruner, dict(min_resource=1)),
    "asha": (optuna.pruners.SuccessiveHalvingPruner, dict(min_resource=1, reduction_factor=3)),
}


def make_sampler(plan: StudyPlan, worker: int = 0) -> optuna.samplers.BaseSampler:
    cls, settings = SAMPLERS[plan.spec.cfg.study.sampler]
    return cls(seed=plan.first_seed + worker, **settings)  # distinct streams: workers must not sample alike


def make_pruner(plan: StudyPlan) -> optuna.pruners.BasePruner:
    cls, settings = PRUNERS[plan.spec.cfg.study.pruner]
    if cls is optuna.pruners.HyperbandPruner:  # its resource: validations (train.val_every per epoch)
        train_cfg = plan.base.train
        settings = settings | {"max_resource": train_cfg.epochs * validations_per_epoch(train_cfg.val_every)}
    return cls(**settings)


def validations_per_epoch(val_every: float) -> int:
    return max(1, round(1 / val_every))


def open_study(plan: StudyPlan, storage, worker: int = 0) -> optuna.Study:
    """Load the Optuna study with this worker's sampler and the study's pruner, or create it.

    Loading first writes nothing (creating an existing study appends to a journal before it fails)."""
    spec = plan.spec
    directions = [optuna.study.StudyDirection[o.direction.upper()] for o in spec.cfg.study.objectives()]
    try:
        study = optuna.load_study(study_name=spec.name, storage=storage, sampler=make_sampler(plan, worker),
                                  pruner=make_pruner(plan))
    except KeyError:  # a new study (another worker may be creating it at this moment)
        return optuna.create_study(study_name=spec.name, storage=storage, sampler=make_sampler(plan, worker),
                                   pruner=make_pruner(plan), load_if_exists=True, directions=directions)
    if study.directions != directions:
        stored = ", ".join(d.name.lower() for d in study.directions)
        raise AblateError(f"{spec.path}: study.direction: study {spec.name!r} in the store optimises {stored}, "
                          f"this file {', '.join(d.name.lower() for d in directions)} (run it under a new study.name, "
                          "or with --force-new to set the old trials aside and start over)")
    return study


# keys added to ablate after a study may have been stored, and the value that reproduces how its trials ran then
BEHAVIOUR_BEFORE = {"data.order": "fixed", "train.eval": "raw"}


def fingerprint(spec: StudySpec) -> dict:
    """What every trial of the study shares and must keep sharing to stay comparable: the resolved base config
    (less operational keys) and the objectives. Stored on the Optuna study when it is created."""
    # a recipe's name is left out: its values are in the base, so naming the recipe a base spelled out changes nothing
    base = {k: v for k, v in flatten(trial_config(spec, {}, 0)).items()
            if not k.startswith(OPERATIONAL_KEYS) and k != RECIPE_KEY}
    metric = [f"{o.metric} {o.direction}" for o in spec.cfg.study.objectives()]
    return {"base": json.loads(json.dumps(base, default=str)), "metric": metric}


def fingerprint_change(spec: StudySpec, stored: dict) -> str | None:
    """The first incomparable change since `stored` was recorded, as 'key: old -> new', or None. A key ablate added
    since then compares with the value that behaves as ablate did (BEHAVIOUR_BEFORE, else its default): a study
    stored before seeds drew the data order continues only under data.order: fixed."""
    now = fingerprint(spec)
    if stored.get("metric") and stored["metric"] != now["metric"]:
        return f"study.metric: {', '.join(stored['metric'])} -> {', '.join(now['metric'])}"
    old = stored.get("base", {})
    defaults = json.loads(json.dumps(flatten(TrialConfig()), default=str))
    inert = {"train.eval"} if not now["base"].get("train.ema") else set()  # without EMA there is one set of weights
    for key in sorted(set(old) | set(now["base"])):
        if key not in now["base"]:
            continue  # a key the schema no longer has for this dataset (data configs per dataset): nothing to compare
        if key not in old:
            before = BEHAVIOUR_BEFORE.get(key, defaults.get(key, object()))
            if key in inert or now["base"][key] == before:
                continue  # added since the study was stored, at the value that runs as the stored trials ran
            return f"base.{key}: (added since; {before!r} runs as the stored trials did) -> {now['base'][key]!r}"
        if old[key] != now["base"][key]:
            return f"base.{key}: {old[key]!r} -> {now['base'][key]!r}"
    return None


def check_comparable(study: optuna.Study, plan: StudyPlan) -> None:
    """Refuse a file whose trials would not be comparable with the study's: its base config or metric changed."""
    spec = plan.spec
    stored = study.user_attrs.get(Attr.FINGERPRINT)
    if stored is None:  # a new study, or one from before fingerprints: this file is the reference from now on
        study.set_user_attr(Attr.FINGERPRINT, fingerprint(spec))
        return
    change = fingerprint_change(spec, stored)
    if change:
        raise AblateError(f"{spec.path}: {change} since study {spec.name!r} was first run: its trials would not be "
                          f"comparable (run it under a new study.name, or with --force-new to set the old trials "
                          f"aside and start over)")


def check_warm_start(plan: StudyPlan, storage) -> None:
    """study.warm_start names a study of this storage, and this study searches (a grid has nothing to warm)."""
    spec = plan.spec
    earlier = spec.cfg.study.warm_start
    if earlier is None:
        return
    if spec.is_grid:
        raise AblateError(f"{spec.path}: study.warm_start: a grid runs every cell; warm_start is for sampler tpe, "
                          "random or gp")
    if earlier not in optuna.get_all_study_names(storage):
        raise AblateError(f"{spec.path}: study.warm_start: no study {earlier!r} in the storage")


def distribution(values) -> optuna.distributions.BaseDistribution:
    """The Optuna distribution sample_params draws a space key from."""
    if isinstance(values, list):
        return optuna.distributions.CategoricalDistribution(values)
    if values.type == "int":
        return optuna.distributions.IntDistribution(int(values.low), int(values.high), step=int(values.step or 1),
                                                    log=values.log)
    return optuna.distributions.FloatDistribution(values.low, values.high, step=values.step, log=values.log)


def check_search_space(study: optuna.Study, plan: StudyPlan) -> None:
    """A searched study's keys must keep the kind of distribution its trials were sampled from (Optuna fails every
    later trial otherwise): other choices, a range for choices, log on or off. Keys added or dropped are fine."""
    spec = plan.spec
    if spec.is_grid:
        return
    recorded = {}
    for t in study.get_trials(deepcopy=False):
        recorded.update(t.distributions)
    for key in sorted(set(recorded) & set(spec.space)):
        now = distribution(spec.space[key])
        try:
            optuna.distributions.check_distribution_compatibility(recorded[key], now)
        except ValueError:
            raise AblateError(f"{spec.path}: space.{key}: study {spec.name!r} in the store samples it from "
                              f"{_domain(recorded[key])}, this file from {_domain(now)}; Optuna cannot mix them "
                              "(run it under a new study.name, or with --force-new to set the old trials aside)"
                              ) from None


def _domain(d: optuna.distributions.BaseDistribution) -> str:
    if isinstance(d, optuna.distributions.CategoricalDistribution):
        return f"choices {list(d.choices)}"
    return f"{'a log ' if d.log else 'a '}range [{d.low}, {d.high}]{f' step {d.step}' if d.step else ''}"


def set_aside(plan: StudyPlan, storage) -> str | None:
    """--force-new: move an existing study to '<name>.before-<UTC time>' (its results stay readable there)."""
    name = plan.name
    if name not in {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}:
        return None
    aside = f"{name}.before-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    optuna.copy_study(from_study_name=name, from_storage=storage, to_storage=storage, to_study_name=aside)
    optuna.delete_study(study_name=name, storage=storage)
    # its stopped trials' checkpoints go with it: starting over must not resume them
    root = checkpoint_root(plan.base)
    if (root / name).is_dir():
        os.replace(root / name, root / aside)
    return aside


def warm_start(study: optuna.Study, plan: StudyPlan, storage) -> int:
    """study.warm_start: the earlier study's finished trials whose params fit this study's space are added (once,
    to a new study) for the sampler to learn from; they are marked, and neither counted nor reported as ours."""
    spec = plan.spec
    earlier = spec.cfg.study.warm_start
    if not earlier or spec.is_grid or study.get_trials(deepcopy=False):
        return 0
    other = optuna.load_study(study_name=earlier, storage=storage)  # check_warm_start found it
    distributions = {key: distribution(values) for key, values in spec.space.items()}
    added = 0
    for t in other.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if not t.params or not all(k in distributions and fits(distributions[k], v) for k, v in t.params.items()):
            continue
        study.add_trial(optuna.trial.create_trial(
            params=t.params, distributions={k: distributions[k] for k in t.params}, values=t.values,
            user_attrs={Attr.WARM_FROM: earlier}))
        added += 1
    return added


def fits(dist: optuna.distributions.BaseDistribution, value) -> bool:
    try:
        return dist._contains(dist.to_internal_repr(value))
    except (ValueError, TypeError):  # a choice this study's space does not hold
        return False
