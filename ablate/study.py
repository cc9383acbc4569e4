"""Studies: a study YAML -> an Optuna study whose trials are tracked Lightning runs.

  load_study(path)       validate everything (file, keys, modules, knobs, metric) before any store is touched
  grid_cells(study)      the configurations of a grid study (conditional knobs dropped, duplicates removed)
  run_study(study, ...)  storage + sampler + pruner + MLflow parent run, then N workers claim trials

Grid studies enqueue every cell x seed as a WAITING Optuna trial; workers claim them through Optuna's
atomic trial queue, so `--jobs N` never runs a cell twice. Running a study again resumes it: trials
left RUNNING by a dead process are failed (their MLflow runs too), and every cell x seed without a
COMPLETE or PRUNED trial is enqueued again. Several `ablate run` processes may share a study: setup is
serialised by a lock (a file beside the journal, or a PostgreSQL advisory lock), and on PostgreSQL
heartbeats let a live worker fail and retry a dead machine's trial.
"""
from __future__ import annotations

import copy
import itertools
import os
import signal
import socket
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ablate.config import (METRICS, Range, StudyConfig, TrialConfig, apply_overrides, load_yaml, parse_trial,
                           validation_error)
from ablate.errors import AblateError, describe, one_line

KNOB_PREFIX = "model.attention.knobs."
MODULE_KEY = "model.attention.name"
JOURNAL = "mlruns/optuna.journal"


@dataclass
class Study:
    path: Path
    cfg: StudyConfig
    base: dict  # the base trial config with command-line overrides applied
    space: dict[str, list | Range] = field(default_factory=dict)
    origin: dict[str, Path] = field(default_factory=dict)  # space key -> the included file it came from

    @property
    def name(self) -> str:
        return self.cfg.study.name

    @property
    def heartbeat(self) -> tuple[int, int]:
        return self.cfg.study.heartbeat_interval, self.cfg.study.grace_period

    @property
    def is_grid(self) -> bool:
        return self.cfg.study.sampler == "grid"


# ---------------------------------------------------------------- loading and validation

def load_study(path: str | Path, overrides: list[str] = ()) -> Study:
    """Parse and fully validate a study file; every error names the file and the key."""
    path = Path(path)
    data = load_yaml(path)
    study_overrides = [o for o in overrides if o.split("=", 1)[0].split(".")[0] in ("study", "space")]
    data = apply_overrides(data, [o for o in study_overrides if o.startswith("study")], "command line")
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
    study = Study(path, cfg, base, space, origin)
    _check_space(study, base_cfg)
    for objective in cfg.study.objectives():
        if objective.metric not in METRICS:
            raise AblateError(f"{path}: study.metric: no trial logs {objective.metric!r} (metrics: {', '.join(METRICS)})")
    if len(cfg.study.objectives()) > 1 and cfg.study.pruner != "none":
        raise AblateError(f"{path}: study.pruner: Optuna cannot prune multi-objective studies (use pruner: none)")
    if study.is_grid:
        for cell in grid_cells(study):
            trial_config(study, cell, cfg.study.seeds[0])  # every cell must be a valid trial
    elif cfg.study.trials is None:
        raise AblateError(f"{path}: study.trials: sampler {cfg.study.sampler!r} needs a number of trials")
    elif not study.space:
        raise AblateError(f"{path}: space: sampler {cfg.study.sampler!r} has nothing to search "
                          "(add keys to space or include, or use sampler: grid)")
    return study


def _load_space(study_path: Path, include: str) -> tuple[dict, Path]:
    """An `include:`d search space file: its keys and where it was found."""
    for candidate in (Path(include), study_path.parent / include, study_path.parent.parent / include):
        if candidate.is_file():
            data = load_yaml(candidate)
            data = data.get("space", data)
            try:
                return StudyConfig.model_validate({"study": {"name": "x"}, "space": data}).space, candidate
            except ValidationError as e:
                raise validation_error(str(candidate), e, StudyConfig) from None
    raise AblateError(f"{study_path}: include: no search space file {include!r}")


