"""The study report: one row per configuration, aggregated over seeds, with honest deltas.

  ablation_table(study_name, ...)   Optuna trials + MLflow child runs -> a numeric pandas table
  render(table, fmt)                Markdown (paper-like), CSV, LaTeX (booktabs), HTML, JSON
  make_plots(...)                   bar chart with error bars, Pareto front, Optuna's search plots
  write_report(...)                 all of the above, logged on the study's parent MLflow run

Deltas are top-1 accuracy in percentage points with a 95% t-interval over seeds: paired by seed when both
rows ran the same seeds (the seed fixes data order and init, so pairing removes that noise), Welch otherwise.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ablate.errors import AblateError

FORMATS = ("md", "csv", "latex", "html", "json")
# MLflow metric -> (column, scale): accuracies are logged as fractions, papers print percent
METRIC_COLUMNS = {"val/acc1": ("top-1 acc (%)", 100.0), "val/acc5": ("top-5 acc (%)", 100.0),
                  "model/params": ("params (M)", 1e-6), "model/gmacs": ("GMACs", 1.0),
                  "train/throughput": ("throughput (img/s)", 1.0)}
# a study file's reference keys -> the report's column names
REFERENCE_COLUMNS = {"top1_err": "top-1 err", "top5_err": "top-5 err", "top1_acc": "top-1 acc",
                     "top5_acc": "top-5 acc", "params_m": "params (M)", "gflops": "GMACs", "gmacs": "GMACs"}
DELTA = "Δ top-1"
DELTA_PREV = "Δ prev top-1"


# ---------------------------------------------------------------- reading the study

def open_optuna_study(study_name: str, storage: str | None = None):
    import optuna

    from ablate.study import JOURNAL, journal_file, make_storage

    journal = journal_file(storage)
    if journal and not Path(journal).is_file():  # don't create an empty journal just to find nothing
        raise AblateError(f"unknown study {study_name!r}: no Optuna journal at {journal}")
    try:
        return optuna.load_study(study_name=study_name, storage=make_storage(storage, 1))
    except KeyError:
        from ablate.tracking import mask_password

        raise AblateError(f"unknown study {study_name!r} in {mask_password(storage or JOURNAL)}") from None


def resolve_study(study, tracking_uri: str | None = None):
    """STUDY as the commands take it (a name, a study file or a loaded Study) -> (name, Study or None, uri)."""
    from ablate.study import Study, load_study

    if isinstance(study, Study) or study.endswith((".yaml", ".yml")) or Path(study).is_file():
        loaded = study if isinstance(study, Study) else load_study(study)
        return loaded.name, loaded, tracking_uri or loaded.base.get("tracking", {}).get("uri")
    return study, None, tracking_uri


def study_file(study_obj, tracking_uri: str | None = None):
    """The parsed study file the parent run recorded (reference numbers, ladder), or None if it is gone."""
    from ablate import tracking
    from ablate.study import load_study

    run_id = study_obj.user_attrs.get("mlflow_parent_run_id")
    try:
        path = tracking.make_client(tracking_uri).get_run(run_id).data.params.get("study.file") if run_id else None
        return load_study(path) if path and Path(path).is_file() else None
    except Exception:  # noqa: BLE001 (a moved or edited study file only costs the reference columns)
        return None


def trials_frame(study_obj, tracking_uri: str | None = None) -> pd.DataFrame:
    """One row per trial: state, label, seed, cell params (dotted keys) and final metrics.

    Metrics come from the trial's user attrs, completed from its MLflow child run where missing."""
    from ablate import tracking

    rows = [{"number": t.number, "state": t.state.name, "label": t.user_attrs.get("label", str(t.params)),
             "seed": t.user_attrs.get("seed", t.params.get("seed")), "order": t.params.get("cell", t.number),
             "run_id": t.user_attrs.get("mlflow_run_id"), **t.user_attrs.get("params", {}),
             **t.user_attrs.get("metrics", {})} for t in study_obj.get_trials(deepcopy=False)]
    df = pd.DataFrame(rows)
    parent = study_obj.user_attrs.get("mlflow_parent_run_id")
    if parent and len(df):
        mlflow = tracking.make_client(tracking_uri)
        experiment = mlflow.get_experiment_by_name(study_obj.study_name)
        if experiment is not None:
            children = mlflow.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
            logged = pd.DataFrame([{"run_id": r.info.run_id, **r.data.metrics} for r in children])
            for metric in METRIC_COLUMNS:  # a trial's attrs win; its run fills what they lack
                if len(logged) and metric in logged:
                    known = df[metric] if metric in df else pd.Series(np.nan, index=df.index)
                    df[metric] = known.fillna(df["run_id"].map(logged.set_index("run_id")[metric]))
    for metric in METRIC_COLUMNS:
        df[metric] = pd.to_numeric(df[metric], errors="coerce") if metric in df else np.nan
    return df.sort_values("number").reset_index(drop=True)


