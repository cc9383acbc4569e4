"""The study's plots: every seed of each configuration with its mean and 95% interval, a Pareto front for several
objectives, and Optuna's importances, parallel coordinates and history (of a grid too)."""
from __future__ import annotations

import warnings

import numpy as np
import optuna
import optuna.visualization.matplotlib as ovm
import pandas as pd
from matplotlib.figure import Figure

from ablate import stats
from ablate.formats import AblationTable
from ablate.results import param_columns


def plot_study(study: optuna.Study, frame: pd.DataFrame) -> optuna.Study:
    """The study Optuna's plots read. A grid's trials carry their configuration as user attrs (their Optuna params,
    study/params.py, show it to viewers, but a key may be missing on old trials and ranges differ per edit), so for
    them: an in-memory copy whose finished trials have those params, each key a categorical over the values the
    study took."""
    finished = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if any(t.params and "fixed_params" not in t.system_attrs for t in finished):
        return study  # searched: the trials hold their sampled params (a grid's are queued, and ranges per edit)
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


def make_plots(table: AblationTable, study: optuna.Study, frame: pd.DataFrame | None = None) -> dict[str, Figure]:
    """name -> figure: bar chart with error bars; Pareto front (several objectives); Optuna's importances,
    parallel coordinates and history (of a grid too, given its trials `frame`). The caller's matplotlib
    backend is left alone: the figures are drawn on their own canvases."""
    figures, numbers, per_seed = {}, table.frame, table.per_seed
    fig = Figure(figsize=(max(4, 0.8 * len(numbers) + 2), 3.5), layout="tight")
    ax = fig.subplots()
    for x, row in enumerate(numbers.index):  # every seed a point, its mean a bar with the 95% interval
        values = per_seed[row].dropna() if row in per_seed else pd.Series(dtype=float)
        ax.scatter(x + np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else [x] * len(values), values,
                   s=14, color="tab:gray", alpha=0.7, zorder=2, label="seed" if x == 0 else None)
        if len(values):
            low, high = stats.mean_ci(values)
            err = [[values.mean() - low], [high - values.mean()]] if pd.notna(low) else None
            ax.errorbar(x, values.mean(), yerr=err, fmt="o", color="tab:blue", capsize=5, zorder=3,
                        label="mean, 95% CI" if x == 0 else None)
    ax.set_xticks(range(len(numbers)), numbers.index, rotation=30, ha="right")
    ax.set_ylabel("top-1 acc (%)")  # the axis follows the data: it starts at 0 only if the data does
    ax.legend(fontsize=8)
    figures["top1_by_config.png"] = fig

    if len(study.directions) > 1:
        fig = Figure(figsize=(5, 4), layout="tight")
        ax = fig.subplots()
        ax.scatter(numbers["GMACs"], numbers["top-1 acc (%)"])
        for label, row in numbers.iterrows():
            ax.annotate(str(label), (row["GMACs"], row["top-1 acc (%)"]), fontsize=8)
        front = numbers.sort_values("GMACs")
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
                # too few trials to tell the params apart: the figure shows it (equal bars), the warning adds nothing
                warnings.filterwarnings("ignore", ".*quantiles select the same set of trials.*")
                ax = plot(source, target=target) if target else plot(source)
        except Exception:  # noqa: BLE001 (e.g. importances need several finished trials)
            continue
        figures[f"{name}.png"] = np.ravel(ax)[0].figure
    return figures