def _check_space(study: Study, base_cfg: TrialConfig) -> None:
    from ablate.attention import get_attention, resolve_knobs

    def where(key: str) -> str:  # the file the key came from: the study or an included space file
        return f"{study.origin.get(key, study.path)}: space.{key}"

    modules = study.space.get(MODULE_KEY, [base_cfg.model.attention.name])
    for key, spec in study.space.items():
        if isinstance(spec, list) and not spec:
            raise AblateError(f"{where(key)}: empty choices")
        if isinstance(spec, Range):
            if spec.low > spec.high:
                raise AblateError(f"{where(key)}: range low {spec.low} > high {spec.high}")
            if spec.log and spec.low <= 0:
                raise AblateError(f"{where(key)}: a log range needs low > 0")
            if study.is_grid and spec.step is None:
                raise AblateError(f"{where(key)}: a grid needs choices or a range with step")
    for name in modules:
        if name != "none":
            get_attention(name, where(MODULE_KEY))
    for key, spec in study.space.items():
        if key.startswith(KNOB_PREFIX):
            knob = key.removeprefix(KNOB_PREFIX)
            takers = [m for m in modules if m != "none" and knob in get_attention(m).knobs]
            if not takers:
                raise AblateError(f"{where(key)}: no module in the study takes knob {knob!r}")
            for value in _ends(spec):
                for m in takers:
                    resolve_knobs(m, {knob: value}, where=where(key))
        elif key != "seed":  # every choice (both ends of a range) must make a valid trial config
            for value in _ends(spec):
                parse_trial(_set(copy.deepcopy(study.base), key, value), f"{study.origin.get(key, study.path)}: space")


def _ends(spec: list | Range) -> list:
    """What validation tries of a space key: every choice, or both ends of a range."""
    return spec if isinstance(spec, list) else [spec.low, spec.high]


def _set(tree: dict, dotted: str, value: Any) -> dict:
    node = tree
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return tree


def _module_of(params: dict, study: Study) -> str:
    return params.get(MODULE_KEY, study.base.get("model", {}).get("attention", {}).get("name", "none"))


def _applies(key: str, params: dict, study: Study) -> bool:
    """A knob is sampled only for modules that take it (define-by-run from the registry's metadata)."""
    if not key.startswith(KNOB_PREFIX):
        return True
    from ablate.attention import get_attention

    module = _module_of(params, study)
    return module != "none" and key.removeprefix(KNOB_PREFIX) in get_attention(module).knobs


def _values(spec: list | Range) -> list:
    if isinstance(spec, list):
        return spec
    n = int(round((spec.high - spec.low) / spec.step)) + 1
    values = [spec.low + i * spec.step for i in range(n)]
    return [int(v) for v in values] if spec.type == "int" else values


def grid_cells(study: Study) -> list[dict]:
    """Every configuration of a grid study, as dotted-key dicts, in file order."""
    explicit = study.cfg.cells or [{}]
    if study.cfg.study.ladder:  # each row adds its keys to the previous row
        rows, acc = [], {}
        for cell in explicit:
            acc = acc | cell
            rows.append(dict(acc))
        explicit = rows
    keys = list(study.space)
    cells, seen = [], set()
    for prefix in explicit:
        for combo in itertools.product(*(_values(study.space[k]) for k in keys)):
            params = dict(prefix) | dict(zip(keys, combo))
            params = {k: v for k, v in params.items() if _applies(k, params, study)}
            key = repr(sorted(params.items()))
            if key not in seen:
                seen.add(key)
                cells.append(params)
    return cells


def trial_config(study: Study, params: dict, seed: int) -> TrialConfig:
    tree = copy.deepcopy(study.base)
    for key, value in params.items():
        if key != "name":  # a ladder row's label
            _set(tree, key, value)
    _set(tree, "train.seed", seed)
    return parse_trial(tree, f"{study.path}: cell {params}")


