"""The study report: one row per configuration, aggregated over seeds, with honest deltas.

Deltas are top-1 accuracy in percentage points with a 95% t-interval over seeds (SciPy's): paired by seed
when both rows ran the same seeds (the seed fixes data order and init, so pairing removes that noise),
Welch otherwise. Rows are configurations (cell keys) as the study file reads now; trials of configurations
the file no longer holds stay in the store and are left out unless `show_all` (then marked as such).
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import optuna
import optuna.visualization.matplotlib as ovm
import pandas as pd
from matplotlib.figure import Figure
from mlflow import MlflowClient
from scipy import stats

from ablate import tracking
from ablate.config import MODULE_KEY
from ablate.errors import AblateError, write_output
from ablate.results import (METRIC_COLUMNS, param_columns, resolve_study, stored_runs_client, study_file,
                            trials_frame)
from ablate.spec import REFERENCE_COLUMNS, StudySpec, build_cell, cell_label, cell_location, grid_cells
from ablate.storage import Attr, load

FORMATS = ("md", "csv", "latex", "html", "json")
DELTA = "Δ top-1"
DELTA_PREV = "Δ prev top-1"
NOT_IN_FILE = " (not in study file)"  # the mark of a row --all shows although the study file dropped it


# ---------------------------------------------------------------- deltas with confidence intervals

def delta_ci(base: pd.Series, other: pd.Series, level: float = 0.95) -> tuple[float, float, float]:
    """Mean difference other - base and its confidence interval; both Series are indexed by seed."""
    base, other = base.dropna(), other.dropna()
    if len(base) >= 2 and set(base.index) == set(other.index):  # paired by seed
        other = other.loc[base.index]
        delta = (other - base).mean()
        if (other - base).std(ddof=1) == 0:
            return delta, delta, delta  # no spread: SciPy's interval would be NaN
        ci = stats.ttest_rel(other, base).confidence_interval(level)
        return delta, ci.low, ci.high
    delta = other.mean() - base.mean()
    if len(base) < 2 or len(other) < 2:
        return delta, np.nan, np.nan
    if base.var(ddof=1) + other.var(ddof=1) == 0:
        return delta, delta, delta
    ci = stats.ttest_ind(other, base, equal_var=False).confidence_interval(level)  # Welch
    return delta, ci.low, ci.high


def _delta_columns(per_seed: pd.DataFrame, pairs: list[tuple], name: str) -> pd.DataFrame:
    """For (row, reference row) pairs: the delta, its interval and whether the interval excludes zero."""
    rows = {}
    for row, ref in pairs:
        measured = ref in per_seed and row in per_seed  # a row with no finished trial has no delta
        d, lo, hi = delta_ci(per_seed[ref], per_seed[row]) if measured else (np.nan,) * 3
        rows[row] = {name: d, f"{name} lo": lo, f"{name} hi": hi, f"{name} sig": bool(lo > 0 or hi < 0)}
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
    """--baseline: a row label, or key=value pairs matched against the trials' params."""
    if expr in table.index:
        return expr
    match = frame
    for part in expr.split(","):
        key, sep, value = part.strip().partition("=")
        cols = _columns_for(key, frame)
        if not sep or not cols:
            raise AblateError(f"--baseline: no row {expr!r} (rows: {', '.join(map(str, table.index))})")
        match = match[match[cols[0]].astype(str) == value]
    if match.empty:
        raise AblateError(f"--baseline: no row {expr!r} (rows: {', '.join(map(str, table.index))})")
    return match["row"].iloc[0]


