"""A study's runs in MLflow above its trials' runs: the parent run (one per study, kept across resumes) and the
configuration runs (one per cell, children of the parent, parents of the cell's seed runs), which carry each
configuration's result over seeds as results.compare_rows computes it, the same numbers the report prints."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import optuna
import pandas as pd
from mlflow import MlflowClient

from ablate import tracking
from ablate.plan import Cell, StudyPlan
from ablate.results import Comparison, compare_rows, trials_frame
from ablate.spec import cell_digest
from ablate.storage import Attr
from ablate.summary import BASELINE, CONFIRMED, REFUSED, UNSTABLE, TrialCounts, best_by_mean, delta_text
from ablate.tracking import Tag


def parent_run(study: optuna.Study, plan: StudyPlan, client, experiment_id: str) -> str:
    """One MLflow parent run per study, kept across resumes (its id lives in the Optuna study)."""
    spec = plan.spec
    study.set_user_attr(Attr.STUDY_FILE, str(spec.path.resolve()))  # a moved file: the last run's path
    run_id = study.user_attrs.get(Attr.PARENT_RUN)
    if run_id:
        try:
            client.update_run(run_id, status="RUNNING")
            return run_id
        except Exception:  # noqa: BLE001 (the tracking store was reset: start a new parent)
            pass
    run_id = tracking.start_run(client, experiment_id, run_name=spec.name,
                                tags={Tag.STUDY: spec.name, Tag.ROLE: "study"})
    study.set_user_attr(Attr.PARENT_RUN, run_id)
    s = spec.cfg.study
    tracking.log_params(client, run_id, {"study.sampler": s.sampler, "study.pruner": s.pruner,
                                         "study.seeds": s.seeds, "study.metric": [o.metric for o in s.objectives()],
                                         "study.file": str(spec.path)})
    client.log_artifact(run_id, str(spec.path))
    return run_id


@dataclass(frozen=True)
class StudyResults:
    """The study's configurations as the runner sees them: the comparison (rows are cell keys: a grid's cells as
    the file reads now, a search's in the order they were first tried), each row's Cell, and the frame of the
    trials it was computed from (in the file, not refused by study.constraints)."""

    comparison: Comparison
    cells: dict[str, Cell]
    frame: pd.DataFrame

    @property
    def pending(self) -> set[str]:
        """Configurations with a trial queued or running."""
        live = self.frame["state"].isin(["WAITING", "RUNNING"]) if len(self.frame) else []
        return set(self.frame.loc[live, "cell"]) if len(self.frame) else set()

    @property
    def tried(self) -> dict[str, set[int]]:
        """The seeds each configuration has had a trial of (finished, failed, queued or running)."""
        return {key: set(seeds) for key, seeds in self.frame.groupby("cell")["seed"]} if len(self.frame) else {}


def study_results(study: optuna.Study, plan: StudyPlan) -> StudyResults:
    frame = trials_frame(study, None, plan)
    frame = frame[frame["in_file"] & ~frame["refused"].astype(bool)] if len(frame) else frame
    cells = dict(plan.cells) if plan.spec.is_grid else {
        key: Cell.from_attrs(key, params, label)
        for key, params, label in zip(frame["cell"], frame["params"], frame["label"])}
    refused = study.user_attrs.get(Attr.REFUSED, {})
    return StudyResults(compare_rows(frame, plan, row="cell", rows=list(cells), refused=refused), cells, frame)


class ConfigurationRuns:
    """A worker's view of the study's configuration runs: found or started once each, and given the result over
    seeds after each trial (only where it changed)."""

    def __init__(self, plan: StudyPlan, client: MlflowClient, experiment_id: str, parent: str):
        self.plan, self.client, self.experiment_id, self.parent = plan, client, experiment_id, parent
        self.ids: dict[str, str] = {}
        self.logged: dict[str, tuple] = {}  # what each run last showed: unchanged results are not logged again

    def __call__(self, cell: Cell, running: bool = True) -> str:
        if cell.key not in self.ids:
            self.ids[cell.key] = tracking.configuration_run(
                self.client, self.experiment_id, self.parent, cell_digest(cell.key), cell.run_label,
                tags={Tag.STUDY: self.plan.name, Tag.CELL: cell.label})
        if running:
            self.client.update_run(self.ids[cell.key], status="RUNNING")
        return self.ids[cell.key]

    def summarise(self, study: optuna.Study) -> None:
        """Each configuration's mean, sd, n, delta with its 95% interval, verdict and the paper's effect (metrics and
        tags of its run; FINISHED while none of its trials is queued or running), and the study's summary on the
        parent run: the best configuration by mean and the trial counts."""
        now = study_results(study, self.plan)
        results, cells, pending = now.comparison, now.cells, now.pending
        refused = study.user_attrs.get(Attr.REFUSED, {})
        for key, cell in cells.items():
            outcome = results.outcomes[key]
            ref = outcome.compared_with
            state = (tuple(outcome.samples), key in pending, ref,
                     tuple(results.outcomes[ref].samples) if ref in results.outcomes else ())
            if self.logged.get(key) == state:
                continue
            run = self(cell, running=key in pending)
            metrics, tags = configuration_record(results, key, cells, refused.get(key))
            tracking.log_metrics(self.client, run, metrics, step=outcome.n)
            for tag, value in tags.items():
                tracking.set_shared_tag(self.client, run, tag, value)
            if key not in pending:
                self.client.set_terminated(run, "FINISHED")
            self.logged[key] = state
        self._summarise_study(study, results, cells)

    def _summarise_study(self, study: optuna.Study, results: Comparison, cells: dict[str, Cell]) -> None:
        trials = [t for t in study.get_trials(deepcopy=False) if Attr.LABEL in t.user_attrs]
        counts = TrialCounts.of(trials).as_dict()
        counts["refused"] += len(study.user_attrs.get(Attr.REFUSED, {}))  # a grid's cells never queued
        metrics = {f"trials/{k}": v for k, v in counts.items()}
        confirmed = {r: o for r, o in results.outcomes.items() if o.stage == CONFIRMED}
        best = best_by_mean({r: o.samples for r, o in (confirmed or results.outcomes).items()}, results.maximize)
        if best is not None:
            mean, unit = results.outcomes[best].mean, "%" if results.scale == 100 else ""
            metrics[f"best/{results.metric}/mean"] = mean / results.scale
            tracking.set_shared_tag(self.client, self.parent, Tag.BEST_CONFIGURATION, cells[best].run_label)
            tracking.set_shared_tag(self.client, self.parent, Tag.SUMMARY, (
                f"best {cells[best].run_label}: {mean:.2f}{unit} mean over {results.outcomes[best].n} "
                f"{'fresh ' if confirmed else ''}seed(s); "
                + ", ".join(f"{v} {k}" for k, v in counts.items())))
        tracking.log_metrics(self.client, self.parent, metrics, step=len(trials))


def configuration_record(results: Comparison, key: str, cells: dict[str, Cell], refused: str | None):
    """A configuration run's metrics (seeds, metric mean / sd / delta / interval, unscaled) and tags (result, delta,
    verdict, the paper's effect, and the note the UI shows first), from its Outcome."""
    outcome, metric, scale = results.outcomes[key], results.metric, results.scale
    unit, percent = (" pts", "%") if scale == 100 else ("", "")
    lost = {"pruned": outcome.seeds.pruned, "failed": outcome.seeds.failed}  # seeds that are not in the mean
    metrics: dict[str, float] = {"seeds": outcome.n} | {f"seeds/{k}": v for k, v in lost.items()}
    tags: dict[str, str] = {Tag.VERDICT: REFUSED, Tag.REFUSED: refused} if refused else {}
    if outcome.stage:
        tags[Tag.STAGE] = outcome.stage
    if outcome.n:
        metrics[f"{metric}/mean"] = outcome.mean / scale
        spread = f" ± {outcome.sd:.2f}" if outcome.n > 1 else ""
        also = "".join(f", {v} {k}" for k, v in lost.items() if v)
        tags[Tag.RESULT] = f"{outcome.mean:.2f}{spread}{percent} over {outcome.n} seed(s){also}"
    if outcome.n > 1:
        metrics[f"{metric}/sd"] = outcome.sd / scale
    if outcome.verdict in (BASELINE, UNSTABLE):  # a failed seed reads unstable whether or not it is compared
        tags[Tag.VERDICT] = outcome.verdict
    if outcome.compared_with is not None and not pd.isna(outcome.delta):  # a control has no delta of its own
        metrics[f"{metric}/delta"] = outcome.delta / scale
        # NaN too (ties, one seed): an earlier look's bounds must not stay on the run as if they still held
        metrics |= {f"{metric}/delta_low": outcome.low / scale, f"{metric}/delta_high": outcome.high / scale}
        paper = f"; paper {outcome.paper_delta:+.2f}{unit}" if not np.isnan(outcome.paper_delta) else ""
        tags |= {Tag.VERDICT: outcome.verdict,
                 Tag.DELTA: f"{delta_text(outcome, unit)} vs {cells[outcome.compared_with].run_label}{paper}"}
        if paper:
            tags[Tag.EFFECT] = outcome.effect
    if tags:  # the description the UI shows first on the run's page
        tags[Tag.NOTE] = "; ".join(tags[k] for k in (Tag.RESULT, Tag.DELTA, Tag.REFUSED) if k in tags) + (
            f" ({tags[Tag.VERDICT]})" if Tag.VERDICT in tags else "") + (
            f" (paper's effect {tags[Tag.EFFECT]})" if Tag.EFFECT in tags else "")
    return metrics, tags
