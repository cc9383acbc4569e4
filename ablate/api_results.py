"""The notebook API's results side: a study's results as pandas objects, read as `ablate report` reads them (the
same table, from report.open_report; nothing recomputed here). Torch-free, like the report."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ablate.formats import AblationTable
from ablate.report import open_report


@dataclass(frozen=True)
class StudyResults:
    """One study's results. `.table` is `ablate report`'s table as numbers (one row per configuration: n, mean and
    sd over seeds, params, GMACs, the control `vs`, the delta and its interval, the verdict); `.samples` each seed's
    value of the study metric (rows: seeds, columns: configurations), the samples behind the intervals; `.trials`
    one row per trial (state, label, seed, its dotted params, its final metrics; `in_file` False for a trial of a
    configuration the study file no longer holds, which the table leaves out). `.report` is the whole record
    (baseline, refused configurations, the verdict rule) and `render()` the text `ablate report` prints."""

    name: str
    report: AblationTable
    trials: pd.DataFrame

    @property
    def table(self) -> pd.DataFrame:
        return self.report.frame

    @property
    def samples(self) -> pd.DataFrame:
        return self.report.per_seed

    def render(self, fmt: str = "md", columns: str = "compact") -> str:
        """The report as `ablate report --format FMT --columns COLUMNS` prints it."""
        return self.report.render(fmt, columns)


def load_study(study: str, uri: str | None = None, storage: str | None = None, *, by: str | None = None,
               baseline: str | None = None, show_all: bool = False) -> StudyResults:
    """Study `study` (its name, or its study file) from the stores `ablate run` wrote: `uri` the MLflow tracking URI
    (default sqlite:///mlruns/mlflow.db, or $MLFLOW_TRACKING_URI), `storage` the Optuna storage (default
    mlruns/optuna.journal; postgresql://...). by, baseline and show_all are `ablate report`'s --by, --baseline and
    --all. Reads only: neither store is written."""
    opened = open_report(study, storage=storage, tracking_uri=uri, by=by, baseline=baseline, show_all=show_all)
    return StudyResults(opened.table.study, opened.table, opened.trials())
