"""The study report: one row per configuration, aggregated over seeds, with honest deltas.

What the numbers mean is summary.py's (results.compare_rows applies it): each row's study metric over seeds, its
seeds accounted for (n / pruned / failed), its control (a grid's matched plain cell, a ladder's row before, a
search's confirmed baseline) and the delta's 95% interval. Rows are configurations (cell keys) as the study file
reads now; trials of configurations the file no longer holds stay in the store and are left out unless `show_all`
(then marked as such).
The numbers come back as a record, formats.AblationTable; formats.py writes them as a reader sees them.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from mlflow import MlflowClient

from ablate.config import MODULE_KEY
from ablate.errors import AblateError, write_output
from ablate.formats import DELTA, DELTA_PREV, AblationTable, check_options, checklist, dry_run_page, png, writer
from ablate.paper_plan import missing_ablations
from ablate.plan import StudyPlan
from ablate.reference import (
    GMACS_DELTA_RELATIVE,
    REFERENCE_COLUMNS,
    SIZE_KEYS,
    half_unit,
    matches,
    setup_gap,
    setup_note,
    stated_setup,
)
from ablate.results import (
    METRIC_COLUMNS,
    Comparison,
    compare_rows,
    evaluated_trials,
    find_row,
    needs_runs,
    param_columns,
    reported_metric,
    resolve_study,
    row_setup,
    stored_runs_client,
    study_file,
    trials_frame,
    verdict_rule,
)
from ablate.spec import Cell, StudySpec, grid_cells, keyed_cells, module_of
from ablate.storage import Attr, load
from ablate.summary import SEARCHED, matched_controls, one_control
from ablate.tracking import LANDING

# a configuration's cost: its size from the dry forward, its training step's price (step_cost.py) where measured
COST_COLUMNS = ["params (M)", "GMACs", "step time ×", "peak mem (MB)"]
NOT_IN_FILE = " (not in study file)"  # the mark of a row --all shows although the study file dropped it


# ---------------------------------------------------------------- deltas with confidence intervals

def _delta_columns(comparison: Comparison, name: str) -> pd.DataFrame:
    """A comparison's deltas as columns: the delta, its interval (the verdict's: adjusted for its family) and
    whether it excludes zero, and the unadjusted 95% interval (raw lo, raw hi)."""
    rows = {row: {name: o.delta, f"{name} lo": o.low, f"{name} hi": o.high, f"{name} sig": o.significant,
                  f"{name} raw lo": o.raw_low, f"{name} raw hi": o.raw_high}
            for row, o in comparison.outcomes.items()}
    return pd.DataFrame.from_dict(rows, orient="index")


# ---------------------------------------------------------------- the table

def _columns_for(key: str, df: pd.DataFrame) -> list[str]:
    """A user's key -> the trial columns it names: `attention`, a dotted key, or its last part."""
    key = MODULE_KEY if key == "attention" else key
    return [c for c in df.columns if c == key] or [c for c in df.columns if c.endswith("." + key)]


def _resolve_by(by, df: pd.DataFrame) -> list[str]:
    keys = []
    for key in ([k.strip() for k in by.split(",")] if isinstance(by, str) else list(by)):
        match = _columns_for(key, df)
        if len(match) != 1:
            varied = ", ".join(param_columns(df)) or "nothing"
            raise AblateError(f"--by: unknown key {key!r} (the study varies: {varied})")
        keys.append(match[0])
    return keys


def _find_row(table: pd.DataFrame, frame: pd.DataFrame, expr: str):
    """--baseline: a row label, or key=value pairs matched against the trials' params (as study.baseline)."""
    found = expr if expr in table.index else find_row(expr, frame)
    if found is None:
        raise AblateError(f"--baseline: no row {expr!r} (rows: {', '.join(map(str, table.index))})")
    return found


