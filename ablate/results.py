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
from ablate.correct import unpack_correct
from ablate.errors import AblateError
from ablate.plan import StudyPlan
from ablate.reference import published_top1, setup_of
from ablate.spec import OPERATIONAL_KEYS, StudySpec, load_study, names_row, trial_config
from ablate.storage import CONFIRM, Attr, resumed_trials
from ablate.summary import (
    CONFIRMED,
    SEARCHED,
    Outcome,
    choose_baseline,
    compare,
    matched_controls,
    one_control,
    seed_counts,
    seed_samples,
    stopped_by_signal,
)

# MLflow metric -> (report column, scale): accuracies are logged as fractions, papers print percent
METRIC_COLUMNS = {"val/acc1": ("top-1 acc (%)", 100.0), "val/acc5": ("top-5 acc (%)", 100.0),
                  "test/acc1": ("test top-1 acc (%)", 100.0), "test/acc5": ("test top-5 acc (%)", 100.0),
                  "model/params": ("params (M)", 1e-6), "model/gmacs": ("GMACs", 1.0),
                  "train/throughput": ("throughput (img/s)", 1.0),
                  "model/step_time_ratio": ("step time ×", 1.0), "model/peak_mem_mb": ("peak mem (MB)", 1.0)}
# trials_frame's own columns; every other column without a '/' is a configuration's dotted param
FRAME_COLUMNS = ("number", "state", "cell", "label", "seed", "run_id", "order", "in_file", "refused", "params",
                 "stage", "correct")


@dataclass(frozen=True)
class ResolvedStudy:
    """STUDY as a command names it: the study's name, its file when given one, and the tracking URI to read."""

    name: str
    spec: StudySpec | None
    tracking_uri: str | None


def resolve_study(study: str | StudySpec, tracking_uri: str | None = None) -> ResolvedStudy:
    """STUDY as the commands take it: a name, a study file or a loaded StudySpec."""
    if isinstance(study, StudySpec) or study.endswith((".yaml", ".yml")) or _is_file(study):
        spec = study if isinstance(study, StudySpec) else load_study(study)
        return ResolvedStudy(spec.name, spec, tracking_uri or spec.base.get("tracking", {}).get("uri"))
    return ResolvedStudy(study, None, tracking_uri)


def _is_file(name: str) -> bool:
    try:
        return Path(name).is_file()
    except OSError:  # a name no file can have (too long): a study's name, then
        return False


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
        state = t.state.name
        if t.state == TrialState.FAIL:  # resumed by a later trial, or stopped by a signal for one to resume
            state = "RESUMED" if t.number in continued else "STOPPED" if stopped_by_signal(t) else state
        rows.append({"number": t.number, "state": state, "cell": key,
                     "label": labels.get(key, attrs[Attr.LABEL]), "seed": seed, "run_id": attrs.get(Attr.RUN_ID),
                     "order": order.get(key, len(order) + t.number), "in_file": in_file,
                     "refused": Attr.REFUSED in attrs, "params": params, "stage": attrs.get(Attr.STAGE, ""),
                     "correct": attrs.get(Attr.CORRECT), **params, **attrs.get(Attr.METRICS, {})})
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
    """What a study's finished trials say, row by row (summary.py's rules): each row's Outcome, in order, and the
    first control (the baseline the footnote names). The report's rows and the configuration runs in MLflow are both
    made from one of these."""

    baseline: str | None
    outcomes: dict[str, Outcome]
    metric: str  # the metric the numbers are (test/* where the trials scored a held-out split's test set)
    scale: float  # 100 for accuracies (shown in percent), else 1
    maximize: bool

    @property
    def controls(self) -> dict[str, str | None]:
        """Each row's control (itself for a control; None for none), as the table's `vs` column says."""
        return {row: (row if o.verdict == "baseline" else o.compared_with) for row, o in self.outcomes.items()}


def reported_metric(frame: pd.DataFrame, metric: str) -> str:
    """The metric a table reports for `metric` (study.metric): its test/* twin where the trials scored the dataset's
    test split after selecting on a held-out part of train (data.holdout), else itself."""
    twin = metric.replace("val/", "test/", 1)
    done = frame[frame["state"] == "COMPLETE"] if len(frame) else frame
    return twin if twin != metric and twin in done and done[twin].notna().any() else metric


