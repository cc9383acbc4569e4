"""The study runner: a StudySpec -> an Optuna study whose trials are tracked Lightning runs.

Grid studies enqueue every cell x seed that has no live trial as a WAITING Optuna trial carrying its cell key,
params and seed (user attrs, not suggested params: an edited grid must not meet Optuna's fixed categorical
value spaces); workers claim them through Optuna's atomic trial queue, so `--jobs N` never runs a cell twice.
Running a study again resumes it: trials left RUNNING by a dead process are failed (their MLflow runs too),
and every cell x seed of the file as it reads now without a COMPLETE, PRUNED, RUNNING or WAITING trial is
queued. Several `ablate run` processes may share a study: setup is serialised by a lock, and on PostgreSQL
heartbeats let a live worker fail and retry a dead machine's trial.

Trials are durable (checkpoint.py): the trial that runs a cell x seed again after its predecessor died or was
preempted continues from that one's checkpoint (recorded in its `resumed` attr), and a searched study queues a
stopped trial's params and seed again so that it is resumed too. SIGTERM and SIGUSR1 stop a study like Ctrl-C
does, after the running trial's checkpoint is written, and end it with `Preempted`.
"""
from __future__ import annotations

import gc
import multiprocessing as mp
import os
import signal
import socket
import sys
import time
from datetime import datetime, timezone

import optuna
import pytorch_lightning as pl
import torch
from optuna.storages import fail_stale_trials
from optuna.trial import TrialState

from mlflow import MlflowClient

from ablate import tracking, train
from ablate.checkpoint import cell_checkpoint, checkpoint_root, resume_point
from ablate.distributed import broadcast_decision
from ablate.errors import AblateError, Preempted, describe, within
from ablate.interrupt import REQUEUE_EXIT_CODE, STOP_SIGNALS, check_interrupt, deferred_interrupt, stop_exception
from ablate.config import KNOB_PREFIX
from ablate.spec import (StudySpec, cell_key, cell_label, cell_location, check_cells, fingerprint,
                         fingerprint_change, grid_cells, keyed_cells, knob_applies, trial_config)
from ablate.storage import Attr, journal_file, make_storage, resumed_trials, setup_lock

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
}
TASK_ENV = "ABLATE_TASK"  # set by launch.py in a launched worker: its job array task, e.g. 'slurm 1234_0'
LIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
DONE = (TrialState.COMPLETE, TrialState.PRUNED)


class WorkerDied(Exception):
    """A worker process ended without finishing its trials (OOM killer, kill -9): not bad input."""


class FailureStreak:
    """An Optuna callback that stops a worker whose last `n` trials all failed with one and the same reason: a
    configuration every trial trips over (a bad key value only a trial finds) must not burn the whole study."""

    def __init__(self, n: int = 3):
        self.n, self.reasons = n, []

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        failed = trial.state == TrialState.FAIL and Attr.FAIL_REASON in trial.user_attrs
        self.reasons = self.reasons[-(self.n - 1):] + [trial.user_attrs[Attr.FAIL_REASON]] if failed else []
        if len(self.reasons) == self.n and len(set(self.reasons)) == 1:
            raise AblateError(f"study {study.study_name!r}: the last {self.n} trials all failed with the same error, "
                              f"so the study stops: {self.reasons[0]}")


def make_sampler(spec: StudySpec, worker: int = 0) -> optuna.samplers.BaseSampler:
    cls, settings = SAMPLERS[spec.cfg.study.sampler]
    return cls(seed=spec.cfg.study.seeds[0] + worker, **settings)  # distinct streams: workers must not sample alike


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    cls, settings = PRUNERS[spec.cfg.study.pruner]
    if cls is optuna.pruners.HyperbandPruner:
        settings = settings | {"max_resource": spec.base.get("train", {}).get("epochs", 10)}
    return cls(**settings)


def open_study(spec: StudySpec, storage, worker: int = 0) -> optuna.Study:
    """Load the Optuna study with this worker's sampler and the study's pruner, or create it.

    Loading first writes nothing (creating an existing study appends to a journal before it fails)."""
    directions = [optuna.study.StudyDirection[o.direction.upper()] for o in spec.cfg.study.objectives()]
    try:
        study = optuna.load_study(study_name=spec.name, storage=storage, sampler=make_sampler(spec, worker),
                                  pruner=make_pruner(spec))
    except KeyError:  # a new study (another worker may be creating it at this moment)
        return optuna.create_study(study_name=spec.name, storage=storage, sampler=make_sampler(spec, worker),
                                   pruner=make_pruner(spec), load_if_exists=True, directions=directions)
    if study.directions != directions:
        stored = ", ".join(d.name.lower() for d in study.directions)
        raise AblateError(f"{spec.path}: study.direction: study {spec.name!r} in the store optimises {stored}, "
                          f"this file {', '.join(d.name.lower() for d in directions)} (run it under a new study.name, "
                          "or with --force-new to set the old trials aside and start over)")
    return study


