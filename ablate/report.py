"""The study report: one row per configuration, aggregated over seeds, with honest deltas.

Deltas are top-1 accuracy in percentage points with a 95% t-interval over seeds (SciPy's): paired by seed
when both rows ran the same seeds (the seed fixes data order and init, so pairing removes that noise),
Welch otherwise. Rows are configurations (cell keys) as the study file reads now; trials of configurations
the file no longer holds stay in the store and are left out unless `show_all` (then marked as such).
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from mlflow import MlflowClient

from ablate import stats
from ablate.config import MODULE_KEY
from ablate.errors import AblateError, write_output
from ablate.results import (METRIC_COLUMNS, needs_runs, param_columns, resolve_study, stored_runs_client,
                            study_file, trials_frame)
from ablate.spec import REFERENCE_COLUMNS, StudySpec, cell_label, grid_cells, keyed_cells, trial_config
from ablate.storage import Attr, load

FORMATS = ("md", "csv", "latex", "html", "json")
COLUMNS = ("compact", "all")  # --columns: what a paper prints, or every number the report has
PARAMS_TOLERANCE_M = 0.01  # our params match the paper's within this (papers print two decimals of M)
GMACS_TOLERANCE = 0.005  # ... our GMAC delta the paper's (papers print three decimals, and count differently)
DELTA = "Δ top-1"
DELTA_PREV = "Δ prev top-1"
NOT_IN_FILE = " (not in study file)"  # the mark of a row --all shows although the study file dropped it


@dataclass
class AblationTable:
    """The report's numbers and what they were measured against (notebooks read `.frame`)."""

    frame: pd.DataFrame  # one row per configuration: counts, mean and sd, deltas, verdicts, the paper's numbers
    study: str
    baseline: str  # the row every DELTA is against
    ladder: bool  # a ladder: each row is also judged against the row before (DELTA_PREV)
    per_seed: pd.DataFrame  # top-1 of each seed (rows) and configuration (columns): the samples of the intervals
    refused: dict[str, str]  # configurations study.constraints refused before training: label -> why
    hidden: int  # finished trials of configurations the study file no longer holds, left out of `frame`
    classes: int | None  # the study's number of classes (top-5 means something above 10)


# ---------------------------------------------------------------- deltas with confidence intervals

def _delta_columns(per_seed: pd.DataFrame, pairs: list[tuple], name: str) -> pd.DataFrame:
    """For (row, reference row) pairs: the delta, its interval and whether the interval excludes zero."""
    rows = {}
    for row, ref in pairs:
        measured = ref in per_seed and row in per_seed  # a row with no finished trial has no delta
        d, lo, hi = stats.delta_ci(per_seed[ref], per_seed[row]) if measured else (np.nan,) * 3
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
                   study: optuna.Study | None = None, client: MlflowClient | None = None) -> AblationTable:
    """One row per configuration (its cell, or the `by` keys), aggregated over seeds.

    `spec` (the study file: references, ladder, which cells it holds) defaults to the file the study was last run
    from; `study` and `client` are the open Optuna study and MLflow client when the caller has them (the runs are
    read only where the Optuna study lacks something: results.needs_runs)."""
    study = study or load(study_name, storage)
    client = client or (stored_runs_client(study, tracking_uri) if needs_runs(study) else None)
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
    if not spec or spec.cfg.study.sampler != "grid":  # a search: its configurations ranked by mean over seeds
        table = table.sort_values("top-1 acc (%)", ascending=False, na_position="last")
    table["verdict"] = [("baseline" if row == base else stats.direction(lo, hi))
                        for row, lo, hi in zip(table.index, table[f"{DELTA} lo"], table[f"{DELTA} hi"])]
    table = verdicts(with_reference(table, done, spec.cfg.reference if spec else []), base, ladder)
    return AblationTable(frame=table, study=study_name, baseline=base, ladder=ladder, per_seed=per_seed,
                         refused=refused_rows(study, spec), hidden=0 if show_all else hidden, classes=num_classes(spec))


def num_classes(spec: StudySpec | None) -> int | None:
    """The study's number of classes (top-5 means something above 10), from its base config."""
    if spec is None:
        return None
    return trial_config(spec, {}, spec.cfg.study.seed_list[0]).data.class_count


