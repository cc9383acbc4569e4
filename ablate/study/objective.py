"""The Optuna objective, written as a trial's life: plan (which configuration and seed, its trial config, where it
resumes) -> run (the trainer: train.run_trial, or a test's stand-in) -> record (its run, metrics and objective
values on the Optuna trial). Pruning reports go to Optuna through a Lightning callback, for a search's sampled
trials only: a configuration's repeats (seeds on demand) and its confirmation runs are estimates, trained to the
end."""
from __future__ import annotations

import gc
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytorch_lightning as pl
import torch

from ablate import train
from ablate.cells import cell_cost
from ablate.checkpoint import Resume, cell_checkpoint, resume_point
from ablate.config import KNOB_PREFIX, STEP_CONSTRAINTS, TrialConfig
from ablate.distributed import broadcast_decision
from ablate.errors import AblateError, describe
from ablate.plan import Cell, StudyPlan
from ablate.spec import constraint_excess, knob_applies, refusal
from ablate.step_cost import price_records
from ablate.storage import Attr
from ablate.study.optuna_setup import validations_per_epoch
from ablate.study.params import record_params
from ablate.study.progress import say
from ablate.study.trials import is_confirmation, sampled, search_trials
from ablate.tracking import Tag

TASK_ENV = "ABLATE_TASK"  # set by launch.py in a launched worker: its job array task, e.g. 'slurm 1234_0'


class PruningCallback(pl.Callback):
    """Report the metric to Optuna after each validation; stop the trial when the pruner says so, if it may be pruned
    (`prune`: objective.prunable; the others' curves are still reported, for the pruner and the plots).

    optuna-integration's callback imports the `lightning` package; ours serves `pytorch_lightning`."""

    def __init__(self, trial: optuna.Trial | None, metric: str, prune: bool = True):
        self.trial, self.metric, self.prune = trial, metric, prune

    def on_validation_end(self, trainer, module):
        if trainer.sanity_checking:
            return
        step, prune = self.step(trainer), False
        if self.trial is not None and self.metric in trainer.callback_metrics:  # rank 0: the one with the trial
            self.trial.report(float(trainer.callback_metrics[self.metric]), step)
            prune = self.prune and self.trial.should_prune()
        if broadcast_decision(trainer, prune):  # on several devices every rank stops at this validation
            per_epoch = validations_per_epoch(trainer.val_check_interval if isinstance(
                trainer.val_check_interval, float) else 1.0)
            where = f"epoch {trainer.current_epoch}" if per_epoch == 1 else (
                f"validation {step % per_epoch + 1}/{per_epoch} of epoch {trainer.current_epoch}")
            raise optuna.TrialPruned(f"pruned after {where}")

    @staticmethod
    def step(trainer) -> int:
        """The pruner's step: the validation's index over the trial (the epoch, with one validation per epoch)."""
        interval = trainer.val_check_interval
        per_epoch = validations_per_epoch(interval) if isinstance(interval, float) else 1
        done = trainer.fit_loop.epoch_loop.batch_progress.current.completed / max(trainer.num_training_batches, 1)
        return trainer.current_epoch * per_epoch + max(0, min(per_epoch, round(done * per_epoch)) - 1)

    def follower(self) -> PruningCallback:
        """The callback of a multi-device trial's other ranks: no trial of their own, rank 0's decision."""
        return PruningCallback(None, self.metric)


@dataclass(frozen=True)
class TrialPlan:
    """What one Optuna trial will run: its configuration and seed, the trial config, and where it resumes."""

    cell: Cell
    seed: int
    cfg: TrialConfig
    checkpoint: Path
    resume: Resume | None
    run_name: str
    cost: dict | None = None  # its step's price (step_cost.py), logged on its run beside its size

    def tags(self, study: str, number: int) -> dict[str, str]:
        return {Tag.STUDY: study, Tag.TRIAL: str(number), Tag.CELL: self.cell.label, Tag.SEED: str(self.seed),
                Tag.ROLE: "trial"}