def ablation_table(study_name: str, *, storage: str | None = None, tracking_uri: str | None = None, by=None,
                   baseline: str | None = None, spec: StudySpec | None = None, show_all: bool = False,
                   study: optuna.Study | None = None, client: MlflowClient | None = None) -> pd.DataFrame:
    """One row per configuration (its cell, or the `by` keys), aggregated over seeds.

    `spec` (the study file: references, ladder, which cells it holds) defaults to the file the parent run
    recorded; `study` and `client` are the open Optuna study and MLflow client when the caller has them."""
    study = study or load(study_name, storage)
    client = client or stored_runs_client(study, tracking_uri)
    spec = spec or study_file(study, client)
    df = trials_frame(study, client, spec)
    hidden = int((~df["in_file"] & (df["state"] == "COMPLETE")).sum()) if len(df) else 0
    if show_all:
        df.loc[~df["in_file"], "label"] += NOT_IN_FILE
    elif len(df):
        df = df[df["in_file"]].copy()
    if df.empty or not (df["state"] == "COMPLETE").any():
        raise AblateError(f"study {study_name!r} has no finished trials yet (run it: ablate run <study file>)")
    keys = _resolve_by(by, df) if by else ["label"]
    df["row"] = df[keys].astype(str).agg(", ".join, axis=1) if by else df["label"]
    done = df[df["state"] == "COMPLETE"].copy()
    for metric, (column, scale) in METRIC_COLUMNS.items():
        done[column] = done[metric] * scale
    done["top-1 err (%)"] = 100 - done["top-1 acc (%)"]
    done["top-5 err (%)"] = 100 - done["top-5 acc (%)"]

    spread = ["top-1 acc (%)", "top-5 acc (%)", "top-1 err (%)", "top-5 err (%)", "throughput (img/s)"]
    grouped = done.groupby("row", sort=False)
    table = grouped[spread].mean().join(grouped[spread].std().add_suffix(" sd"))
    table = table.join(grouped[["params (M)", "GMACs"]].mean()).join(grouped["seed"].count().rename("n"))
    # every configuration tried, in the study file's order: one whose trials all failed shows as n = 0
    table = table.reindex(df.groupby("row")["order"].min().sort_values().index)
    table["n"] = table["n"].fillna(0).astype(int)
    counts = df.groupby(["row", "state"]).size().unstack(fill_value=0)
    counts = counts.reindex(columns=["PRUNED", "FAIL"], fill_value=0).set_axis(["pruned", "failed"], axis=1)
    table = table.join(counts)
    table = table[["n", "pruned", "failed", *[c for s in spread for c in (s, s + " sd")], "params (M)", "GMACs"]]

    # per-seed top-1 (mean over repeats of a seed): the samples the intervals are computed from
    per_seed = done.pivot_table(index="seed", columns="row", values="top-1 acc (%)", aggfunc="mean")
    rows = list(table.index)
    if baseline:
        base = _find_row(table, done, baseline)
    else:
        plain = done[done[MODULE_KEY].astype(str) == "none"]["row"] if MODULE_KEY in done else pd.Series([])
        base = plain.iloc[0] if len(plain) else table.index[table["n"] > 0][0]
    table = table.join(_delta_columns(per_seed, [(r, base) for r in rows], DELTA))
    ladder = bool(spec and spec.cfg.study.ladder)
    if ladder:
        table = table.join(_delta_columns(per_seed, list(zip(rows, [None] + rows[:-1])), DELTA_PREV))
    table.index.name = "config"
    table.attrs.update(baseline=base, study=study_name, ladder=ladder, hidden=0 if show_all else hidden)
    return with_reference(table, done, spec.cfg.reference if spec else [])