def refused_rows(study: optuna.Study, spec: StudySpec | None) -> dict[str, str]:
    """Configurations study.constraints refused before they trained: label -> why."""
    cells = keyed_cells(spec) if spec is not None and spec.is_grid else {}
    refused = {cell_label(cells[key]): why for key, why in study.user_attrs.get(Attr.REFUSED, {}).items()
               if key in cells}
    for t in study.get_trials(deepcopy=False):
        if Attr.REFUSED in t.user_attrs and Attr.LABEL in t.user_attrs:
            refused[t.user_attrs[Attr.LABEL]] = t.user_attrs[Attr.REFUSED]
    return refused


def verdicts(table: pd.DataFrame, baseline: str, ladder: bool) -> pd.DataFrame:
    """With `reference:` rows: do our params match the paper's (within 0.01M), does our GMAC delta over the
    baseline match the paper's, and is the paper's effect on top-1 reproduced by our interval (stats.reproduction)?
    A ladder is judged per step (each row against the one before)."""
    rows = list(table.index)
    previous = dict(zip(rows, [None] + rows[:-1]))
    ref = {r: (previous[r] if ladder else baseline) for r in rows}
    ref = {r: b for r, b in ref.items() if b is not None and b != r}
    delta = DELTA_PREV if ladder else DELTA
    if "paper params (M)" in table:
        gap = (table["params (M)"] - table["paper params (M)"]).abs()
        table["params match"] = gap.le(PARAMS_TOLERANCE_M).where(gap.notna())
    if "paper GMACs" in table:
        for r, b in ref.items():
            ours, paper = (table.at[r, "GMACs"] - table.at[b, "GMACs"],
                           table.at[r, "paper GMACs"] - table.at[b, "paper GMACs"])
            table.loc[r, ["ours Δ GMACs", "paper Δ GMACs"]] = [ours, paper]
            table.loc[r, "GMACs Δ match"] = abs(ours - paper) <= GMACS_TOLERANCE if pd.notna(paper) else np.nan
    accuracy = (table["paper top-1 acc"] if "paper top-1 acc" in table else
                100 - table["paper top-1 err"] if "paper top-1 err" in table else None)
    if accuracy is not None:
        for r, b in ref.items():
            paper = accuracy[r] - accuracy[b]
            table.loc[r, "paper Δ top-1"] = paper
            table.loc[r, "effect"] = (stats.reproduction(paper, table.at[r, f"{delta} lo"], table.at[r, f"{delta} hi"])
                                      if pd.notna(paper) else "-")
    return table


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


