"""Workers: one process's trial loop (claim a queued trial or sample one, run it, update the configuration runs,
queue seeds on demand), the line printed after each trial, and the spawned workers of `--jobs N`."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import time
from multiprocessing.connection import wait

import optuna
import torch
from optuna.storages import fail_stale_trials
from optuna.trial import TrialState

from ablate import tracking
from ablate.errors import AblateError, Preempted
from ablate.interrupt import REQUEUE_EXIT_CODE, STOP_SIGNALS, check_interrupt, deferred_interrupt, stop_exception
from ablate.plan import StudyPlan
from ablate.storage import Attr, journal_file, make_storage, setup_lock
from ablate.study.configurations import ConfigurationRuns
from ablate.study.confirmation import confirmation_seeds, confirms, enqueue_confirmation
from ablate.study.objective import make_objective
from ablate.study.optuna_setup import open_study
from ablate.study.progress import QUIET, Progress, StudyBar
from ablate.study.queue import add_seeds, alive, end_orphaned_runs
from ablate.study.trials import search_trials


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


def wanted(plan: StudyPlan) -> set[tuple[str, int]] | None:
    """A grid's cell x seed pairs as the file reads now (None for a searched study)."""
    if not plan.spec.is_grid:
        return None
    return {(key, s) for key in plan.cells for s in plan.spec.cfg.study.seed_list}


def planned_trials(plan: StudyPlan, pairs: set[tuple[str, int]] | None) -> int | None:
    """The progress line's total: a grid's cell x seed pairs, or a search's trials and at most its confirmation runs
    (the top and the baseline on each fresh seed); None on demand (as queued)."""
    s = plan.spec.cfg.study
    if s.on_demand:
        return None
    if pairs is not None:
        return len(pairs)
    return s.trials + ((s.confirmation.top + 1) * len(confirmation_seeds(plan)) if confirms(plan) else 0)


def _worker(plan: StudyPlan, storage_url: str | None, jobs: int, worker: int, parent_run_id: str,
            trainer=None, progress: str = "lines") -> None:
    """One process's trial loop. Spawned workers get their own accelerator when there are enough. `progress`:
    'lines', 'bar' (the study bar, drawn by this process) or progress.QUIET (the parent draws it)."""
    if jobs > 1:
        devices = os.environ.get("ABLATE_WORKER_DEVICES")
        if devices:
            os.environ["CUDA_VISIBLE_DEVICES"] = devices.split(",")[worker]
        # share the cores: oversubscribed OpenMP threads spin-wait (10x slower steps measured on 2 cores)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // jobs))
    # a failed trial's traceback is in its run's error.txt; our progress line gives the reason
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    s = plan.spec.cfg.study
    storage = make_storage(storage_url, jobs, s.heartbeat_interval, s.grace_period, s.db_outage_s)
    study = open_study(plan, storage, worker)
    client = tracking.make_client(plan.base.tracking.uri)
    experiment_id = tracking.get_or_create_experiment(client, plan.name)
    runs = ConfigurationRuns(plan, client, experiment_id, parent_run_id)
    pairs = wanted(plan)
    shown = Progress(progress, study, pairs, planned_trials(plan, pairs))
    objective = make_objective(plan, runs, trainer, shown.trial_callbacks)
    journal = journal_file(storage_url)
    heartbeats = journal is None  # RDB: other machines' dead trials get failed as we go
    streak = FailureStreak()
    # Ctrl-C stops the running trial at its next batch, or the loop before the next trial; the bar ends either way
    with deferred_interrupt(), shown:
        while True:
            check_interrupt()
            waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            if plan.spec.is_grid and not waiting:
                if heartbeats and await_stale(study, s.heartbeat_interval):
                    end_orphaned_runs(study, client, experiment_id)
                    continue
                if s.on_demand and study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                    time.sleep(1)  # another worker's trial may still ask for more seeds
                    continue
                return
            # a search's budget spent: its confirmation runs, once queued, are what is left to take
            if not plan.spec.is_grid and not waiting and len(search_trials(study)) >= s.trials and not \
                    confirmation_turn(study, plan, storage, journal):
                return
            study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[_progress(shown), streak])
            runs.summarise(study)
            if s.on_demand:
                with setup_lock(storage, plan.name, journal):  # two workers must not queue the same seed
                    add_seeds(study, plan)
            if heartbeats:  # a stale trial failed by the heartbeat check: end its MLflow run too
                end_orphaned_runs(study, client, experiment_id)