# ---------------------------------------------------------------- deltas with confidence intervals

def delta_ci(base: pd.Series, other: pd.Series, level: float = 0.95) -> tuple[float, float, float]:
    """Mean difference other - base and its confidence interval; both Series are indexed by seed."""
    from scipy import stats

    base, other = base.dropna(), other.dropna()
    q = (1 + level) / 2
    if len(base) >= 2 and set(base.index) == set(other.index):  # paired by seed
        diff = other - base.loc[other.index]
        half = stats.t.ppf(q, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff))
        return diff.mean(), diff.mean() - half, diff.mean() + half
    delta = other.mean() - base.mean()
    if len(base) < 2 or len(other) < 2:
        return delta, np.nan, np.nan
    va, vb = base.var(ddof=1) / len(base), other.var(ddof=1) / len(other)
    if va + vb == 0:
        return delta, delta, delta
    dof = (va + vb) ** 2 / (va ** 2 / (len(base) - 1) + vb ** 2 / (len(other) - 1))  # Welch-Satterthwaite
    half = stats.t.ppf(q, dof) * np.sqrt(va + vb)
    return delta, delta - half, delta + half


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
    from ablate.study import MODULE_KEY

    key = MODULE_KEY if key == "attention" else key
    return [c for c in df.columns if c == key] or [c for c in df.columns if c.endswith("." + key)]


def _resolve_by(by, df: pd.DataFrame) -> list[str]:
    keys = []
    for key in ([k.strip() for k in by.split(",")] if isinstance(by, str) else list(by)):
        match = _columns_for(key, df)
        if len(match) != 1:
            varied = ", ".join(_param_keys(df)) or "nothing"
            raise AblateError(f"--by: unknown key {key!r} (the study varies: {varied})")
        keys.append(match[0])
    return keys


def _param_keys(df: pd.DataFrame) -> list[str]:
    fixed = {"number", "state", "label", "seed", "order", "run_id", *METRIC_COLUMNS}
    return [c for c in df.columns if c not in fixed and "/" not in c]


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


def ablation_table(study_name: str, storage: str | None = None, tracking_uri: str | None = None, by=None,
                   baseline: str | None = None, reference: list[dict] | None = None,
                   ladder: bool | None = None, study_obj=None) -> pd.DataFrame:
    """One row per configuration (the cell labels, or the `by` keys), aggregated over seeds.

    reference and ladder default to what the study file recorded on the parent run says; study_obj is the
    Optuna study when the caller has it open already."""
    from ablate.study import MODULE_KEY

    study_obj = study_obj or open_optuna_study(study_name, storage)
    if reference is None or ladder is None:
        loaded = study_file(study_obj, tracking_uri)
        reference = loaded.cfg.reference if reference is None and loaded else (reference or [])
        ladder = bool(loaded and loaded.cfg.study.ladder) if ladder is None else ladder
    df = trials_frame(study_obj, tracking_uri)
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
    if ladder:
        table = table.join(_delta_columns(per_seed, list(zip(rows, [None] + rows[:-1])), DELTA_PREV))
    table.index.name = "config"
    table.attrs.update(baseline=base, study=study_name, ladder=ladder)
    return with_reference(table, done, reference)


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