def evaluated_trials(frame: pd.DataFrame, plan: StudyPlan | None, row: str) -> tuple[pd.DataFrame, dict[str, str]]:
    """The trials a row's numbers come from, and a search's rows' stages: in a searched study a configuration that
    was confirmed (study.confirm) is its confirmation runs alone, one that was not its search trials (selection
    numbers, compared with nothing); a grid's rows are all their trials."""
    if plan is None or plan.spec.is_grid or not len(frame):
        return frame, {}
    confirmed = set(frame.loc[frame["stage"] == CONFIRM, row])
    stages = {r: CONFIRMED if r in confirmed else SEARCHED for r in frame[row]}
    return frame[(frame["stage"] == CONFIRM) == frame[row].isin(confirmed)], stages


def compare_rows(frame: pd.DataFrame, plan: StudyPlan | None, *, row: str, rows: list[str], named: str | None = None,
                 refused=(), ladder: bool | None = None, matched: bool = True) -> Comparison:
    """The study metric of `frame`'s finished trials, compared row by row: `row` names the column rows are keyed by
    (`cell` in the runner, the report's row label), `rows` every row to show in order, `named` a baseline row the
    reader chose for every row (default: summary.py's controls), `refused` the rows study.constraints refused,
    `ladder` whether each row is compared with the row before (default: study.ladder), `matched` whether rows are
    configurations that can have matched controls (not `--by` groups). The paper's top-1 comes from the references."""
    objective = plan.spec.cfg.study.objectives()[0] if plan is not None else None
    metric, maximize = (objective.metric, objective.direction == "maximize") if objective else ("val/acc1", True)
    metric = reported_metric(frame, metric)
    scale = stats.percent(metric)
    ordered = frame.sort_values(["order", "number"]) if len(frame) else frame
    ordered, stages = evaluated_trials(ordered, plan, row)
    stages = {r: stages.get(r, SEARCHED) for r in rows} if stages else {}
    done = ordered[ordered["state"] == "COMPLETE"].copy()
    done["value"] = pd.to_numeric(done[metric], errors="coerce") * scale if metric in done else np.nan
    samples = seed_samples(done, "value", row)
    first = ordered.drop_duplicates(row).set_index(row, drop=False) if len(frame) else pd.DataFrame()
    ladder = plan is not None and plan.spec.cfg.study.ladder if ladder is None else ladder
    controls = _controls(plan, ordered, first, row, rows, samples, named=named, ladder=ladder, matched=matched,
                         stages=stages)
    paper = None
    if plan is not None and plan.spec.cfg.reference:
        paper = {r: published_top1(plan.spec.cfg.reference, first.at[r, "params"], first.at[r, "label"],
                                   row_setup(plan.spec, first.at[r, "params"]))
                 for r in rows if r in first.index}
    images = _images(done, row, metric) if plan is not None and plan.spec.cfg.study.interval == "seeds+images" \
        else None
    outcomes = compare(rows, samples, controls, ladder=ladder, maximize=maximize, paper=paper, refused=refused,
                       seeds=seed_counts(ordered, row) if len(frame) else {}, stages=stages, images=images,
                       **verdict_rule(plan))
    baseline = next((r for r in rows if controls.get(r) == r), None)
    return Comparison(baseline, outcomes, metric, scale, maximize)


def row_setup(spec: StudySpec, params: dict) -> dict | None:
    """A configuration's setup as its reference rows state theirs (reference.setup_of); None where its params no
    longer make a valid config (a row the study file dropped)."""
    try:
        return setup_of(trial_config(spec, params, 0))
    except AblateError:
        return None


def verdict_rule(plan: StudyPlan | None) -> dict:
    """How the study's verdicts are judged (summary.compare's keywords): study.adjust, study.min_effect, and with
    seeds on demand in a grid the looks min..max its stop rule takes (a search's confirmation seeds are fixed)."""
    if plan is None:  # no study file: the schema's defaults
        return dict(adjust=stats.HOLM, margin=None, looks=None)
    study = plan.spec.cfg.study
    on_demand = study.on_demand if plan.spec.is_grid else None
    return dict(adjust=study.adjust, margin=study.min_effect,
                looks=tuple(range(on_demand.min, on_demand.max + 1)) if on_demand else None)