def sample_params(trial: optuna.Trial, plan: StudyPlan) -> tuple[dict, int]:
    """A searched trial's configuration: define-by-run sampling of the space (a knob only for modules taking it)."""
    spec = plan.spec
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
    seeds = [0] if spec.cfg.study.on_demand else spec.cfg.study.seeds  # on demand: repeats are queued
    # a stopped trial queued again (requeue_stopped, or a repeat of seeds on demand) keeps its seed
    return params, trial.user_attrs.get(Attr.SEED, seeds[trial.number % len(seeds)])


def configuration(cell: Cell, seed: int) -> dict:
    """The user attrs that give a trial its configuration: cell key, params, label and seed."""
    return {Attr.CELL: cell.key, Attr.PARAMS: cell.params, Attr.LABEL: cell.label, Attr.SEED: seed}


def prunable(trial: optuna.Trial, plan: StudyPlan) -> bool:
    """A pruner chooses what a search explores; it never cuts a grid's seeds, a repeat or a confirmation run, whose
    means must be over every seed they were given."""
    s = plan.spec.cfg.study
    return not plan.spec.is_grid and s.pruner != "none" and len(s.objectives()) == 1 and sampled(trial)


def surplus(trial: optuna.Trial, plan: StudyPlan) -> bool:
    """A freshly sampled trial past the search's budget: another worker took the last one (the earlier wins)."""
    earlier = [t for t in search_trials(trial.study) if t.number < trial.number]
    return len(earlier) >= plan.spec.cfg.study.trials


def run_name(plan: StudyPlan, number: int, cell: Cell, seed: int) -> str:
    """What a trial's run is called in the UI: 'cbam · seed 1' in a grid, '#12 cbam r=8 k=5' in a search."""
    several = plan.spec.cfg.study.on_demand or len(plan.spec.cfg.study.seeds) > 1
    if plan.spec.is_grid:
        return f"{cell.run_label} · seed {seed}"
    return f"#{number} {cell.run_label}" + (f" · seed {seed}" if several else "")


def refuse_if_costly(trial: optuna.Trial, plan: StudyPlan, cell: Cell) -> None:
    """study.constraints on a searched trial: Optuna's sampler learns the excess (trial.set_constraint), and a
    configuration over a limit is pruned before it trains, its reason recorded."""
    if any(k in STEP_CONSTRAINTS for k in plan.spec.cfg.study.constraints):
        step_price(trial, plan, cell)  # measured now: a limit on it refuses before training
    cost = plan.cost(cell, cell_cost)
    for name, excess in constraint_excess(plan.spec, cost).items():
        trial.set_constraint(name, excess)
    why = refusal(plan.spec, cost)
    if why:
        trial.set_user_attr(Attr.REFUSED, why)
        raise optuna.TrialPruned(f"refused by study.constraints: {why}")


def plan_trial(trial: optuna.Trial, plan: StudyPlan) -> TrialPlan:
    """Which configuration and seed the trial runs (a grid's from the queue, a search's sampled and recorded),
    refused if it costs too much, and the checkpoint it continues from."""
    trial.set_user_attr(Attr.WORKER, worker_id())  # so a resume can tell a live trial from a dead one
    if os.environ.get(TASK_ENV):
        trial.set_user_attr(Attr.TASK, os.environ[TASK_ENV])  # `ablate status` shows which task runs it
    if plan.spec.is_grid or is_confirmation(trial):  # its configuration and seed from the queue
        if Attr.CELL not in trial.user_attrs:  # not from the queue: another worker took the last cell
            trial.set_user_attr(Attr.FAIL_REASON, "no grid cell left")
            raise optuna.TrialPruned("no grid cell left")  # no configuration: never a row of the table
        attrs = trial.user_attrs
        cell, seed = Cell.from_attrs(attrs[Attr.CELL], attrs[Attr.PARAMS], attrs[Attr.LABEL]), attrs[Attr.SEED]
        if plan.spec.is_grid:
            record_params(trial, plan, cell)  # what Optuna's viewers show; the cell is the user attrs'
    else:
        if Attr.SEED not in trial.user_attrs and surplus(trial, plan):  # sampled, but the budget is spent
            trial.set_user_attr(Attr.FAIL_REASON, "no search trial left")
            raise optuna.TrialPruned("no search trial left")  # no configuration: never a row of the table
        params, seed = sample_params(trial, plan)
        cell = plan.cell(params)
        for key, value in configuration(cell, seed).items():
            trial.set_user_attr(key, value)
        if plan.spec.cfg.study.constraints:  # a grid's refused cells are never queued
            refuse_if_costly(trial, plan, cell)
    cfg = plan.config(cell.params, seed)
    cost = step_price(trial, plan, cell)
    checkpoint = cell_checkpoint(cfg, plan.name, cell.key, seed)
    resume = resume_point(checkpoint, cfg)
    # a stopped trial's checkpoint: carry on from there (None overwrites what a heartbeat retry copied)
    trial.set_user_attr(Attr.RESUMED, resume and {"trial": resume.trial, "epoch": resume.epoch})
    if resume is not None:
        say(f"[{plan.name}] trial {trial.number} ({cell.label}, seed {seed}) resumes at epoch {resume.epoch} from "
            f"trial {resume.trial}'s checkpoint")
    return TrialPlan(cell, seed, cfg, checkpoint, resume, run_name(plan, trial.number, cell, seed), cost)