def build_cell(study: Study, params: dict, where: str, data: bool = True):
    """The model of one configuration (pretrained weights not fetched), after the cheap data checks (`data`);
    errors name the file and the cell. Returns (BuiltModel, TrialConfig)."""
    from ablate.data import check_data, dataset_shape
    from ablate.models import build_model

    cfg = trial_config(study, params, study.cfg.study.seeds[0])
    try:
        if data:
            check_data(cfg.data)
        if cfg.model.checkpoint and not Path(cfg.model.checkpoint).is_file():
            raise AblateError(f"model.checkpoint: no weights file at {cfg.model.checkpoint}")
        model_cfg = cfg.model.model_copy(update={"pretrained": False, "checkpoint": None})  # shapes only
        return build_model(model_cfg, *dataset_shape(cfg.data), cfg.data.image_size), cfg
    except AblateError as e:
        raise AblateError(f"{study.path}: {where}: {e}") from None


def check_cells(study: Study) -> None:
    """Build every distinct model the study can train (grid: each cell; search: the base with each value of each
    space key) and check its data folder, so bad input fails before any store is touched."""
    if study.is_grid:
        todo = [(_where(p), p) for p in grid_cells(study)]
    else:
        todo = [("base", {})]
        for key, spec in study.space.items():
            for value in _ends(spec):
                if not key.startswith(KNOB_PREFIX):
                    todo.append((f"space.{key}={value}", {key: value}))
                    continue
                for module in study.space.get(MODULE_KEY, [_module_of({}, study)]):  # each module taking the knob
                    params = {MODULE_KEY: module, key: value}
                    if _applies(key, params, study):
                        todo.append((f"space.{key}={value} with {module}", params))
    seen = set()
    for where, params in todo:
        cfg = trial_config(study, params, study.cfg.study.seeds[0])
        key = (cfg.model.model_dump_json(), cfg.data.model_dump_json())
        if key not in seen:  # training keys (lr, epochs ...) build the same model
            seen.add(key)
            build_cell(study, params, where)


def _where(params: dict) -> str:
    """How an error names a configuration: its cell, or the base config when nothing varies."""
    return f"cell {cell_label(params)}" if params else "base"


def cell_label(params: dict) -> str:
    """A row's name: a ladder row's own name, else its varied keys ('attention=se, reduction=8')."""
    if "name" in params:
        return str(params["name"])

    def short(key: str) -> str:
        return "attention" if key == MODULE_KEY else key.split(".")[-1]

    return ", ".join(f"{short(k)}={v}" for k, v in params.items()) or "base"


# ---------------------------------------------------------------- Optuna objects (factories)

def journal_file(url: str | None) -> str | None:
    """The journal file a storage URL names (None, the default, is mlruns/optuna.journal), or None for a database."""
    url = url or JOURNAL
    return None if "://" in url else url


def make_storage(url: str | None, jobs: int, heartbeat: tuple[int, int] = (30, 120)):
    from optuna.exceptions import ExperimentalWarning
    from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
    from optuna.storages.journal import JournalFileBackend

    journal = journal_file(url)
    if journal:  # safe for several processes on one machine
        try:
            Path(journal).parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(journal))
        except OSError as e:  # a folder where the file should be, a file where a folder should be, no rights
            raise AblateError(f"--storage: cannot use {journal} as the Optuna journal file ({type(e).__name__}: "
                              f"{e.strerror or e})") from None
    if url.startswith("sqlite") and jobs > 1:
        raise AblateError("--storage: SQLite does not take parallel workers; use the default journal or PostgreSQL")
    import time

    from sqlalchemy.exc import IntegrityError, ProgrammingError

    try:
        warnings.filterwarnings("ignore", category=ExperimentalWarning)  # heartbeats: "experimental" since 2.9
        for attempt in range(5):
            try:
                # several machines: heartbeats let another worker retry a dead machine's trial
                return RDBStorage(url, heartbeat_interval=heartbeat[0], grace_period=heartbeat[1],
                                  heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))
            except (IntegrityError, ProgrammingError):  # another worker is creating the same schema right now
                if attempt == 4:
                    raise
                time.sleep(0.5 * (attempt + 1))
    except Exception as e:  # noqa: BLE001 (driver and connection errors come in many types)
        from ablate.tracking import mask_password

        raise AblateError(f"--storage: cannot open {mask_password(url)}: {one_line(e, 200)}") from None