def ablation_table(study_name: str, *, storage: str | None = None, tracking_uri: str | None = None, by=None,
                   baseline: str | None = None, spec: StudySpec | None = None, show_all: bool = False,
                   study: optuna.Study | None = None, client: MlflowClient | None = None) -> AblationTable:
    """One row per configuration (its cell, or the `by` keys), aggregated over seeds.

    `spec` (the study file: references, ladder, which cells it holds) defaults to the file the study was last run
    from; `study` and `client` are the open Optuna study and MLflow client when the caller has them (the runs are
    read only where the Optuna study lacks something: results.needs_runs)."""
    study = study or load(study_name, storage)
    client = client or (stored_runs_client(study, tracking_uri) if needs_runs(study) else None)
    spec = spec or study_file(study, client)
    plan = StudyPlan(spec) if spec is not None else None
    df = trials_frame(study, client, plan)
    hidden = int((~df["in_file"] & (df["state"] == "COMPLETE")).sum()) if len(df) else 0
    if show_all:
        df.loc[~df["in_file"], "label"] += NOT_IN_FILE
    elif len(df):
        df = df[df["in_file"]].copy()
    if df.empty or not (df["state"] == "COMPLETE").any():
        raise AblateError(f"study {study_name!r} has no finished trials yet (run it: ablate run <study file>)")
    keys = _resolve_by(by, df) if by else ["label"]
    df["row"] = df[keys].astype(str).agg(", ".join, axis=1) if by else df["label"]
    df, stages = evaluated_trials(df, plan, "row")  # a search's confirmed rows: their confirmation runs alone
    done = df[df["state"] == "COMPLETE"].copy()
    for metric, (column, scale) in METRIC_COLUMNS.items():
        done[column] = done[metric] * scale
    if reported_metric(done, "val/acc1") == "test/acc1":  # selected on data.holdout: the table reports the test split
        done["top-1 acc (%)"], done["top-5 acc (%)"] = done["test top-1 acc (%)"], done["test top-5 acc (%)"]
    done["top-1 err (%)"] = 100 - done["top-1 acc (%)"]
    done["top-5 err (%)"] = 100 - done["top-5 acc (%)"]

    spread = ["top-1 acc (%)", "top-5 acc (%)", "top-1 err (%)", "top-5 err (%)", "throughput (img/s)"]
    grouped = done.groupby("row", sort=False)
    table = grouped[spread].mean().join(grouped[spread].std().add_suffix(" sd"))
    table = table.join(grouped[COST_COLUMNS].mean())
    # every configuration tried, in the study file's order: one whose trials all failed shows as n = 0
    table = table.reindex(df.groupby("row")["order"].min().sort_values().index)

    # the study's result per row and its comparisons, by summary.py's rules: what the configuration runs show
    rows, refused = list(table.index), refused_rows(study, spec)
    named = _find_row(table, done, baseline) if baseline else None
    compare = partial(compare_rows, df, plan, row="row", rows=rows, named=named, refused=set(refused) & set(rows),
                      matched=not by)
    against_base = compare(ladder=False)
    ladder = bool(spec and spec.cfg.study.ladder)
    shown = compare(ladder=True) if ladder else against_base  # a ladder is judged per step
    _result_columns(table, against_base)
    table = table[["n", "pruned", "failed", "repeats", "metric", "metric sd",
                   *[c for s in spread for c in (s, s + " sd")], *COST_COLUMNS]]
    table["vs"] = [against_base.controls.get(row) for row in table.index]
    table = table.join(_delta_columns(against_base, DELTA))
    if ladder:
        table = table.join(_delta_columns(shown, DELTA_PREV))
    table["verdict"] = [shown.outcomes[row].verdict for row in table.index]
    if stages:  # a search: confirmed configurations first, each group ranked by mean over seeds
        table.insert(0, "stage", [stages.get(row, SEARCHED) for row in table.index])
        table = table.sort_values(["stage", "top-1 acc (%)"], ascending=[True, not against_base.maximize],
                                  na_position="last")
    table.index.name = "config"
    table = verdicts(with_reference(table, done, spec), against_base.controls, ladder)
    compared = [row for row in table.index if shown.outcomes[row].compared_with is not None]
    if compared and ("paper top-1 acc" in table or "paper top-1 err" in table):  # the paper's effect, by our interval
        table.loc[compared, "paper Δ top-1"] = [shown.outcomes[row].paper_delta for row in compared]
        table.loc[compared, "effect"] = [shown.outcomes[row].effect for row in compared]
    per_seed = pd.DataFrame({row: o.samples for row, o in against_base.outcomes.items() if o.n})
    per_seed.index.name, per_seed.columns.name = "seed", "row"
    return AblationTable(frame=table, study=study_name, baseline=against_base.baseline, ladder=ladder,
                         per_seed=per_seed, refused=refused, hidden=0 if show_all else hidden,
                         classes=num_classes(spec), covers=_covers(against_base), metric=against_base.metric,
                         missing=tuple(missing_ablations(spec)) if spec is not None else (), **verdict_rule(plan))