def dry_run_table(spec: StudySpec, price) -> pd.DataFrame:
    """The configurations the study would run, with params and GMACs beside the paper's; nothing is trained.
    `price(spec, params)` is what a configuration costs (cells.cell_cost, which the caller imports: it builds the
    model, and the report itself never imports torch)."""
    cells = grid_cells(spec) if spec.is_grid else [{}]
    rows = []
    for params in cells:
        cost = price(spec, params)
        rows.append({"config": cell_label(params), "trials": len(spec.cfg.study.first_seeds),
                     "params (M)": cost["params_m"], "GMACs": cost["gmacs"],
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


def _num(series: pd.Series, digits: int, sign: str = "") -> pd.Series:
    return series.map(lambda v: "-" if pd.isna(v) else f"{v:{sign}.{digits}f}")


def _check(series: pd.Series) -> pd.Series:
    return series.map(lambda v: "-" if pd.isna(v) else "yes" if v else "no")


def compact(table: AblationTable) -> pd.DataFrame:
    """The columns a paper prints: params, GMACs, top-1 mean ± sd over n seeds, the delta with its interval and
    what it says; top-5 only above 10 classes (below, it is ~100% for every row)."""
    frame = table.frame
    out = pd.DataFrame(index=frame.index)
    out["params (M)"] = _num(frame["params (M)"], 3)
    out["GMACs"] = _num(frame["GMACs"], 4)
    top1 = _pm(frame["top-1 acc (%)"], frame["top-1 acc (%) sd"])
    out["top-1 acc (%)"] = [f"{t} (n {n})" if t != "-" else f"- (n {n})" for t, n in zip(top1, frame["n"])]
    if (table.classes or 0) > 10:
        out["top-5 acc (%)"] = _pm(frame["top-5 acc (%)"], frame["top-5 acc (%) sd"])
    name = DELTA_PREV if table.ladder else DELTA
    out[f"{name} (95% CI)"] = _delta_text(frame, name, None if table.ladder else table.baseline)
    out["verdict"] = frame["verdict"] if not table.ladder else [
        "-" if pd.isna(lo) and i == 0 else stats.direction(lo, hi)
        for i, (lo, hi) in enumerate(zip(frame[f"{DELTA_PREV} lo"], frame[f"{DELTA_PREV} hi"]))]
    return out


def against_paper(table: AblationTable) -> pd.DataFrame | None:
    """The reproduction table: the paper's numbers beside ours and the verdicts (None without references)."""
    frame = table.frame
    if not any(c.startswith("paper ") for c in frame):
        return None
    out = pd.DataFrame(index=frame.index)
    if "paper params (M)" in frame:
        out["params (M) ours / paper"] = _num(frame["params (M)"], 2) + " / " + _num(frame["paper params (M)"], 2)
        out["params match"] = _check(frame["params match"])
    if "paper Δ GMACs" in frame:
        out["Δ GMACs ours / paper"] = (_num(frame["ours Δ GMACs"], 4, "+") + " / " +
                                       _num(frame["paper Δ GMACs"], 3, "+"))
        out["GMACs match"] = _check(frame["GMACs Δ match"])
    if "paper Δ top-1" in frame:
        name = DELTA_PREV if table.ladder else DELTA
        out[f"{name} ours / paper"] = _num(frame[name], 2, "+") + " / " + _num(frame["paper Δ top-1"], 2, "+")
        if not table.ladder:
            out.loc[table.baseline, f"{name} ours / paper"] = "(baseline)"
        out["effect"] = frame["effect"].fillna("-")
    return out


def presentable(table: AblationTable, columns: str = "compact") -> pd.DataFrame:
    """What a reader sees: the compact table, or (`all`) every column: mean ± sd strings, deltas with their 95%
    intervals (* when it excludes 0), the paper's numbers and the verdicts."""
    if columns == "compact":
        return compact(table)
    frame = table.frame
    if columns != "all":
        raise AblateError(f"--columns: {columns!r} is not one of {', '.join(COLUMNS)}")
    out = pd.DataFrame(index=frame.index)
    out["n"] = frame["n"]
    for col in ("top-1 acc (%)", "top-5 acc (%)", "top-1 err (%)", "top-5 err (%)"):
        out[col] = _pm(frame[col], frame[col + " sd"])
    out["params (M)"] = frame["params (M)"].map(lambda v: "-" if pd.isna(v) else f"{v:.3f}")
    out["GMACs"] = frame["GMACs"].map(lambda v: "-" if pd.isna(v) else f"{v:.4f}")
    out["img/s"] = _pm(frame["throughput (img/s)"], frame["throughput (img/s) sd"], 0)
    out[f"{DELTA} (95% CI)"] = _delta_text(frame, DELTA, table.baseline)
    if DELTA_PREV in frame:
        out[f"{DELTA_PREV} (95% CI)"] = _delta_text(frame, DELTA_PREV)
    out["verdict"] = frame["verdict"]
    for col in [c for c in frame.columns if c.startswith(("paper ", "ours "))]:
        out[col] = frame[col].map(lambda v: "-" if pd.isna(v) else f"{v:.2f}")
    for col in ("params match", "GMACs Δ match"):
        if col in frame:
            out[col] = _check(frame[col])
    if "effect" in frame:
        out["effect"] = frame["effect"].fillna("-")
    out["pruned"], out["failed"] = frame["pruned"], frame["failed"]
    return out


def markdown(view: pd.DataFrame, note: str = "") -> str:
    """An aligned Markdown table of strings (pandas' to_markdown needs tabulate, which we do without)."""
    view = view.reset_index().astype(str)
    widths = [max(len(c), *view[c].str.len()) for c in view.columns]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    rule = "| " + " | ".join("-" * w for w in widths) + " |"
    return "\n".join([line(view.columns), rule, *(line(r) for r in view.itertuples(index=False))]) + note


def render(table: AblationTable | pd.DataFrame, fmt: str, view: pd.DataFrame | None = None, note: str = "",
           columns: str = "compact") -> str:
    """`table` holds the numbers (CSV, JSON); `view` the strings a reader sees (Markdown, LaTeX, HTML): the compact
    table, then (Markdown) the reproduction table when the study has references."""
    second, numbers = None, table
    if view is None:
        numbers = table.frame
        view = presentable(table, columns)
        second = against_paper(table) if columns == "compact" else None
        against = ("the row before" if table.ladder else f"`{table.baseline}`")
        note = (f"\n\nΔ: top-1 accuracy vs {against} in points, 95% CI over seeds (paired by seed, else Welch); "
                "* the interval excludes 0; verdict: better / worse when it does, undecided while it holds 0.")
        if second is not None:
            note += (" Reproduction: params match within 0.01M, the GMAC delta within 0.005; effect: the paper's "
                     "Δ is reproduced when our interval excludes 0 on its side, contradicted on the other, "
                     "inconclusive while it holds 0.")
        if table.hidden:
            note += (f" {table.hidden} finished trials of configurations the study file no longer holds "
                     "are left out (--all shows them).")
        if table.refused:
            note += " Refused by study.constraints before training: " + "; ".join(
                f"{label} ({why})" for label, why in table.refused.items()) + "."
        if columns == "compact":
            note += " More columns: --columns all."
    if fmt == "md":
        if second is not None:
            return markdown(view) + "\n\nAgainst the paper:\n\n" + markdown(second, note)
        return markdown(view, note)
    if fmt == "csv":
        return numbers.to_csv()
    if fmt == "json":
        return numbers.reset_index().to_json(orient="records", indent=2, force_ascii=False)
    if fmt == "latex":
        latex = view.rename_axis(None).style.to_latex(hrules=True)  # booktabs rules
        return latex.replace("±", r"$\pm$").replace("Δ", r"$\Delta$")
    if fmt == "html":
        return view.to_html()
    raise AblateError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")


def dry_run_report(study: str | StudySpec, price, fmt: str = "md") -> str:
    """A study file's configurations, our params and GMACs beside the paper's, before anything is trained
    (`price`: as for dry_run_table)."""
    if fmt not in FORMATS:
        raise AblateError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    _, spec, _ = resolve_study(study)
    if spec is None:
        raise AblateError(f"--dry-run: {study!r} is not a study file (a dry run reads the file, not the store)")
    table = dry_run_table(spec, price)
    table = table.drop(columns=[c for c in table if "." in c])  # the cell's dotted keys: the row label says them
    digits = lambda col: 3 if "GMACs" in col else 2  # noqa: E731  (as the papers print them)
    view = table.apply(lambda col: col.map(lambda v: "-" if pd.isna(v) else f"{v:.{digits(col.name)}f}")
                       if col.dtype.kind == "f" else col)
    note = ("\n\nDry run: nothing trained. GMACs (multiply-accumulates) by torch.utils.flop_counter; the papers' "
            "\"GFLOPs\" columns count MACs too, with other counters (ResNet-50: 4.089 here, 3.858 in CBAM), so "
            "compare the differences between rows.")
    return render(table, fmt, view, note)


# ---------------------------------------------------------------- the command

def png(fig) -> bytes:
    """A matplotlib figure as PNG bytes, written in one go: a full disk is one error, not a silent half-file."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def write_report(study: str | StudySpec, *, fmt: str = "md", out: str | None = None, by: str | None = None,
                 baseline: str | None = None, plots: str | None = None, storage: str | None = None,
                 tracking_uri: str | None = None, show_all: bool = False, columns: str = "compact",
                 plotter=None, log: bool = False) -> str:
    """STUDY is a study name, a study file or a loaded StudySpec; returns the rendered table (also written to `out`
    when given, and logged on the study's parent run with `log`). With `plotter` (plots.make_plots, which the
    caller imports: matplotlib and Optuna's plots cost seconds a plain report need not pay) the figures are made,
    written to the folder `plots` when given and logged with `log`. Without `log` a report only reads, and reads
    MLflow only where the Optuna study lacks something (results.needs_runs)."""
    if fmt not in FORMATS:
        raise AblateError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    if columns not in COLUMNS:
        raise AblateError(f"--columns: {columns!r} is not one of {', '.join(COLUMNS)}")
    name, spec, tracking_uri = resolve_study(study, tracking_uri)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the plots' in-memory study is not news
    optuna_study = load(name, storage)
    client = stored_runs_client(optuna_study, tracking_uri) if log or needs_runs(optuna_study) else None
    spec = spec or study_file(optuna_study, client)
    table = ablation_table(name, by=by, baseline=baseline, spec=spec, show_all=show_all, study=optuna_study,
                           client=client)
    text = render(table, fmt, columns=columns)
    if out:
        write_output(out, text, "--out")
    figures = plotter(table, optuna_study, trials_frame(optuna_study, client, spec)) if plotter else {}
    if plots:
        for file, fig in figures.items():
            write_output(Path(plots) / file, png(fig), "--plots")
    parent = optuna_study.user_attrs.get(Attr.PARENT_RUN)
    if log and client is not None:
        client.log_text(parent, text, f"report/report.{fmt}")
        for file, fig in figures.items():
            client.log_figure(parent, fig, f"report/plots/{file}")
    return text
