"""The one reader of a study's results: Optuna trials + MLflow child runs -> a pandas DataFrame.

Reports and Grad-CAM read through here. Rows are trials that got a configuration (a worker that found no grid
cell left leaves none); each carries its cell key, so a configuration is the same row whatever the study
file's order, and `in_file` says whether its cell x seed is still in the study file (an edited file may have
dropped it: its finished trials stay in the store, and the report leaves them out unless asked).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from mlflow import MlflowClient
from optuna.trial import TrialState

from ablate import stats, tracking
from ablate.config import MODULE_KEY
from ablate.plan import StudyPlan
from ablate.reference import published_top1
from ablate.spec import StudySpec, load_study, names_row
from ablate.storage import Attr, resumed_trials
from ablate.summary import Outcome, choose_baseline, compare, seed_samples

# MLflow metric -> (report column, scale): accuracies are logged as fractions, papers print percent
METRIC_COLUMNS = {"val/acc1": ("top-1 acc (%)", 100.0), "val/acc5": ("top-5 acc (%)", 100.0),
                  "model/params": ("params (M)", 1e-6), "model/gmacs": ("GMACs", 1.0),
                  "train/throughput": ("throughput (img/s)", 1.0)}
# trials_frame's own columns; every other column without a '/' is a configuration's dotted param
FRAME_COLUMNS = ("number", "state", "cell", "label", "seed", "run_id", "order", "in_file", "refused", "params")


@dataclass(frozen=True)
class ResolvedStudy:
    """STUDY as a command names it: the study's name, its file when given one, and the tracking URI to read."""

    name: str
    spec: StudySpec | None
    tracking_uri: str | None


def resolve_study(study: str | StudySpec, tracking_uri: str | None = None) -> ResolvedStudy:
    """STUDY as the commands take it: a name, a study file or a loaded StudySpec."""
    if isinstance(study, StudySpec) or study.endswith((".yaml", ".yml")) or Path(study).is_file():
        spec = study if isinstance(study, StudySpec) else load_study(study)
        return ResolvedStudy(spec.name, spec, tracking_uri or spec.base.get("tracking", {}).get("uri"))
    return ResolvedStudy(study, None, tracking_uri)


def stored_runs_client(study: optuna.Study, tracking_uri: str | None) -> MlflowClient | None:
    """The MLflow client for the study's runs, or None when it has none (a client creates the store it opens)."""
    return tracking.make_client(tracking_uri) if study.user_attrs.get(Attr.PARENT_RUN) else None


def needs_runs(study: optuna.Study) -> bool:
    """Whether reading the study needs its MLflow runs: stores from before the Optuna study recorded its file's path
    and every finished trial its metrics; newer ones hold all a report reads, and opening MLflow's store (a second
    and more of imports and schema checks) is then only for writing to it."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return Attr.STUDY_FILE not in study.user_attrs or any(Attr.LABEL in t.user_attrs and Attr.METRICS not in
                                                          t.user_attrs for t in done)


def study_file(study: optuna.Study, client: MlflowClient | None) -> StudySpec | None:
    """The study file the study was last run from, as it reads now (reference numbers, ladder, cells), or None.
    The path is the Optuna study's; an older store's is the parent run's `study.file` param (with `client`)."""
    run_id = study.user_attrs.get(Attr.PARENT_RUN)
    try:
        path = study.user_attrs.get(Attr.STUDY_FILE)
        if path is None and run_id and client:
            path = client.get_run(run_id).data.params.get("study.file")
        return load_study(path) if path and Path(path).is_file() else None
    except Exception:  # noqa: BLE001 (a moved or broken study file only costs the reference columns)
        return None