# ---------------------------------------------------------------- the objective

class PruningCallback(pl.Callback):
    """Report the metric to Optuna after each validation; stop the trial when the pruner says so.

    optuna-integration's callback imports the `lightning` package; ours serves `pytorch_lightning`."""

    def __init__(self, trial: optuna.Trial | None, metric: str):
        self.trial, self.metric = trial, metric

    def on_validation_end(self, trainer, module):
        if trainer.sanity_checking:
            return
        epoch, prune = trainer.current_epoch, False
        if self.trial is not None and self.metric in trainer.callback_metrics:  # rank 0: the one with the trial
            self.trial.report(float(trainer.callback_metrics[self.metric]), epoch)
            prune = self.trial.should_prune()
        if broadcast_decision(trainer, prune):  # on several devices every rank stops at this epoch
            raise optuna.TrialPruned(f"pruned after epoch {epoch}")

    def follower(self) -> PruningCallback:
        """The callback of a multi-device trial's other ranks: no trial of their own, rank 0's decision."""
        return PruningCallback(None, self.metric)


def sample_params(trial: optuna.Trial, spec: StudySpec) -> tuple[dict, int]:
    """A searched trial's configuration: define-by-run sampling of the space (a knob only for modules taking it)."""
    params: dict = {}
    for key in sorted(spec.space, key=lambda k: k.startswith(KNOB_PREFIX)):  # the module before its knobs
        if not knob_applies(key, params, spec):
            continue
        values = spec.space[key]
        if isinstance(values, list):
            params[key] = trial.suggest_categorical(key, values)
        elif values.type == "int":
            params[key] = trial.suggest_int(key, int(values.low), int(values.high), step=int(values.step or 1),
                                            log=values.log)
        else:
            params[key] = trial.suggest_float(key, values.low, values.high, step=values.step, log=values.log)
    seeds = spec.cfg.study.seeds
    # a stopped trial queued again (requeue_stopped) keeps its seed
    return params, trial.user_attrs.get(Attr.SEED, seeds[trial.number % len(seeds)])


def configuration(key: str, params: dict, seed: int) -> dict:
    """The user attrs that give a trial its configuration: cell key, params, label and seed."""
    return {Attr.CELL: key, Attr.PARAMS: params, Attr.LABEL: cell_label(params), Attr.SEED: seed}


def make_objective(spec: StudySpec, parent_run_id: str):
    objectives = spec.cfg.study.objectives()

    def objective(trial: optuna.Trial):
        try:
            trial.set_user_attr(Attr.WORKER, worker_id())  # so a resume can tell a live trial from a dead one
            if os.environ.get(TASK_ENV):
                trial.set_user_attr(Attr.TASK, os.environ[TASK_ENV])  # `ablate status` shows which task runs it
            if spec.is_grid:
                if Attr.CELL not in trial.user_attrs:  # not from the queue: another worker took the last cell
                    trial.set_user_attr(Attr.FAIL_REASON, "no grid cell left")
                    raise optuna.TrialPruned("no grid cell left")  # no configuration: never a row of the table
                params, seed = trial.user_attrs[Attr.PARAMS], trial.user_attrs[Attr.SEED]
            else:
                params, seed = sample_params(trial, spec)
                for key, value in configuration(cell_key(spec, params), params, seed).items():
                    trial.set_user_attr(key, value)
            cfg = trial_config(spec, params, seed)
            key = trial.user_attrs.get(Attr.CELL) or cell_key(spec, params)  # (grid trials from before keys)
            checkpoint = cell_checkpoint(cfg, spec.name, key, seed)
            resume = resume_point(checkpoint, cfg)
            # a stopped trial's checkpoint: carry on from there (None overwrites what a heartbeat retry copied)
            trial.set_user_attr(Attr.RESUMED, resume and {"trial": resume.trial, "epoch": resume.epoch})
            if resume is not None:
                print(f"[{spec.name}] trial {trial.number} ({cell_label(params)}, seed {seed}) resumes at epoch "
                      f"{resume.epoch} from trial {resume.trial}'s checkpoint", flush=True)
            callbacks = [PruningCallback(trial, objectives[0].metric)] if len(objectives) == 1 else []
            tags = {"optuna.study": spec.name, "optuna.trial": str(trial.number), "ablate.cell": cell_label(params)}
            result = train.run_trial(cfg, callbacks=callbacks, parent_run_id=parent_run_id, tags=tags,
                                     killed_by=(optuna.TrialPruned,), checkpoint=checkpoint, resume=resume,
                                     owner={"trial": trial.number})
        except BaseException as e:  # Ctrl-C too: the trial is marked with why it stopped
            if not isinstance(e, optuna.TrialPruned):
                trial.set_user_attr(Attr.FAIL_REASON, describe(e))
            free_memory()  # an out-of-memory trial must not starve the next one
            raise
        trial.set_user_attr(Attr.RUN_ID, result.run_id)
        trial.set_user_attr(Attr.METRICS, result.metrics)
        missing = [o.metric for o in objectives if o.metric not in result.metrics]
        if missing:
            raise AblateError(f"{spec.path}: study.metric: the trial logged no {missing[0]!r}")
        values = [float(result.metrics[o.metric]) for o in objectives]
        return values[0] if len(values) == 1 else values  # maximise/minimise per study.metric

    return objective


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- setup: recovery, the grid queue, the parent run