def with_reference(table: pd.DataFrame, done: pd.DataFrame, reference: list[dict]) -> pd.DataFrame:
    """The paper's numbers beside ours: `paper X` and `ours X` for every numeric reference column we have.

    `done` maps the table's rows (its `row` column) to their params, which the references `match`."""
    ours = {"top-1 err": "top-1 err (%)", "top-5 err": "top-5 err (%)", "top-1 acc": "top-1 acc (%)",
            "top-5 acc": "top-5 acc (%)", "params (M)": "params (M)", "GMACs": "GMACs"}
    for ref in reference:
        match = done
        for key, value in ref.get("match", {}).items():
            col = "label" if key == "name" else key
            match = match[match[col].astype(str) == str(value)] if col in match else match.iloc[0:0]
        for key, value in ref.items():
            if key in REFERENCE_COLUMNS and isinstance(value, (int, float)) and not match.empty:
                name = REFERENCE_COLUMNS[key]
                table.loc[match["row"].unique(), f"paper {name}"] = float(value)
                if ours[name] in table:  # a dry run has params and GMACs, no accuracy yet
                    table[f"ours {name}"] = table[ours[name]]
    return table


def dry_run_table(spec: StudySpec) -> pd.DataFrame:
    """The configurations the study would run, with params and GMACs beside the paper's; nothing is trained."""
    cells = grid_cells(spec) if spec.is_grid else [{}]
    rows = []
    for params in cells:
        built, _ = build_cell(spec, params, cell_location(params), data=False)  # a dry run needs no data here
        rows.append({"config": cell_label(params), "trials": len(spec.cfg.study.seeds),
                     "params (M)": built.params / 1e6, "GMACs": built.gmacs,
                     **{k: v for k, v in params.items() if k != "name"}})
    table = pd.DataFrame(rows).set_index("config")
    if not spec.is_grid:
        table["trials"] = spec.cfg.study.trials
    cells_frame = pd.DataFrame([{"label": cell_label(p), "row": cell_label(p), **p} for p in cells])
    table = with_reference(table, cells_frame, spec.cfg.reference)
    return table.drop(columns=[c for c in ("params (M)", "GMACs") if f"ours {c}" in table])  # shown as ours X


# ---------------------------------------------------------------- formats

def _pm(mean: pd.Series, sd: pd.Series, digits: int = 2) -> pd.Series:
    def one(m, s):
        if pd.isna(m):
            return "-"
        return f"{m:.{digits}f} ± {s:.{digits}f}" if pd.notna(s) else f"{m:.{digits}f}"  # one seed: no spread

    return pd.Series([one(m, s) for m, s in zip(mean, sd)], index=mean.index)


def _delta_text(table: pd.DataFrame, name: str, base=None) -> pd.Series:
    def one(row, label):
        if label == base:
            return "(baseline)"
        d, lo, hi = row[name], row[f"{name} lo"], row[f"{name} hi"]
        if pd.isna(d):
            return "-"
        ci = f" [{lo:+.2f}, {hi:+.2f}]" if pd.notna(lo) else ""
        return f"{d:+.2f}{ci}{'*' if row[f'{name} sig'] else ''}"

    return pd.Series([one(row, label) for label, row in table.iterrows()], index=table.index)


def presentable(table: pd.DataFrame) -> pd.DataFrame:
    """The paper-like view: mean ± sd strings, deltas with their 95% intervals (* when it excludes 0)."""
    out = pd.DataFrame(index=table.index)
    out["n"] = table["n"]
    for col in ("top-1 acc (%)", "top-5 acc (%)", "top-1 err (%)", "top-5 err (%)"):
        out[col] = _pm(table[col], table[col + " sd"])
    out["params (M)"] = table["params (M)"].map(lambda v: "-" if pd.isna(v) else f"{v:.3f}")
    out["GMACs"] = table["GMACs"].map(lambda v: "-" if pd.isna(v) else f"{v:.4f}")
    out["img/s"] = _pm(table["throughput (img/s)"], table["throughput (img/s) sd"], 0)
    out[f"{DELTA} (95% CI)"] = _delta_text(table, DELTA, table.attrs.get("baseline"))
    if DELTA_PREV in table:
        out[f"{DELTA_PREV} (95% CI)"] = _delta_text(table, DELTA_PREV)
    for col in [c for c in table.columns if c.startswith(("paper ", "ours "))]:
        out[col] = table[col].map(lambda v: "-" if pd.isna(v) else f"{v:.2f}")
    out["pruned"], out["failed"] = table["pruned"], table["failed"]
    return out