def dry_run_report(study, fmt: str = "md") -> str:
    """A study file's configurations, our params and GMACs beside the paper's, before anything is trained."""
    from ablate.study import dry_run_table

    if fmt not in FORMATS:
        raise AblateError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    name, loaded, _ = resolve_study(study)
    if loaded is None:
        raise AblateError(f"--dry-run: {study!r} is not a study file (a dry run reads the file, not the store)")
    table = dry_run_table(loaded)
    table = table.drop(columns=[c for c in table if "." in c])  # the cell's dotted keys: the row label says them
    digits = lambda col: 3 if "GMACs" in col else 2  # noqa: E731  (as the papers print them)
    view = table.apply(lambda col: col.map(lambda v: "-" if pd.isna(v) else f"{v:.{digits(col.name)}f}")
                       if col.dtype.kind == "f" else col)
    note = ("\n\nDry run: nothing trained. GMACs by torch.utils.flop_counter; papers' GFLOPs often come from "
            "another counter (ResNet-50: 4.089 here, 3.858 in CBAM), so compare the differences between rows.")
    return render(table, fmt, view, note)


# ---------------------------------------------------------------- plots

def make_plots(table: pd.DataFrame, study_obj, out_dir: Path) -> list[Path]:
    """Bar chart with error bars; Pareto front (multi-objective); Optuna's plots (searched studies)."""
    import matplotlib

    matplotlib.use("Agg")
    import warnings

    import matplotlib.pyplot as plt
    import optuna
    import optuna.visualization.matplotlib as ovm

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=120)
        plt.close(fig)
        paths.append(out_dir / name)

    fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(table) + 2), 3.5))
    ax.bar(range(len(table)), table["top-1 acc (%)"], yerr=table["top-1 acc (%) sd"].fillna(0), capsize=4)
    ax.set_xticks(range(len(table)), table.index, rotation=30, ha="right")
    ax.set_ylabel("top-1 acc (%) (mean ± sd over seeds)")
    save(fig, "top1_by_config.png")

    if len(study_obj.directions) > 1:
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.scatter(table["GMACs"], table["top-1 acc (%)"])
        for label, row in table.iterrows():
            ax.annotate(str(label), (row["GMACs"], row["top-1 acc (%)"]), fontsize=8)
        front = table.sort_values("GMACs")
        front = front[front["top-1 acc (%)"] >= front["top-1 acc (%)"].cummax()]  # nothing cheaper is better
        ax.plot(front["GMACs"], front["top-1 acc (%)"], "r--", label="Pareto front")
        ax.set_xlabel("GMACs")
        ax.set_ylabel("top-1 acc (%)")
        ax.legend()
        save(fig, "pareto.png")

    if "cell" not in study_obj.best_trials[0].params:  # searched, not a grid
        target = (lambda t: t.values[0]) if len(study_obj.directions) > 1 else None
        for name, plot in (("param_importances", ovm.plot_param_importances),
                           ("parallel_coordinate", ovm.plot_parallel_coordinate),
                           ("optimization_history", ovm.plot_optimization_history)):
            try:
                with warnings.catch_warnings():  # Optuna marks its matplotlib plots experimental
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    ax = plot(study_obj, target=target) if target else plot(study_obj)
            except Exception:  # noqa: BLE001 (e.g. importances need several finished trials)
                continue
            save(np.ravel(ax)[0].figure, f"{name}.png")
    return paths


# ---------------------------------------------------------------- the command

def write_report(study, fmt: str = "md", out: str | None = None, by: str | None = None,
                 baseline: str | None = None, plots: str | None = None, storage: str | None = None,
                 tracking_uri: str | None = None) -> str:
    """STUDY is a study name, a study file or a loaded Study; returns the rendered table, logged on the parent run."""
    import tempfile

    from ablate import tracking

    if fmt not in FORMATS:
        raise AblateError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    study, loaded, tracking_uri = resolve_study(study, tracking_uri)
    reference, ladder = (loaded.cfg.reference, loaded.cfg.study.ladder) if loaded else (None, None)
    study_obj = open_optuna_study(study, storage)
    table = ablation_table(study, storage, tracking_uri, by, baseline, reference, ladder, study_obj)
    text = render(table, fmt)
    if out:
        Path(out).write_text(text)
    parent = study_obj.user_attrs.get("mlflow_parent_run_id")
    mlflow = tracking.make_client(tracking_uri) if parent else None
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_plots(table, study_obj, Path(plots or tmp))
        if mlflow:
            mlflow.log_text(parent, text, f"report/report.{fmt}")
            for path in paths:
                mlflow.log_artifact(parent, str(path), "report/plots")
    return text