def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def alive(worker: str | None) -> bool:
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


def recover(study: optuna.Study, storage, client, experiment_id: str, journal: bool) -> None:
    """After a crash: fail trials nobody is running any more, and end their MLflow runs FAILED.

    A journal lives on one machine, so a RUNNING trial whose worker process is gone is dead; on a database,
    workers on other machines are judged by their heartbeats instead."""
    if journal:
        study_id = storage.get_study_id_from_name(study.study_name)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if alive(t.user_attrs.get(Attr.WORKER)):
                continue  # another `ablate run` of this study on this machine is running it
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            storage.set_trial_user_attr(trial_id, Attr.FAIL_REASON, "the worker died during this trial (killed?)")
            study.tell(t.number, state=TrialState.FAIL)
    end_orphaned_runs(study, client, experiment_id)


def end_orphaned_runs(study: optuna.Study, client, experiment_id: str) -> None:
    """MLflow runs still RUNNING whose Optuna trial is over (a dead worker's) end FAILED."""
    finished = {str(t.number) for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    query = f"attributes.status = 'RUNNING' and tags.`optuna.study` = '{study.study_name}'"
    for run in client.search_runs([experiment_id], query):
        if run.data.tags.get("optuna.trial") in finished:
            tracking.end_run(client, run.info.run_id, "FAILED", "the worker died during this trial (killed?)")


def enqueue_missing(study: optuna.Study, spec: StudySpec, cells: dict[str, dict]) -> None:
    """Queue every cell x seed of the file (`cells`: key -> params) that has no live trial yet; cells are
    matched by key, never by index."""
    have = {(t.user_attrs.get(Attr.CELL) or cell_key(spec, t.user_attrs[Attr.PARAMS]), t.user_attrs[Attr.SEED])
            for t in study.get_trials(deepcopy=False, states=LIVE)
            if Attr.PARAMS in t.user_attrs and Attr.SEED in t.user_attrs}  # studies from before keys: from params
    for seed in spec.cfg.study.seeds:
        for key, params in cells.items():
            if (key, seed) not in have:
                study.enqueue_trial({}, user_attrs=configuration(key, params, seed), skip_if_exists=False)


def requeue_stopped(study: optuna.Study, spec: StudySpec) -> None:
    """A searched study's trials that stopped with a checkpoint (killed, preempted, crashed) are queued again with
    their params and seed, so that a later trial resumes them; a grid's cells are queued by enqueue_missing."""
    stopped = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    # ours, or Optuna's heartbeat retry (RetryFailedTrialCallback) on a database
    retried = {n for t in study.get_trials(deepcopy=False)
               for n in (t.user_attrs.get(Attr.RETRY_OF), t.system_attrs.get("failed_trial"))}
    for t in stopped:
        if t.number in retried or Attr.PARAMS not in t.user_attrs:
            continue
        params, seed = t.user_attrs[Attr.PARAMS], t.user_attrs[Attr.SEED]
        if cell_checkpoint(trial_config(spec, params, seed), spec.name, t.user_attrs[Attr.CELL], seed).is_file():
            study.enqueue_trial(t.params, user_attrs={Attr.SEED: seed, Attr.RETRY_OF: t.number},
                                skip_if_exists=False)


def check_comparable(study: optuna.Study, spec: StudySpec) -> None:
    """Refuse a file whose trials would not be comparable with the study's: its base config or metric changed."""
    stored = study.user_attrs.get(Attr.FINGERPRINT)
    if stored is None:  # a new study, or one from before fingerprints: this file is the reference from now on
        study.set_user_attr(Attr.FINGERPRINT, fingerprint(spec))
        return
    change = fingerprint_change(spec, stored)
    if change:
        raise AblateError(f"{spec.path}: {change} since study {spec.name!r} was first run: its trials would not be "
                          f"comparable (run it under a new study.name, or with --force-new to set the old trials "
                          f"aside and start over)")


def distribution(values) -> optuna.distributions.BaseDistribution:
    """The Optuna distribution sample_params draws a space key from."""
    if isinstance(values, list):
        return optuna.distributions.CategoricalDistribution(values)
    if values.type == "int":
        return optuna.distributions.IntDistribution(int(values.low), int(values.high), step=int(values.step or 1),
                                                    log=values.log)
    return optuna.distributions.FloatDistribution(values.low, values.high, step=values.step, log=values.log)


def check_search_space(study: optuna.Study, spec: StudySpec) -> None:
    """A searched study's keys must keep the kind of distribution its trials were sampled from (Optuna fails every
    later trial otherwise): other choices, a range for choices, log on or off. Keys added or dropped are fine."""
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


def set_aside(spec: StudySpec, storage) -> str | None:
    """--force-new: move an existing study to '<name>.before-<UTC time>' (its results stay readable there)."""
    if spec.name not in {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}:
        return None
    aside = f"{spec.name}.before-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    optuna.copy_study(from_study_name=spec.name, from_storage=storage, to_storage=storage, to_study_name=aside)
    optuna.delete_study(study_name=spec.name, storage=storage)
    # its stopped trials' checkpoints go with it: starting over must not resume them
    root = checkpoint_root(trial_config(spec, {}, spec.cfg.study.seeds[0]))
    if (root / spec.name).is_dir():
        os.replace(root / spec.name, root / aside)
    return aside


def parent_run(study: optuna.Study, spec: StudySpec, client, experiment_id: str) -> str:
    """One MLflow parent run per study, kept across resumes (its id lives in the Optuna study)."""
    run_id = study.user_attrs.get(Attr.PARENT_RUN)
    if run_id:
        try:
            client.update_run(run_id, status="RUNNING")
            return run_id
        except Exception:  # noqa: BLE001 (the tracking store was reset: start a new parent)
            pass
    run_id = tracking.start_run(client, experiment_id, run_name=spec.name,
                                tags={"optuna.study": spec.name, "ablate.role": "study"})
    study.set_user_attr(Attr.PARENT_RUN, run_id)
    s = spec.cfg.study
    tracking.log_params(client, run_id, {"study.sampler": s.sampler, "study.pruner": s.pruner,
                                         "study.seeds": s.seeds, "study.metric": [o.metric for o in s.objectives()],
                                         "study.file": str(spec.path)})
    client.log_artifact(run_id, str(spec.path))
    return run_id


# ---------------------------------------------------------------- workers

def wanted(spec: StudySpec) -> set[tuple[str, int]] | None:
    """A grid's cell x seed pairs as the file reads now (None for a searched study)."""
    if not spec.is_grid:
        return None
    return {(key, s) for key in keyed_cells(spec) for s in spec.cfg.study.seeds}


def _worker(spec: StudySpec, storage_url: str | None, jobs: int, worker: int, parent_run_id: str) -> None:
    """One process's trial loop. Spawned workers get their own accelerator when there are enough."""
    if jobs > 1:
        devices = os.environ.get("ABLATE_WORKER_DEVICES")
        if devices:
            os.environ["CUDA_VISIBLE_DEVICES"] = devices.split(",")[worker]
        # share the cores: oversubscribed OpenMP threads spin-wait (10x slower steps measured on 2 cores)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // jobs))
    # a failed trial's traceback is in its run's error.txt; our progress line gives the reason
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    s = spec.cfg.study
    storage = make_storage(storage_url, jobs, s.heartbeat_interval, s.grace_period)
    study = open_study(spec, storage, worker)
    objective = make_objective(spec, parent_run_id)
    heartbeats = journal_file(storage_url) is None  # RDB: other machines' dead trials get failed as we go
    if heartbeats:
        client = tracking.make_client(spec.base.get("tracking", {}).get("uri"))
        experiment_id = tracking.get_or_create_experiment(spec.name, client.tracking_uri)
    pairs = wanted(spec)
    total = len(pairs) if pairs is not None else s.trials
    streak = FailureStreak()
    with deferred_interrupt():  # Ctrl-C stops the running trial at its next batch, or the loop before the next trial
        while True:
            check_interrupt()
            if spec.is_grid:
                if not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                    if not (heartbeats and await_stale(study, s.heartbeat_interval)):
                        return
                    end_orphaned_runs(study, client, experiment_id)
                    continue
            elif len(study.get_trials(deepcopy=False, states=DONE + (TrialState.RUNNING,))) >= total:
                return
            study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[_progress(total, pairs), streak])
            if heartbeats:  # a stale trial failed by the heartbeat check: end its MLflow run too
                end_orphaned_runs(study, client, experiment_id)