def _controls(plan: StudyPlan | None, trials: pd.DataFrame, first: pd.DataFrame, row: str, rows: list[str], samples, *,
              named: str | None, ladder: bool, matched: bool, stages: dict[str, str]) -> dict[str, str | None]:
    """Each row's control by summary.py's rules: the reader's `named` row for all; a ladder's row before; a search's
    confirmed baseline (named in advance); a grid's matched plain cells; else one baseline for all."""
    if ladder:
        return one_control(rows, None, ladder=True)
    if named is not None:
        return one_control(rows, named)
    if plan is not None and plan.spec.cfg.study.ladder:  # a ladder's steps are cumulative: all from its first row
        return one_control(rows, rows[0] if rows else None)
    expr = plan.spec.cfg.study.baseline if plan is not None else None
    if stages:  # a search: only confirmation runs are compared, with the baseline the study named in advance
        confirmed = [r for r in rows if stages.get(r) == CONFIRMED]
        base = find_row(expr or f"{MODULE_KEY}=none", trials[trials[row].isin(confirmed)], row) \
            if confirmed else None
        return {r: base for r in confirmed} if base is not None else {}
    modules = {r: str(first.at[r, MODULE_KEY]) if MODULE_KEY in first and pd.notna(first.at[r, MODULE_KEY])
               else plan.module({}) if plan is not None else "none" for r in rows if r in first.index}
    named_keys = _named_keys(expr, first) if expr is not None else None
    if matched and plan is not None and (expr is None or named_keys):
        if expr is None:
            is_control = {r for r in rows if modules.get(r) == "none"}
            treated = lambda key: key.startswith("model.attention.")  # noqa: E731
        else:
            is_control = {r for r in rows if r in first.index and names_row(expr, first.at[r, "params"], "")}
            attention = any(k.startswith("model.attention.") for k in named_keys)
            treated = lambda key: key in named_keys or attention and key.startswith("model.attention.")  # noqa: E731
        if is_control:
            return matched_controls(rows, _settings(plan, first, rows), is_control, treated)
    base = find_row(expr, trials, row) if expr is not None and len(trials) else None
    if expr is not None:  # named in advance: never picked from the data (None while no trial of it exists)
        return one_control(rows, base)
    return one_control(rows, choose_baseline(rows, samples, modules))


def _named_keys(expr: str, first: pd.DataFrame) -> set[str]:
    """The dotted keys study.baseline's key=value pairs name (spec.names_row's shorthand: `attention`, a dotted key
    or its last part), among the keys the rows set; empty for a row label."""
    pairs = [part.strip().partition("=") for part in expr.split(",")]
    if any(not sep for _, sep, _ in pairs):
        return set()
    keys = {k for params in first.get("params", []) for k in params}
    named = lambda key, dotted: dotted == (MODULE_KEY if key == "attention" else key) or dotted.endswith("." + key)  # noqa: E731
    return {k for key, _, _ in pairs for k in keys if named(key.strip(), k)}


def _settings(plan: StudyPlan, first: pd.DataFrame, rows: list[str]) -> dict[str, dict]:
    """Each row's value of every key some row sets (the base's where a row leaves it), less the keys that change
    only how a trial runs or is recorded: what matching controls compare."""
    params = {r: first.at[r, "params"] for r in rows if r in first.index}
    keys = {k for p in params.values() for k in p if not k.startswith(OPERATIONAL_KEYS)}
    return {r: {k: p.get(k, plan.flat_base.get(k)) for k in keys} for r, p in params.items()}


def _images(done: pd.DataFrame, row: str, metric: str) -> dict[str, dict] | None:
    """Each row's per-image correctness by seed (a seed's repeats averaged), for rows whose every finished trial
    recorded it (Attr.CORRECT: top-1 of the reported split); None for metrics other than top-1 accuracy."""
    if not metric.endswith("/acc1") or "correct" not in done:
        return None
    images = {}
    for key, group in done.groupby(row, sort=False):
        if group["correct"].isna().any():
            continue
        bits = group.assign(bits=group["correct"].map(unpack_correct))
        images[key] = {seed: np.mean(np.stack(list(g["bits"])), axis=0) for seed, g in bits.groupby("seed")}
    return images


def find_row(expr: str, frame: pd.DataFrame, row: str = "row") -> str | None:
    """The row of the first trial `expr` names (spec.names_row: a label, or key=value pairs), or None."""
    for params, label, found in zip(frame["params"], frame["label"], frame[row], strict=True):
        if names_row(expr, params, label) or str(found) == expr:
            return found
    return None