def markdown(view: pd.DataFrame, note: str = "") -> str:
    """An aligned Markdown table of strings (pandas' to_markdown needs tabulate, which we do without)."""
    view = view.reset_index().astype(str)
    widths = [max(len(c), *view[c].str.len()) for c in view.columns]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    rule = "| " + " | ".join("-" * w for w in widths) + " |"
    return "\n".join([line(view.columns), rule, *(line(r) for r in view.itertuples(index=False))]) + note


def render(table: pd.DataFrame, fmt: str, view: pd.DataFrame | None = None, note: str = "") -> str:
    """`table` holds the numbers (CSV, JSON); `view` the strings a reader sees (Markdown, LaTeX, HTML)."""
    if view is None:
        view = presentable(table)
        note = (f"\n\nΔ: top-1 accuracy vs `{table.attrs.get('baseline')}` in points, 95% CI over seeds "
                "(paired by seed, else Welch); * the interval excludes 0.")
        if table.attrs.get("hidden"):
            note += (f" {table.attrs['hidden']} finished trials of configurations the study file no longer holds "
                     "are left out (--all shows them).")
    if fmt == "md":
        return markdown(view, note)
    if fmt == "csv":
        return table.to_csv()
    if fmt == "json":
        return table.reset_index().to_json(orient="records", indent=2, force_ascii=False)
    if fmt == "latex":
        latex = view.rename_axis(None).style.to_latex(hrules=True)  # booktabs rules
        return latex.replace("±", r"$\pm$").replace("Δ", r"$\Delta$")
    if fmt == "html":
        return view.to_html()
    raise AblateError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")


def dry_run_report(study: str | StudySpec, fmt: str = "md") -> str:
    """A study file's configurations, our params and GMACs beside the paper's, before anything is trained."""
    if fmt not in FORMATS:
        raise AblateError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    _, spec, _ = resolve_study(study)
    if spec is None:
        raise AblateError(f"--dry-run: {study!r} is not a study file (a dry run reads the file, not the store)")
    table = dry_run_table(spec)
    table = table.drop(columns=[c for c in table if "." in c])  # the cell's dotted keys: the row label says them
    digits = lambda col: 3 if "GMACs" in col else 2  # noqa: E731  (as the papers print them)
    view = table.apply(lambda col: col.map(lambda v: "-" if pd.isna(v) else f"{v:.{digits(col.name)}f}")
                       if col.dtype.kind == "f" else col)
    note = ("\n\nDry run: nothing trained. GMACs by torch.utils.flop_counter; papers' GFLOPs often come from "
            "another counter (ResNet-50: 4.089 here, 3.858 in CBAM), so compare the differences between rows.")
    return render(table, fmt, view, note)


# ---------------------------------------------------------------- plots

def plot_study(study: optuna.Study, frame: pd.DataFrame) -> optuna.Study:
    """The study Optuna's plots read. Grid trials carry their configuration as user attrs (an edited grid must
    not meet Optuna's fixed categorical value spaces), so for them: an in-memory copy whose finished trials
    have those params, each key a categorical over the values the study took."""
    finished = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if any(t.params for t in finished):
        return study  # searched: the trials hold their sampled params
    keys = param_columns(frame)
    values = frame.set_index("number")
    choices = {k: sorted({str(v) for v in values[k].dropna()}) for k in keys}
    copy = optuna.create_study(directions=study.directions, study_name=study.study_name)
    for t in finished:
        if t.number not in values.index:
            continue  # a configuration the report leaves out
        row = values.loc[t.number]
        params = {k: str(row[k]) for k in keys if pd.notna(row[k])}
        copy.add_trial(optuna.trial.create_trial(
            params=params, values=t.values, distributions={k: optuna.distributions.CategoricalDistribution(
                choices[k]) for k in params}))
    return copy