def _result_columns(table: pd.DataFrame, comparison: Comparison) -> None:
    """n, pruned, failed and repeats (summary.SeedCount), and the study metric's mean and sd over seeds (a seed's
    repeats averaged): the configuration runs' numbers. Top-1 accuracy and error are those when the study's metric
    is top-1 accuracy (val/acc1, or test/acc1 after a held-out selection split); other metrics keep their trials'
    mean."""
    outcomes = [comparison.outcomes[row] for row in table.index]
    table["n"] = [o.n for o in outcomes]
    table["pruned"], table["failed"] = [o.seeds.pruned for o in outcomes], [o.seeds.failed for o in outcomes]
    table["repeats"] = [o.seeds.repeats for o in outcomes]
    table["metric"], table["metric sd"] = [o.mean for o in outcomes], [o.sd for o in outcomes]
    if comparison.metric not in ("val/acc1", "test/acc1"):
        return
    for column, sign, offset in (("top-1 acc (%)", 1, 0), ("top-1 err (%)", -1, 100)):
        table[column] = [offset + sign * comparison.outcomes[row].mean for row in table.index]
        table[f"{column} sd"] = [comparison.outcomes[row].sd for row in table.index]


def _covers(comparison: Comparison) -> str:
    """What the table's intervals cover: seeds+images only where every interval does."""
    compared = [o.covers for o in comparison.outcomes.values() if pd.notna(o.low)]
    return "seeds+images" if compared and all(c == "seeds+images" for c in compared) else "seeds"


def num_classes(spec: StudySpec | None) -> int | None:
    """The study's number of classes (top-5 means something above 10), from its base config."""
    if spec is None:
        return None
    return StudyPlan(spec).base.data.class_count


def refused_rows(study: optuna.Study, spec: StudySpec | None) -> dict[str, str]:
    """Configurations study.constraints refused before they trained: label -> why."""
    cells = keyed_cells(spec) if spec is not None and spec.is_grid else {}
    refused = {cells[key].label: why for key, why in study.user_attrs.get(Attr.REFUSED, {}).items()
               if key in cells}
    for t in study.get_trials(deepcopy=False):
        if Attr.REFUSED in t.user_attrs and Attr.LABEL in t.user_attrs:
            refused[t.user_attrs[Attr.LABEL]] = t.user_attrs[Attr.REFUSED]
    return refused


def verdicts(table: pd.DataFrame, controls: dict[str, str | None], ladder: bool) -> pd.DataFrame:
    """With `reference:` rows: do our params match the paper's (within half a unit of its last printed digit), and
    does our GMAC delta over each row's control match the paper's (within both rows' rounding and
    GMACS_DELTA_RELATIVE of the paper's delta)? A ladder is judged per step (each row against the one before).
    Whether the paper's effect on top-1 is reproduced is the comparison's (summary.compare), as the configuration
    runs show it."""
    rows = list(table.index)
    previous = dict(zip(rows, [None] + rows[:-1]))
    ref = {r: (previous[r] if ladder else controls.get(r)) for r in rows}
    ref = {r: b for r, b in ref.items() if b is not None and b != r and b in table.index}
    apart = table["size differs"].eq(True) if "size differs" in table else pd.Series(False, index=table.index)
    if "paper params (M)" in table:
        gap = (table["params (M)"] - table["paper params (M)"]).abs()
        table["params match"] = gap.le(table["tol params (M)"] + 1e-9).where(gap.notna() & ~apart)  # 1e-9: noise
    if "paper GMACs" in table:
        for r, b in ref.items():
            if apart[r] or apart[b]:  # another backbone's or image size's GMACs: nothing to match
                continue
            ours, paper = (table.at[r, "GMACs"] - table.at[b, "GMACs"],
                           table.at[r, "paper GMACs"] - table.at[b, "paper GMACs"])
            tolerance = table.at[r, "tol GMACs"] + table.at[b, "tol GMACs"] + GMACS_DELTA_RELATIVE * abs(paper)
            table.loc[r, ["ours Δ GMACs", "paper Δ GMACs"]] = [ours, paper]
            if "GMACs Δ match" not in table:  # object: a first row without the paper's GMACs must not make it float
                table["GMACs Δ match"] = pd.Series(np.nan, index=table.index, dtype=object)
            table.loc[r, "GMACs Δ match"] = abs(ours - paper) <= tolerance + 1e-9 if pd.notna(paper) else np.nan
    return table.drop(columns=[c for c in table if c.startswith("tol ") or c == "size differs"])