def step_price(trial: optuna.Trial, plan: StudyPlan, cell: Cell) -> dict | None:
    """The cell's training-step price: a grid's from the study (priced at setup), a sampled configuration's measured
    here against its plain backbone the first time this worker meets it, and recorded on the trial."""
    if plan.spec.is_grid:
        return trial.study.user_attrs.get(Attr.STEP_COST, {}).get(cell.key)
    if Attr.STEP_COST in trial.user_attrs:
        return trial.user_attrs[Attr.STEP_COST]
    if not plan.spec.cfg.study.price_steps:
        return None
    if cell.key not in plan.step_prices:
        plan.step_prices |= price_records(plan.spec, [cell])
    trial.set_user_attr(Attr.STEP_COST, plan.step_prices[cell.key])
    return plan.step_prices[cell.key]


def record_result(trial: optuna.Trial, plan: StudyPlan, result: train.TrialResult):
    """The trial's run and final metrics on the Optuna trial; its objective values (one per study.metric)."""
    trial.set_user_attr(Attr.RUN_ID, result.run_id)
    trial.set_user_attr(Attr.METRICS, result.metrics)
    correct = getattr(result, "correct", None)  # per-image correctness on the reported split (train.TrialResult)
    if correct is not None:
        trial.set_user_attr(Attr.CORRECT, correct)
    objectives = plan.spec.cfg.study.objectives()
    missing = [o.metric for o in objectives if o.metric not in result.metrics]
    if missing:
        raise AblateError(f"{plan.spec.path}: study.metric: the trial logged no {missing[0]!r}")
    values = [float(result.metrics[o.metric]) for o in objectives]
    return values[0] if len(values) == 1 else values  # maximise/minimise per study.metric


def make_objective(plan: StudyPlan, configuration_run, run=None, bars=None):
    """The Optuna objective: plan -> run -> record. `configuration_run(cell)` gives the MLflow run a trial's run is
    the child of (its configuration's); `run` trains a trial config (default train.run_trial); `bars(progress_bar)`
    the trial's progress bar callbacks (progress.Progress.trial_callbacks; none: Lightning's default bar)."""
    objectives = plan.spec.cfg.study.objectives()
    run = run or train.run_trial  # looked up now: a plugin may have wrapped it

    def objective(trial: optuna.Trial):
        try:
            planned = plan_trial(trial, plan)
            callbacks = [PruningCallback(trial, objectives[0].metric, prunable(trial, plan))] if len(
                objectives) == 1 else []
            callbacks += bars(planned.cfg.train.progress_bar) if bars else []
            result = run(planned.cfg, callbacks=callbacks, parent_run_id=configuration_run(planned.cell),
                         tags=planned.tags(plan.name, trial.number), killed_by=(optuna.TrialPruned,),
                         checkpoint=planned.checkpoint, resume=planned.resume, owner={"trial": trial.number},
                         run_name=planned.run_name, cost=planned.cost)
        except BaseException as e:  # Ctrl-C too: the trial is marked with why it stopped
            if not isinstance(e, optuna.TrialPruned):
                trial.set_user_attr(Attr.FAIL_REASON, describe(e))
            free_memory()  # an out-of-memory trial must not starve the next one
            raise
        return record_result(trial, plan, result)

    return objective


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"