def confirmation_turn(study: optuna.Study, plan: StudyPlan, storage, journal: str | None) -> bool:
    """A search whose own trials are spent: once the ones still running are over (other workers'), queue its
    confirmation runs. True while there are queued trials for this worker to take."""
    if not confirms(plan):
        return False
    while running := search_trials(study, (TrialState.RUNNING,)):
        check_interrupt()
        if journal is None:
            fail_stale_trials(study)  # a dead machine's trial: failed, and retried by Optuna's callback
        elif not any(Attr.WORKER not in t.user_attrs or alive(t.user_attrs[Attr.WORKER]) for t in running):
            return False  # a dead process's trial: the next `ablate run` recovers it, then confirms
        if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return True
        time.sleep(1)  # a live worker's trial may end any moment
    with setup_lock(storage, plan.name, journal):  # two workers must not queue the same run
        enqueue_confirmation(study, plan)
    return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


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


def _progress(progress: Progress) -> Progress:
    """The Optuna callback after each trial (a seam: tests wrap it to act between two trials)."""
    return progress


# complexity over 10 on purpose: starting, forwarding a signal to and reaping N processes is one story
def spawn_workers(plan: StudyPlan, storage_url: str | None, jobs: int, parent: str, trainer=None,  # noqa: C901
                  progress: str = "lines", study: optuna.Study | None = None) -> None:
    """`--jobs N`: N worker processes on this machine (one accelerator each when there are enough); a signal to us
    reaches them too, and each checkpoints and stops its trial. With `progress` 'bar' this process draws the study
    bar from `study`'s storage while they run, and the workers print nothing of their own."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(torch.cuda.device_count()))))
    if torch.cuda.is_available() and len(visible.split(",")) >= jobs:  # one trial per GPU
        os.environ["ABLATE_WORKER_DEVICES"] = visible
    ctx = mp.get_context("spawn")  # fresh interpreters: no forked torch/threads state
    bar = progress == "bar" and study is not None
    procs = [ctx.Process(target=_worker_process, args=(plan, storage_url, jobs, w, parent, trainer,
                                                       QUIET if bar else "lines")) for w in range(jobs)]
    pairs = wanted(plan)
    watch = StudyBar(study, pairs, planned_trials(plan, pairs)) if bar else None  # before any trial can end
    for p in procs:
        p.start()

    got = [signal.SIGINT]  # the signal to pass on to the workers

    def stop(signum, frame):  # while we only wait, a signal may act at once
        got[0] = signum
        raise stop_exception(signum)

    # SIGINT too: a shell's background job inherits it ignored, and Python then installs no handler of its own
    previous = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    try:
        while watch is not None and any(p.is_alive() for p in procs):
            # a trial may end any moment: poll the storage each second (a worker's end wakes us sooner)
            wait([p.sentinel for p in procs if p.is_alive()], timeout=1)
            watch.poll(study)
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
        if watch is not None:  # the lines of the trials that ended since the last look, and the final state
            watch.poll(study)
            watch.close(study)
        for s, handler in previous.items():
            signal.signal(s, handler)
    if any(p.exitcode == REQUEUE_EXIT_CODE for p in procs):  # a worker was preempted on its own
        raise Preempted("preempted (a worker was stopped by a signal)")
    crashed = [f"worker {w} (exit code {p.exitcode})" for w, p in enumerate(procs) if p.exitcode != 0]
    if crashed:  # finished trials are safe in the storage; the rest resume on the next run
        raise WorkerDied(f"{', '.join(crashed)} died; finished trials are kept, resume with the same command")