def await_stale(study: optuna.Study, interval: int) -> bool:
    """Nothing left to claim, but trials still RUNNING (maybe on a dead machine): check their heartbeats
    every interval until one is failed and queued again (True) or none is running any more (False)."""
    while study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        check_interrupt()
        fail_stale_trials(study)  # one query; the retry callback queues a WAITING copy
        if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return True
        time.sleep(min(interval, 2))  # a live worker's trial may end any moment
    return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def _worker_process(*args) -> None:
    """A spawned worker: Ctrl-C ends it quietly with exit code 130, preemption with 75 (the trial is marked)."""
    try:
        _worker(*args)
    except AblateError as e:  # FailureStreak: its one line, as the CLI would print it
        print(f"ablate: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except Preempted:
        sys.exit(REQUEUE_EXIT_CODE)
    except KeyboardInterrupt:
        sys.exit(130)


def _progress(total: int, pairs: set[tuple[str, int]] | None):
    """The line printed after each trial; counts only trials with a configuration (of the file, for a grid)."""
    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if Attr.LABEL not in trial.user_attrs:
            return  # a worker that found no grid cell left: nothing ran
        trials = [t for t in study.get_trials(deepcopy=False) if Attr.LABEL in t.user_attrs
                  and (pairs is None or (t.user_attrs.get(Attr.CELL), t.user_attrs.get(Attr.SEED)) in pairs)]
        continued = resumed_trials(trials)  # stopped, then resumed by a later trial: not failed
        count = {s: sum(t.state == s and t.number not in continued for t in trials)
                 for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
        done = count[TrialState.COMPLETE] + count[TrialState.PRUNED]
        best = ""
        if len(study.directions) == 1 and count[TrialState.COMPLETE]:
            b = study.best_trial
            best = f" | best {b.value:.4f} (trial {b.number}: {b.user_attrs.get(Attr.LABEL, '')})"
        reason = f" ({trial.user_attrs[Attr.FAIL_REASON]})" if Attr.FAIL_REASON in trial.user_attrs else ""
        if trial.user_attrs.get(Attr.RESUMED):
            reason += f" (resumed at epoch {trial.user_attrs[Attr.RESUMED]['epoch']})"
        print(f"[{study.study_name}] trial {trial.number} {trial.state.name.lower()}{reason} | {done}/{total} done, "
              f"{count[TrialState.PRUNED]} pruned, {count[TrialState.FAIL]} failed{best}", flush=True)

    return report


# ---------------------------------------------------------------- the study

def check_trainers(spec: StudySpec) -> None:
    """Lightning's checks of accelerator, devices and precision, once per distinct setting before any trial:
    `accelerator: gpu` on a machine without one is bad input, not a study whose every trial fails."""
    cells = grid_cells(spec) if spec.is_grid else [{}]
    seen = set()
    for params in cells:
        cfg = trial_config(spec, params, spec.cfg.study.seeds[0])
        setting = (cfg.train.accelerator, str(cfg.train.devices), cfg.train.precision)
        if setting not in seen:
            seen.add(setting)
            with within(f"{spec.path}: {cell_location(params)}"), train.quiet_lightning():
                train.make_trainer(cfg.train)


def prepare_study(spec: StudySpec, *, jobs: int = 1, storage_url: str | None = None,
                  force_new: bool = False) -> tuple[optuna.Study, MlflowClient, str]:
    """Everything before the workers start: check the cells, open (or set aside and create) the study, fail what a
    dead process left running, queue what is missing, and get the parent run. Returns (study, client, parent)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    check_cells(spec)  # bad models and missing data folders fail here, before any store exists
    check_trainers(spec)
    s = spec.cfg.study
    storage = make_storage(storage_url, jobs, s.heartbeat_interval, s.grace_period)
    uri = tracking.resolve_uri(spec.base.get("tracking", {}).get("uri"))
    tracking.probe_store(uri)  # a server that does not answer: one line now, before the study is created
    journal = journal_file(storage_url)
    with setup_lock(storage, spec.name, journal):  # another `ablate run` of the same study waits here
        if force_new:
            aside = set_aside(spec, storage)
            if aside:
                print(f"[{spec.name}] --force-new: the earlier trials are now study {aside!r}", flush=True)
        study = open_study(spec, storage)
        check_comparable(study, spec)  # before anything is written to either store
        check_search_space(study, spec)
        # the MLflow store (a client creates it) and experiment are created once, before any worker starts
        client = tracking.make_client(uri)
        experiment_id = tracking.get_or_create_experiment(spec.name, uri)
        recover(study, storage, client, experiment_id, journal=journal is not None)
        if spec.is_grid:
            enqueue_missing(study, spec, keyed_cells(spec))
        else:
            requeue_stopped(study, spec)
        parent = parent_run(study, spec, client, experiment_id)
    return study, client, parent


def run_study(spec: StudySpec, *, jobs: int = 1, storage_url: str | None = None,
              force_new: bool = False) -> optuna.Study:
    """Run (or resume) the study to the end; returns the Optuna study. Overrides are already in `spec`."""
    study, client, parent = prepare_study(spec, jobs=jobs, storage_url=storage_url, force_new=force_new)
    status, reason = "FINISHED", None
    try:
        if jobs == 1:
            _worker(spec, storage_url, 1, 0, parent)
        else:
            _spawn_workers(spec, storage_url, jobs, parent)
        if study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
            status = None  # other workers (launched tasks, other machines) are still at it: the last one ends it
    except KeyboardInterrupt as e:  # Ctrl-C, or Preempted: 'preempted (SIGTERM)'
        status, reason = "KILLED", describe(e) if isinstance(e, Preempted) else None
        raise
    except (WorkerDied, AblateError):  # AblateError: FailureStreak stopped it
        status = "FAILED"
        raise
    finally:
        if status:
            tracking.end_run(client, parent, status, reason)
    return study


def _spawn_workers(spec: StudySpec, storage_url: str | None, jobs: int, parent: str) -> None:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(torch.cuda.device_count()))))
    if torch.cuda.is_available() and len(visible.split(",")) >= jobs:  # one trial per GPU
        os.environ["ABLATE_WORKER_DEVICES"] = visible
    ctx = mp.get_context("spawn")  # fresh interpreters: no forked torch/threads state
    procs = [ctx.Process(target=_worker_process, args=(spec, storage_url, jobs, w, parent)) for w in range(jobs)]
    for p in procs:
        p.start()

    got = [signal.SIGINT]  # the signal to pass on to the workers

    def stop(signum, frame):  # while we only wait, a signal may act at once
        got[0] = signum
        raise stop_exception(signum)

    # SIGINT too: a shell's background job inherits it ignored, and Python then installs no handler of its own
    previous = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:  # Ctrl-C at a terminal reaches the workers too; a kill only us
        for s in STOP_SIGNALS:
            signal.signal(s, signal.SIG_IGN)  # let them finish marking their trials
        for p in procs:
            if p.is_alive():
                os.kill(p.pid, got[0])  # the same signal: each worker checkpoints and stops its trial
        for p in procs:
            p.join()
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if any(p.exitcode == REQUEUE_EXIT_CODE for p in procs):  # a worker was preempted on its own
        raise Preempted("preempted (a worker was stopped by a signal)")
    crashed = [f"worker {w} (exit code {p.exitcode})" for w, p in enumerate(procs) if p.exitcode != 0]
    if crashed:  # finished trials are safe in the storage; the rest resume on the next run
        raise WorkerDied(f"{', '.join(crashed)} died; finished trials are kept, resume with the same command")