def trials_frame(study: optuna.Study, client: MlflowClient | None,
                 spec: StudySpec | StudyPlan | None = None) -> pd.DataFrame:
    """One row per trial that got a configuration: FRAME_COLUMNS, its dotted params and final metrics.

    With `spec` (the study file, or its plan), rows are in the file's order and `in_file` is False for a cell x seed
    the file no longer holds; metrics come from the trial's attrs, completed from its MLflow run where missing."""
    plan = StudyPlan(spec) if isinstance(spec, StudySpec) else spec
    cells = plan.cells if plan is not None and plan.spec.is_grid else None
    order = {key: i for i, key in enumerate(cells or {})}
    labels = {key: cell.label for key, cell in (cells or {}).items()}
    rows = []
    trials = study.get_trials(deepcopy=False)
    continued = resumed_trials(trials)
    for t in trials:
        attrs = t.user_attrs
        if Attr.LABEL not in attrs:  # a worker that found no grid cell left: no configuration, no row
            continue
        params = attrs.get(Attr.PARAMS, {})
        key = attrs.get(Attr.CELL) or (plan.cell(params).key if plan is not None else attrs[Attr.LABEL])
        seed = attrs.get(Attr.SEED)
        in_file = cells is None or (key in order and seed in plan.spec.cfg.study.seed_list)
        state = "RESUMED" if t.state == TrialState.FAIL and t.number in continued else t.state.name
        rows.append({"number": t.number, "state": state, "cell": key,
                     "label": labels.get(key, attrs[Attr.LABEL]), "seed": seed, "run_id": attrs.get(Attr.RUN_ID),
                     "order": order.get(key, len(order) + t.number), "in_file": in_file,
                     "refused": Attr.REFUSED in attrs, "params": params, **params, **attrs.get(Attr.METRICS, {})})
    df = pd.DataFrame(rows, columns=list(FRAME_COLUMNS)) if not rows else pd.DataFrame(rows)
    parent = study.user_attrs.get(Attr.PARENT_RUN)
    if parent and client is not None and len(df):
        experiment = client.get_experiment_by_name(study.study_name)
        if experiment is not None:
            # the trials' runs (children of their configuration's run, or of the parent in stores from before those)
            query = f"tags.`{tracking.Tag.STUDY}` = '{study.study_name}'"
            found = client.search_runs([experiment.experiment_id], query, max_results=50000)
            logged = pd.DataFrame([{"run_id": r.info.run_id, **r.data.metrics} for r in found
                                   if tracking.Tag.TRIAL in r.data.tags])
            for metric in METRIC_COLUMNS:  # a trial's attrs win; its run fills what they lack
                if len(logged) and metric in logged:
                    known = df[metric] if metric in df else pd.Series(np.nan, index=df.index)
                    df[metric] = known.fillna(df["run_id"].map(logged.set_index("run_id")[metric]))
    for metric in METRIC_COLUMNS:
        df[metric] = pd.to_numeric(df[metric], errors="coerce") if metric in df else np.nan
    return df.sort_values("number").reset_index(drop=True)


def param_columns(df: pd.DataFrame) -> list[str]:
    """The configuration keys a frame varies (its dotted params)."""
    return [c for c in df.columns if c not in FRAME_COLUMNS and "/" not in c]


@dataclass(frozen=True)
class Comparison:
    """What a study's finished trials say, row by row (summary.py's rules): the baseline and each row's Outcome, in
    order. The report's rows and the configuration runs in MLflow are both made from one of these."""

    baseline: str | None
    outcomes: dict[str, Outcome]
    metric: str
    scale: float  # 100 for accuracies (shown in percent), else 1
    maximize: bool


def compare_rows(frame: pd.DataFrame, plan: StudyPlan | None, *, row: str, rows: list[str], named: str | None = None,
                 refused=(), ladder: bool | None = None) -> Comparison:
    """The study metric of `frame`'s finished trials, compared row by row: `row` names the column rows are keyed by
    (`cell` in the runner, the report's row label), `rows` every row to show in order, `named` the baseline the
    reader chose (default: study.baseline's rule), `refused` the rows study.constraints refused, `ladder` whether each
    row is compared with the row before (default: study.ladder). The paper's top-1 comes from the references."""
    objective = plan.spec.cfg.study.objectives()[0] if plan is not None else None
    metric, maximize = (objective.metric, objective.direction == "maximize") if objective else ("val/acc1", True)
    scale = stats.percent(metric)
    ordered = frame.sort_values(["order", "number"]) if len(frame) else frame
    done = ordered[ordered["state"] == "COMPLETE"].copy()
    done["value"] = pd.to_numeric(done[metric], errors="coerce") * scale if metric in done else np.nan
    samples = seed_samples(done, "value", row)
    first = ordered.drop_duplicates(row).set_index(row, drop=False) if len(frame) else pd.DataFrame()
    modules = {r: str(first.at[r, MODULE_KEY]) if MODULE_KEY in first and pd.notna(first.at[r, MODULE_KEY])
               else plan.module({}) if plan is not None else "none" for r in rows if r in first.index}
    searched = plan is not None and not plan.spec.is_grid
    expr = plan.spec.cfg.study.baseline if plan is not None and named is None else None
    if expr is not None:  # named in advance: never picked from the data (None while no trial of it exists)
        base = find_row(expr, ordered, row) if len(frame) else None
    else:
        base = choose_baseline(rows, samples, modules, named=named, searched=searched, maximize=maximize)
    paper = None
    if plan is not None and plan.spec.cfg.reference:
        paper = {r: published_top1(plan.spec.cfg.reference, first.at[r, "params"], first.at[r, "label"])
                 for r in rows if r in first.index}
    ladder = plan is not None and plan.spec.cfg.study.ladder if ladder is None else ladder
    outcomes = compare(rows, samples, base, ladder=ladder, maximize=maximize, paper=paper, refused=refused)
    return Comparison(base, outcomes, metric, scale, maximize)


def find_row(expr: str, frame: pd.DataFrame, row: str = "row") -> str | None:
    """The row of the first trial `expr` names (spec.names_row: a label, or key=value pairs), or None."""
    for params, label, found in zip(frame["params"], frame["label"], frame[row], strict=True):
        if names_row(expr, params, label) or str(found) == expr:
            return found
    return None