def with_reference(table: pd.DataFrame, done: pd.DataFrame, spec: StudySpec | None) -> pd.DataFrame:
    """The paper's numbers beside ours: `paper X` and `ours X` for every numeric reference column we have, and
    where the rows state the setup they measured, `setup`: `same`, or which part differs (reference.setup_note).
    A row measured on another backbone or image size has no params or GMACs to match (`size differs`).

    `done` maps the table's rows (its `row` column) to their `params` and `label`, which the references `match`."""
    ours = {"top-1 err": "top-1 err (%)", "top-5 err": "top-5 err (%)", "top-1 acc": "top-1 acc (%)",
            "top-5 acc": "top-5 acc (%)", "params (M)": "params (M)", "GMACs": "GMACs"}
    reference = spec.cfg.reference if spec is not None else []
    first = done.drop_duplicates("row").set_index("row")
    setups = {row: row_setup(spec, first.at[row, "params"]) for row in table.index if row in first.index} \
        if reference else {}
    named_by: dict[str, list[dict]] = {}
    for ref in reference:
        pairs = zip(done["params"], done["label"], strict=True)
        named = [matches(ref.get("match", {}), params, label) for params, label in pairs]
        rows = done.loc[named, "row"].unique()
        for row in rows:
            named_by.setdefault(row, []).append(ref)
        for key, value in ref.items():
            if key in REFERENCE_COLUMNS and isinstance(value, (int, float)) and len(rows):
                name = REFERENCE_COLUMNS[key]
                table.loc[rows, f"paper {name}"] = float(value)
                table.loc[rows, f"tol {name}"] = half_unit(ref, key)  # what the paper's rounding hides
                if ours[name] in table:  # a dry run has params and GMACs, no accuracy yet
                    table[f"ours {name}"] = table[ours[name]]
    for row, refs in named_by.items():
        if setup_gap(stated_setup(refs), setups.get(row), SIZE_KEYS):
            table.loc[row, "size differs"] = True
    notes = {row: setup_note(refs, setups[row]) for row, refs in named_by.items() if setups.get(row) is not None}
    if any(notes.values()):
        table["setup"] = pd.Series(notes, dtype=object)
    return table


def dry_run_table(spec: StudySpec, price, step_price=None) -> pd.DataFrame:
    """The configurations the study would run, with params and GMACs beside the paper's; nothing is trained.
    `price(spec, params)` is what a configuration costs (cells.cell_cost, which the caller imports: it builds the
    model, and the report itself never imports torch); `step_price(spec, cells)` its training step's price by cell
    key (step_cost.price_records), when given."""
    cells = grid_cells(spec) if spec.is_grid else [Cell("{}", {})]
    steps = step_price(spec, cells) if step_price is not None else {}
    rows = []
    for cell in cells:
        cost = price(spec, cell.params)
        step = steps.get(cell.key, {})
        rows.append({"config": cell.label, "trials": len(spec.cfg.study.first_seeds),
                     "params (M)": cost["params_m"], "GMACs": cost["gmacs"],
                     **({"step time ×": step["step_time_ratio"], "peak mem (MB)": step["peak_mem_mb"]} if step else {}),
                     **cell.params})
    table = pd.DataFrame(rows).set_index("config")
    if not spec.is_grid:
        table["trials"] = spec.cfg.study.trials
    cells_frame = pd.DataFrame([{"label": c.label, "row": c.label, "params": c.params} for c in cells])
    table = with_reference(table, cells_frame, spec)
    labels = [c.label for c in cells]
    plain = {c.label for c in cells if module_of(c.params, spec) == "none"}
    controls = one_control(labels, None, ladder=True) if spec.cfg.study.ladder else matched_controls(
        labels, {c.label: c.params for c in cells}, plain, lambda key: key.startswith("model.attention."))
    table = verdicts(table, controls, spec.cfg.study.ladder)  # a grid's cells against their matched plain cells
    return table.drop(columns=[c for c in ("params (M)", "GMACs") if f"ours {c}" in table])  # shown as ours X