def make_sampler(study: Study, worker: int = 0):
    import optuna

    seed = study.cfg.study.seeds[0] + worker  # distinct streams, or parallel workers would sample alike
    kind = study.cfg.study.sampler
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)
    if kind == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)  # grid trials carry fixed params; the sampler is unused


def make_pruner(study: Study):
    import optuna

    epochs = study.base.get("train", {}).get("epochs", 10)
    return {
        "none": optuna.pruners.NopPruner,
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs),
    }[study.cfg.study.pruner]()


def open_study(study: Study, storage, worker: int = 0):
    import optuna

    objectives = study.cfg.study.objectives()
    try:
        return optuna.create_study(study_name=study.name, storage=storage, sampler=make_sampler(study, worker),
                                   pruner=make_pruner(study), directions=[o.direction for o in objectives],
                                   load_if_exists=True)
    except ValueError as e:  # e.g. directions differ from the stored study
        raise AblateError(f"{study.path}: study: {e}") from None


# ---------------------------------------------------------------- the objective

class PruningCallback:
    """Report the metric to Optuna after each validation; stop the trial when the pruner says so.

    optuna-integration's callback imports the `lightning` package; ours serves `pytorch_lightning`.
    """

    def __new__(cls, trial, metric: str):
        import optuna
        import pytorch_lightning as pl

        class _Pruning(pl.Callback):
            def on_validation_end(self, trainer, module):
                if trainer.sanity_checking or metric not in trainer.callback_metrics:
                    return
                epoch = trainer.current_epoch
                trial.report(float(trainer.callback_metrics[metric]), epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after epoch {epoch}")

        return _Pruning()


def sample_params(trial, study: Study, cells: list[dict] | None) -> tuple[dict, int]:
    """The trial's configuration: a claimed grid cell, or define-by-run sampling of the space."""
    seeds = study.cfg.study.seeds
    if cells is not None:
        frozen = trial.study.get_trials(deepcopy=False)[trial.number]
        if "fixed_params" not in frozen.system_attrs:  # not from the queue: another worker took the last cell
            raise LookupError("no grid cell left")
        cell = trial.suggest_categorical("cell", list(range(len(cells))))
        return cells[cell], trial.suggest_categorical("seed", seeds)
    params: dict = {}
    keys = sorted(study.space, key=lambda k: k.startswith(KNOB_PREFIX))  # the module before its knobs
    for key in keys:
        if not _applies(key, params, study):
            continue
        spec = study.space[key]
        if isinstance(spec, list):
            params[key] = trial.suggest_categorical(key, spec)
        elif spec.type == "int":
            params[key] = trial.suggest_int(key, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
        else:
            params[key] = trial.suggest_float(key, spec.low, spec.high, step=spec.step, log=spec.log)
    return params, seeds[trial.number % len(seeds)]


def make_objective(study: Study, parent_run_id: str, cells: list[dict] | None):
    from ablate.train import run_trial

    objectives = study.cfg.study.objectives()

    def objective(trial):
        try:
            trial.set_user_attr("worker", _worker_id())  # so a resume can tell a live trial from a dead one
            params, seed = sample_params(trial, study, cells)
            trial.set_user_attr("params", params)
            trial.set_user_attr("label", cell_label(params))
            trial.set_user_attr("seed", seed)
            cfg = trial_config(study, params, seed)
            callbacks = [PruningCallback(trial, objectives[0].metric)] if len(objectives) == 1 else []
            tags = {"optuna.study": study.name, "optuna.trial": str(trial.number), "ablate.cell": cell_label(params)}
            result = run_trial(cfg, callbacks=callbacks, parent_run_id=parent_run_id, tags=tags)
        except BaseException as e:  # Ctrl-C too: the trial is marked with why it stopped
            if type(e).__name__ != "TrialPruned":
                trial.set_user_attr("fail_reason", describe(e))
            _free_memory()  # an out-of-memory trial must not starve the next one
            raise
        trial.set_user_attr("mlflow_run_id", result.run_id)
        trial.set_user_attr("metrics", result.metrics)
        missing = [o.metric for o in objectives if o.metric not in result.metrics]
        if missing:
            raise AblateError(f"{study.path}: study.metric: the trial logged no {missing[0]!r}")
        values = [float(result.metrics[o.metric]) for o in objectives]
        return values[0] if len(values) == 1 else values  # maximise/minimise per study.metric

    return objective


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- running

def _recover(study_obj, storage, uri: str, experiment_id: str, journal: bool) -> None:
    """After a crash: fail trials nobody is running any more, and end their MLflow runs FAILED.

    A journal lives on one machine, so a RUNNING trial whose worker process is gone is dead; on a database,
    workers on other machines are judged by their heartbeats instead."""
    from optuna.trial import TrialState

    if journal:
        study_id = storage.get_study_id_from_name(study_obj.study_name)
        for t in study_obj.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if _alive(t.user_attrs.get("worker")):
                continue  # another `ablate run` of this study on this machine is running it
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            storage.set_trial_user_attr(trial_id, "fail_reason", "the worker died during this trial (killed?)")
            study_obj.tell(t.number, state=TrialState.FAIL)
    _end_orphaned_runs(study_obj, uri, experiment_id)


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(worker: str | None) -> bool:
    """Is the process `host:pid` (a trial's worker) still running on this machine?"""
    host, _, pid = (worker or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _end_orphaned_runs(study_obj, uri: str, experiment_id: str) -> None:
    """MLflow runs still RUNNING whose Optuna trial is over (a dead worker's) end FAILED."""
    from ablate import tracking

    finished = {str(t.number) for t in study_obj.get_trials(deepcopy=False) if t.state.is_finished()}
    mlflow = tracking.make_client(uri)
    query = f"attributes.status = 'RUNNING' and tags.`optuna.study` = '{study_obj.study_name}'"
    for run in mlflow.search_runs([experiment_id], query):
        if run.data.tags.get("optuna.trial") in finished:
            tracking.end_run(mlflow, run.info.run_id, "FAILED", "the worker died during this trial (killed?)")


def _enqueue_missing(study_obj, study: Study, cells: list[dict]) -> None:
    """Queue every cell x seed that has no COMPLETE, PRUNED, RUNNING or WAITING trial yet."""
    from optuna.trial import TrialState

    alive = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    have = {(t.params.get("cell", t.system_attrs.get("fixed_params", {}).get("cell")),
             t.params.get("seed", t.system_attrs.get("fixed_params", {}).get("seed")))
            for t in study_obj.get_trials(deepcopy=False, states=alive)}
    for seed in study.cfg.study.seeds:
        for cell in range(len(cells)):
            if (cell, seed) not in have:
                study_obj.enqueue_trial({"cell": cell, "seed": seed}, skip_if_exists=False)


def _parent_run(study_obj, study: Study, uri: str, experiment_id: str) -> str:
    """One MLflow parent run per study, kept across resumes (its id lives in the Optuna study)."""
    from ablate import tracking

    mlflow = tracking.make_client(uri)
    run_id = study_obj.user_attrs.get("mlflow_parent_run_id")
    if run_id:
        try:
            mlflow.update_run(run_id, status="RUNNING")
            return run_id
        except Exception:  # noqa: BLE001 (the tracking store was reset: start a new parent)
            pass
    run_id = tracking.start_run(mlflow, experiment_id, run_name=study.name,
                                tags={"optuna.study": study.name, "ablate.role": "study"})
    study_obj.set_user_attr("mlflow_parent_run_id", run_id)
    s = study.cfg.study
    tracking.log_params(mlflow, run_id, {"study.sampler": s.sampler, "study.pruner": s.pruner,
                                         "study.seeds": s.seeds, "study.metric": [o.metric for o in s.objectives()],
                                         "study.file": str(study.path)})
    mlflow.log_artifact(run_id, str(study.path))
    return run_id


def n_trials(study: Study, cells: list[dict] | None) -> int:
    if study.cfg.study.trials is not None:
        return study.cfg.study.trials
    return len(cells) * len(study.cfg.study.seeds)


def _worker(study: Study, storage_url: str | None, jobs: int, worker: int, parent_run_id: str, total: int) -> None:
    """One process's trial loop. Spawned workers get their own accelerator when there are enough."""
    if jobs > 1:
        devices = os.environ.get("ABLATE_WORKER_DEVICES")
        if devices:
            os.environ["CUDA_VISIBLE_DEVICES"] = devices.split(",")[worker]
        import torch

        # share the cores: oversubscribed OpenMP threads spin-wait (10x slower steps measured on 2 cores)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // jobs))
    import optuna
    from optuna.trial import TrialState

    from ablate import tracking
    from ablate.train import check_interrupt, deferred_interrupt

    # a failed trial's traceback is in its run's error.txt; our progress line gives the reason
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = make_storage(storage_url, jobs, study.heartbeat)
    study_obj = open_study(study, storage, worker)
    cells = grid_cells(study) if study.is_grid else None
    objective = make_objective(study, parent_run_id, cells)
    heartbeats = journal_file(storage_url) is None  # RDB: other machines' dead trials get failed as we go
    if heartbeats:
        uri = tracking.resolve_uri(study.base.get("tracking", {}).get("uri"))
        experiment_id = tracking.get_or_create_experiment(study.name, uri)
    done_states = (TrialState.COMPLETE, TrialState.PRUNED)
    with deferred_interrupt():  # Ctrl-C stops the running trial at its next batch, or the loop before the next trial
        while True:
            check_interrupt()
            if cells is not None:
                if not study_obj.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                    if not (heartbeats and _await_stale(study_obj, study.heartbeat[0])):
                        return
                    _end_orphaned_runs(study_obj, uri, experiment_id)
                    continue
            elif len(study_obj.get_trials(deepcopy=False, states=done_states + (TrialState.RUNNING,))) >= total:
                return
            study_obj.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[_progress(total)])
            if heartbeats:  # a stale trial failed by the heartbeat check: end its MLflow run too
                _end_orphaned_runs(study_obj, uri, experiment_id)


def _await_stale(study_obj, interval: int) -> bool:
    """Nothing left to claim, but trials still RUNNING (maybe on a dead machine): check their heartbeats
    every interval until one is failed and queued again (True) or none is running any more (False)."""
    import time

    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    from ablate.train import check_interrupt

    while study_obj.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        check_interrupt()
        fail_stale_trials(study_obj)  # one query; the retry callback queues a WAITING copy
        if study_obj.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return True
        time.sleep(min(interval, 2))  # a live worker's trial may end any moment
    return bool(study_obj.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def _worker_process(*args) -> None:
    """A spawned worker: Ctrl-C ends it quietly with exit code 130 (the trial is already marked)."""
    try:
        _worker(*args)
    except KeyboardInterrupt:
        sys.exit(130)


def _progress(total: int):
    def report(study_obj, trial):
        from optuna.trial import TrialState

        trials = study_obj.get_trials(deepcopy=False)
        count = {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
        done = count[TrialState.COMPLETE] + count[TrialState.PRUNED]
        best = ""
        if len(study_obj.directions) == 1 and count[TrialState.COMPLETE]:
            b = study_obj.best_trial
            best = f" | best {b.value:.4f} (trial {b.number}: {b.user_attrs.get('label', '')})"
        state = trial.state.name.lower()
        reason = f" ({trial.user_attrs['fail_reason']})" if "fail_reason" in trial.user_attrs else ""
        print(f"[{study_obj.study_name}] trial {trial.number} {state}{reason} | {done}/{total} done, "
              f"{count[TrialState.PRUNED]} pruned, {count[TrialState.FAIL]} failed{best}", flush=True)

    return report


@contextmanager
def _setup_lock(storage, name: str, journal: str | None):
    """Serialise a study's setup (create, recover, enqueue the grid, parent run) across `ablate run` processes:
    a lock file beside a journal, a PostgreSQL session advisory lock; both released if the process dies."""
    from optuna.storages import RDBStorage

    if journal is not None:
        import fcntl

        with open(f"{journal}.setup-lock", "a") as lock:  # not `.lock`: Optuna's journal lock is that file
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield
        return
    if not isinstance(storage, RDBStorage) or storage.engine.dialect.name != "postgresql":
        yield  # other databases: setups of one study must not start at the same moment
        return
    import zlib

    import sqlalchemy as sa

    key = zlib.crc32(f"ablate.study:{name}".encode())
    with storage.engine.connect() as conn:
        conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            conn.commit()


def run_study(study: Study, *, jobs: int = 1, storage_url: str | None = None):
    """Run (or resume) the study to the end; returns the Optuna study. Overrides are already in `study`."""
    import multiprocessing as mp

    import optuna

    from ablate import tracking

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    check_cells(study)  # bad models and missing data folders fail here, before any store exists
    storage = make_storage(storage_url, jobs, study.heartbeat)
    uri = tracking.resolve_uri(study.base.get("tracking", {}).get("uri"))
    cells = grid_cells(study) if study.is_grid else None
    journal = journal_file(storage_url)
    with _setup_lock(storage, study.name, journal):  # another `ablate run` of the same study waits here
        # the MLflow store and experiment are created once, before any worker starts
        experiment_id = tracking.get_or_create_experiment(study.name, uri)
        study_obj = open_study(study, storage)
        _recover(study_obj, storage, uri, experiment_id, journal=journal is not None)
        if cells is not None:
            _enqueue_missing(study_obj, study, cells)
        parent = _parent_run(study_obj, study, uri, experiment_id)
    total = n_trials(study, cells)
    status = "FINISHED"
    try:
        if jobs == 1:
            _worker(study, storage_url, 1, 0, parent, total)
        else:
            import torch

            visible = os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(torch.cuda.device_count()))))
            if torch.cuda.is_available() and len(visible.split(",")) >= jobs:  # one trial per GPU
                os.environ["ABLATE_WORKER_DEVICES"] = visible
            ctx = mp.get_context("spawn")  # fresh interpreters: no forked torch/threads state
            procs = [ctx.Process(target=_worker_process, args=(study, storage_url, jobs, w, parent, total))
                     for w in range(jobs)]
            for p in procs:
                p.start()
            try:
                for p in procs:
                    p.join()
            except KeyboardInterrupt:  # Ctrl-C at a terminal reaches the workers too; a kill -INT only us
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # let them finish marking their trials
                for p in procs:
                    if p.is_alive():
                        os.kill(p.pid, signal.SIGINT)
                for p in procs:
                    p.join()
                raise
            crashed = [f"worker {w} (exit code {p.exitcode})" for w, p in enumerate(procs) if p.exitcode != 0]
            if crashed:  # finished trials are safe in the storage; the rest resume on the next run
                status = "FAILED"
                raise RuntimeError(f"{', '.join(crashed)} died; finished trials are kept, resume with the same command")
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracking.end_run(tracking.make_client(uri), parent, status)
    return study_obj


def dry_run_table(study: Study):
    """The configurations the study would run, with params and GMACs beside the paper's; nothing is trained."""
    import pandas as pd

    from ablate.report import with_reference

    cells = grid_cells(study) if study.is_grid else [{}]
    rows = []
    for params in cells:
        built, _ = build_cell(study, params, _where(params), data=False)  # a dry run needs no data here
        rows.append({"config": cell_label(params), "trials": len(study.cfg.study.seeds),
                     "params (M)": built.params / 1e6, "GMACs": built.gmacs,
                     **{k: v for k, v in params.items() if k != "name"}})
    table = pd.DataFrame(rows).set_index("config")
    if not study.is_grid:
        table["trials"] = study.cfg.study.trials
    cells_frame = pd.DataFrame([{"label": cell_label(p), "row": cell_label(p), **p} for p in cells])
    table = with_reference(table, cells_frame, study.cfg.reference)
    return table.drop(columns=[c for c in ("params (M)", "GMACs") if f"ours {c}" in table])  # shown as ours X