def png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def make_plots(table: pd.DataFrame, study: optuna.Study, frame: pd.DataFrame | None = None) -> dict[str, Figure]:
    """name -> figure: bar chart with error bars; Pareto front (several objectives); Optuna's importances,
    parallel coordinates and history (of a grid too, given its trials `frame`). The caller's matplotlib
    backend is left alone: the figures are drawn on their own canvases."""
    figures = {}
    fig = Figure(figsize=(max(4, 0.8 * len(table) + 2), 3.5), layout="tight")
    ax = fig.subplots()
    ax.bar(range(len(table)), table["top-1 acc (%)"], yerr=table["top-1 acc (%) sd"].fillna(0), capsize=4)
    ax.set_xticks(range(len(table)), table.index, rotation=30, ha="right")
    ax.set_ylabel("top-1 acc (%) (mean ± sd over seeds)")
    figures["top1_by_config.png"] = fig

    if len(study.directions) > 1:
        fig = Figure(figsize=(5, 4), layout="tight")
        ax = fig.subplots()
        ax.scatter(table["GMACs"], table["top-1 acc (%)"])
        for label, row in table.iterrows():
            ax.annotate(str(label), (row["GMACs"], row["top-1 acc (%)"]), fontsize=8)
        front = table.sort_values("GMACs")
        front = front[front["top-1 acc (%)"] >= front["top-1 acc (%)"].cummax()]  # nothing cheaper is better
        ax.plot(front["GMACs"], front["top-1 acc (%)"], "r--", label="Pareto front")
        ax.set_xlabel("GMACs")
        ax.set_ylabel("top-1 acc (%)")
        ax.legend()
        figures["pareto.png"] = fig

    source = plot_study(study, frame) if frame is not None else study
    if not any(t.params for t in source.get_trials(deepcopy=False)):
        return figures  # nothing varied: no search plots
    target = (lambda t: t.values[0]) if len(study.directions) > 1 else None
    for name, plot in (("param_importances", ovm.plot_param_importances),
                       ("parallel_coordinate", ovm.plot_parallel_coordinate),
                       ("optimization_history", ovm.plot_optimization_history)):
        try:
            with warnings.catch_warnings():  # Optuna marks its matplotlib plots experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                ax = plot(source, target=target) if target else plot(source)
        except Exception:  # noqa: BLE001 (e.g. importances need several finished trials)
            continue
        figures[f"{name}.png"] = np.ravel(ax)[0].figure
    return figures


# ---------------------------------------------------------------- the command

def write_report(study: str | StudySpec, *, fmt: str = "md", out: str | None = None, by: str | None = None,
                 baseline: str | None = None, plots: str | None = None, storage: str | None = None,
                 tracking_uri: str | None = None, show_all: bool = False) -> str:
    """STUDY is a study name, a study file or a loaded StudySpec; returns the rendered table, also logged on the
    study's parent run with its plots (and written to `out` and `plots` when given)."""
    if fmt not in FORMATS:
        raise AblateError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    name, spec, tracking_uri = resolve_study(study, tracking_uri)
    optuna_study = load(name, storage)
    client = stored_runs_client(optuna_study, tracking_uri)
    spec = spec or study_file(optuna_study, client)
    table = ablation_table(name, by=by, baseline=baseline, spec=spec, show_all=show_all, study=optuna_study,
                           client=client)
    text = render(table, fmt)
    if out:
        write_output(out, text, "--out")
    figures = make_plots(table, optuna_study, trials_frame(optuna_study, client, spec))
    if plots:
        for file, fig in figures.items():
            write_output(Path(plots) / file, png(fig), "--plots")
    parent = optuna_study.user_attrs.get(Attr.PARENT_RUN)
    if client is not None:
        client.log_text(parent, text, f"report/report.{fmt}")
        for file, fig in figures.items():
            client.log_figure(parent, fig, f"report/plots/{file}")
    return text