def dry_run_report(study: str | StudySpec, price, fmt: str = "md") -> str:
    """A study file's configurations, our params and GMACs beside the paper's, before anything is trained
    (`price`: as for dry_run_table)."""
    write = writer(fmt)
    spec = resolve_study(study).spec
    if spec is None:
        raise AblateError(f"--dry-run: {study!r} is not a study file (a dry run reads the file, not the store)")
    table = dry_run_table(spec, price)
    table = table.drop(columns=[c for c in table if "." in c])  # the cell's dotted keys: the row label says them
    page = dry_run_page(table)
    page.note += checklist(missing_ablations(spec))
    return write(page)


# ---------------------------------------------------------------- the command

@dataclass(frozen=True)
class OpenedReport:
    """A study as the report reads it: the Optuna study, the MLflow client (None where the report needs no runs),
    the study file (None when moved) and the table made from them."""

    study: optuna.Study
    client: MlflowClient | None
    spec: StudySpec | None
    table: AblationTable

    def trials(self) -> pd.DataFrame:
        """Every trial of the study as results.trials_frame reads it (the rows the table is made from)."""
        return trials_frame(self.study, self.client, self.spec)


def open_report(study: str | StudySpec, *, storage: str | None = None, tracking_uri: str | None = None, by=None,
                baseline: str | None = None, show_all: bool = False, writing: bool = False) -> OpenedReport:
    """STUDY (a name, a study file or a StudySpec) read from its stores into its ablation table, as `ablate report`
    prints it; `writing`: open MLflow's store even where the table needs nothing of it (to log there)."""
    resolved = resolve_study(study, tracking_uri)
    name, spec, tracking_uri = resolved.name, resolved.spec, resolved.tracking_uri
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the plots' in-memory study is not news
    optuna_study = load(name, storage)
    client = stored_runs_client(optuna_study, tracking_uri) if writing or needs_runs(optuna_study) else None
    spec = spec or study_file(optuna_study, client)
    table = ablation_table(name, by=by, baseline=baseline, spec=spec, show_all=show_all, study=optuna_study,
                           client=client)
    return OpenedReport(optuna_study, client, spec, table)


def write_report(study: str | StudySpec, *, fmt: str = "md", out: str | None = None, by: str | None = None,
                 baseline: str | None = None, plots: str | None = None, storage: str | None = None,
                 tracking_uri: str | None = None, show_all: bool = False, columns: str = "compact",
                 plotter=None, log: bool = False) -> str:
    """STUDY is a study name, a study file or a loaded StudySpec; returns the rendered table (also written to `out`
    when given, and logged on the study's parent run with `log`). With `plotter` (plots.make_plots, which the
    caller imports: matplotlib and Optuna's plots cost seconds a plain report need not pay) the figures are made,
    written to the folder `plots` when given and logged with `log`. Without `log` a report only reads, and reads
    MLflow only where the Optuna study lacks something (results.needs_runs)."""
    check_options(fmt, columns)
    opened = open_report(study, storage=storage, tracking_uri=tracking_uri, by=by, baseline=baseline,
                         show_all=show_all, writing=log)
    optuna_study, client, table = opened.study, opened.client, opened.table
    text = table.render(fmt, columns)
    if out:
        write_output(out, text, "--out")
    figures = plotter(table, optuna_study, opened.trials()) if plotter else {}
    images = {file: png(fig) for file, fig in figures.items()}
    if plots:
        for file, data in images.items():
            write_output(Path(plots) / file, data, "--plots")
    parent = optuna_study.user_attrs.get(Attr.PARENT_RUN)
    if log and client is not None:
        client.log_text(parent, text, f"report/report.{fmt}")
        for file, fig in figures.items():
            client.log_figure(parent, fig, f"report/plots/{file}")
        client.log_text(parent, table.landing(images), LANDING)  # what `ablate ui` opens on
    return text
