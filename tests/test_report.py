"""The report on a tiny real study (run once per module): table, deltas, formats, reference, ladder, errors, UI."""
import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from helpers import TINY_BASE, ablate, load, start

from ablate.errors import AblateError
from ablate.formats import COLUMNS, FORMATS, AblationTable, compact, footnote
from ablate.replication import ASSUMED_SD, prediction_interval
from ablate.report import ablation_table, dry_run_report
from ablate.spec import cell_label, load_study
from ablate.stats import delta_ci, mean_ci
from ablate.storage import make_storage

REFERENCE = [{"match": {"model.attention.name": "none"}, "params_m": 25.56, "top1_err": 24.56},
             {"match": {"model.attention.name": "se"}, "params_m": 28.09, "top1_err": 23.14}]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A grid study none / se x seeds 0,1,2 and a two-row ladder, run for real in one folder."""
    folder = tmp_path_factory.mktemp("report")
    study = folder / "tiny.yaml"
    study.write_text(yaml.safe_dump({"study": {"name": "tiny", "seeds": [0, 1, 2]}, "base": TINY_BASE,
                                     "space": {"model.attention.name": ["none", "se"]}, "reference": REFERENCE}))
    ladder = folder / "ladder.yaml"
    ladder.write_text(yaml.safe_dump({"study": {"name": "ladder", "seeds": [0, 1], "ladder": True}, "base": TINY_BASE,
                                      "cells": [{"name": "baseline"}, {"name": "+ se", "model.attention.name": "se"}]}))
    proc = ablate("run", str(study), cwd=folder)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ran_ladder = ablate("run", str(ladder), cwd=folder)
    assert ran_ladder.returncode == 0, ran_ladder.stderr[-2000:]
    return {"folder": folder, "study": study, "ladder": ladder, "run_stdout": proc.stdout,
            "storage": str(folder / "mlruns" / "optuna.journal"), "uri": f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"}


def record(tiny, name="tiny", **kwargs) -> AblationTable:
    return ablation_table(name, storage=tiny["storage"], tracking_uri=tiny["uri"], **kwargs)


def table(tiny, name="tiny", **kwargs) -> pd.DataFrame:
    return record(tiny, name, **kwargs).frame


def plotted(frame: pd.DataFrame) -> AblationTable:
    """A report of `frame` as the plots read it: no per-seed samples."""
    return AblationTable(frame=frame, study="plotted", baseline=frame.index[0], ladder=False,
                         per_seed=pd.DataFrame(), refused={}, hidden=0, classes=None)


def test_run_prints_the_markdown_report(tiny):
    out = tiny["run_stdout"]
    assert "| config" in out and "attention=none" in out and "attention=se" in out and "(baseline)" in out


def test_rows_are_configurations_aggregated_over_seeds(tiny):
    df = table(tiny)
    assert list(df.index) == ["attention=none", "attention=se"]
    assert df["n"].tolist() == [3, 3] and df["pruned"].tolist() == [0, 0] and df["failed"].tolist() == [0, 0]
    trials = [t for t in load("tiny", tiny["storage"]).trials if t.user_attrs["label"] == "attention=se"]
    top1 = pd.Series([100 * t.user_attrs["metrics"]["val/acc1"] for t in trials])
    assert df.loc["attention=se", "top-1 acc (%)"] == pytest.approx(top1.mean())
    assert df.loc["attention=se", "top-1 acc (%) sd"] == pytest.approx(top1.std())
    assert df.loc["attention=se", "top-1 err (%)"] == pytest.approx(100 - top1.mean())
    assert df["top-5 acc (%)"].notna().all() and (df["throughput (img/s)"] > 0).all()


def test_params_and_gmacs_are_what_the_model_builder_gives(tiny):
    from ablate.data import dataset_shape
    from ablate.models import build_model
    from ablate.spec import load_study, trial_config

    df = table(tiny)
    study = load_study(tiny["study"])
    for name in ("none", "se"):
        cfg = trial_config(study, {"model.attention.name": name}, 0)
        built = build_model(cfg.model, *dataset_shape(cfg.data), cfg.data.image_size)
        assert df.loc[f"attention={name}", "params (M)"] == pytest.approx(built.params / 1e6)
        assert df.loc[f"attention={name}", "GMACs"] == pytest.approx(built.gmacs)


def test_delta_against_the_none_row_with_a_paired_interval(tiny):
    report = record(tiny)
    df = report.frame
    assert report.baseline == "attention=none" and df.loc["attention=none", "Δ top-1"] == 0
    d = df.loc["attention=se"]
    assert d["Δ top-1"] == pytest.approx(d["top-1 acc (%)"] - df.loc["attention=none", "top-1 acc (%)"])
    assert d["Δ top-1 lo"] <= d["Δ top-1"] <= d["Δ top-1 hi"]
    assert d["Δ top-1 sig"] == bool(d["Δ top-1 lo"] > 0 or d["Δ top-1 hi"] < 0)
    flipped = table(tiny, baseline="attention=se")
    assert flipped.loc["attention=none", "Δ top-1"] == pytest.approx(-d["Δ top-1"])


def test_delta_interval_is_paired_by_seed_else_welch():
    from scipy import stats

    base = pd.Series([70.0, 72.0, 74.0], index=[0, 1, 2])
    d, lo, hi = delta_ci(base, base + pd.Series([1.9, 2.0, 2.1], index=[0, 1, 2]))
    assert d == pytest.approx(2.0) and hi - d == pytest.approx(stats.t.ppf(0.975, 2) * 0.1 / 3 ** 0.5)
    assert lo > 0  # paired: the seed-to-seed spread of 2 points cancels out
    d, lo, hi = delta_ci(base, pd.Series([72.0, 74.0, 76.0], index=[3, 4, 5]))  # no shared seeds: Welch
    assert d == pytest.approx(2.0) and lo < 0 < hi


@pytest.mark.parametrize("n, m", [(2, 2), (3, 3), (5, 3), (10, 4)])
def test_intervals_are_scipy_stats_own(n, m):
    """stats writes SciPy's intervals as formulas (scipy.stats costs a second of import): they must stay SciPy's."""
    from scipy import stats

    rng = np.random.default_rng(n * m)
    base = pd.Series(rng.normal(70, 2, n))
    paired = base + rng.normal(1, 0.5, n)
    _, lo, hi = delta_ci(base, paired)
    ci = stats.ttest_rel(paired, base).confidence_interval(0.95)
    assert (lo, hi) == pytest.approx((ci.low, ci.high))
    other = pd.Series(rng.normal(72, 4, m), index=range(100, 100 + m))  # other seeds: Welch
    _, lo, hi = delta_ci(base, other)
    ci = stats.ttest_ind(other, base, equal_var=False).confidence_interval(0.95)
    assert (lo, hi) == pytest.approx((ci.low, ci.high))
    assert mean_ci(other) == pytest.approx(stats.t.interval(0.95, m - 1, loc=other.mean(), scale=stats.sem(other)))


def test_by_key_groups_rows_and_unknown_by_key_exits_2(tiny):
    df = table(tiny, by="attention")
    assert list(df.index) == ["none", "se"] and df["n"].tolist() == [3, 3]
    proc = ablate("report", "tiny", "--by", "model.depth", cwd=tiny["folder"])
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "--by: unknown key" in proc.stderr


def test_csv_and_json_round_trip(tiny, tmp_path):
    df = table(tiny)
    out = tmp_path / "report.csv"
    proc = ablate("report", str(tiny["study"]), "--format", "csv", "--out", str(out), cwd=tiny["folder"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    back = pd.read_csv(out, index_col="config")
    assert list(back.index) == list(df.index) and back["n"].tolist() == [3, 3]
    for col in ("top-1 acc (%)", "params (M)", "GMACs", "Δ top-1"):
        assert back[col].tolist() == pytest.approx(df[col].tolist())
    proc = ablate("report", "tiny", "--format", "json", cwd=tiny["folder"])
    rows = json.loads(proc.stdout)
    assert [r["config"] for r in rows] == list(df.index)


def test_latex_is_booktabs_with_the_rows(tiny):
    proc = ablate("report", "tiny", "--format", "latex", cwd=tiny["folder"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    tex = proc.stdout
    assert all(rule in tex for rule in (r"\toprule", r"\midrule", r"\bottomrule"))
    df = table(tiny)
    for label, row in df.iterrows():
        line = next(line for line in tex.splitlines() if line.startswith(label))
        assert f"{row['top-1 acc (%)']:.2f} $\\pm$ {row['top-1 acc (%) sd']:.2f}" in line
        assert f"{row['params (M)']:.3f}" in line


def test_html_and_markdown_formats(tiny):
    html = ablate("report", "tiny", "--format", "html", cwd=tiny["folder"]).stdout
    assert "<table" in html and "attention=se" in html
    # a page a browser shows as it is: the reproduction table and the footnote too, as Markdown prints them
    assert html.startswith("<!DOCTYPE html>") and "<h3>Against the paper</h3>" in html and "95% CI over seeds" in html
    out = ablate("report", "tiny", cwd=tiny["folder"]).stdout
    ours, against = out.split("\nAgainst the paper:")  # the study has references: the reproduction table follows
    md = ours.splitlines()
    assert len({len(line) for line in md if line.startswith("|")}) == 1  # aligned
    assert len({len(line) for line in against.splitlines() if line.startswith("|")}) == 1
    # the delta cell: the table's numbers as text, "d [lo, hi]" in points, * when the interval excludes 0
    cells = {row[0]: row for row in ([c.strip() for c in line.strip("|").split("|")] for line in md
                                     if line.startswith("|"))}
    assert list(cells["config"]) == ["config", "params (M)", "GMACs", "step time ×", "peak mem (MB)", "top-1 acc (%)",
                                     "seeds n / pruned / failed",
                                     "Δ top-1 (95% CI)", "verdict"]  # compact: what a paper prints (top-5 is ~100%
    # on 10 classes), and what became of every seed
    assert cells["attention=se"][cells["config"].index("seeds n / pruned / failed")] == "3 / 0 / 0"
    column = cells["config"].index("Δ top-1 (95% CI)")
    se = table(tiny).loc["attention=se"]
    d, lo, hi = se["Δ top-1"], se["Δ top-1 lo"], se["Δ top-1 hi"]
    assert cells["attention=se"][column] == f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}]" + ("*" if lo > 0 or hi < 0 else "")
    assert cells["attention=none"][column] == "(baseline)"


def test_reference_columns_stand_beside_ours(tiny):
    df = table(tiny)  # the reference comes from the study file the parent run recorded
    assert df.loc["attention=none", "paper params (M)"] == 25.56
    assert df.loc["attention=se", "paper top-1 err"] == 23.14
    assert df["ours params (M)"].tolist() == df["params (M)"].tolist()
    assert df["ours top-1 err"].tolist() == df["top-1 err (%)"].tolist()
    wide = ablate("report", "tiny", "--columns", "all", cwd=tiny["folder"]).stdout
    header = wide.splitlines()[0]
    assert header.index("paper params (M)") < header.index("ours params (M)")
    assert "25.56" in wide and "28.09" in wide


def test_verdicts_judge_our_numbers_against_the_papers(tiny):
    df = table(tiny)
    se = df.loc["attention=se"]
    # params: ours are resnet10_narrow's, the paper's ResNet-50's: no match, and the report says so
    assert not df["params match"].any()
    assert se["paper Δ top-1"] == pytest.approx(24.56 - 23.14)  # top-1 err 24.56 -> 23.14: +1.42 points
    # the paper's +1.42 against the prediction interval of our interval and two rows at the assumed sd
    lo, hi = prediction_interval(se["Δ top-1 lo"], se["Δ top-1 hi"], ASSUMED_SD * 2 ** 0.5)
    expected = ("contradicted" if not lo <= 1.42 <= hi else "reproduced" if se["Δ top-1 lo"] > 0 else
                "inconclusive")
    assert se["effect"] == expected
    against = ablate("report", "tiny", cwd=tiny["folder"]).stdout.split("Against the paper:")[1]
    row = next(line for line in against.splitlines() if line.startswith("| attention=se"))
    assert "1.26 / 28.09" in row and "| no " in row and f"{se['Δ top-1']:+.2f} / +1.42" in row and expected in row


IMAGENET = {"match": {}, "dataset": "ImageNet-1K", "backbone": "ResNet-50", "image_size": 224, "epochs": 90}
OURS = {"match": {}, "dataset": "synthetic", "backbone": "resnet10_narrow", "image_size": 16, "epochs": 1}


@pytest.mark.parametrize("setup, note", [(IMAGENET, "different: dataset, backbone, image_size, epochs"),
                                         (OURS, "same"), ({**OURS, "epochs": 100}, "different: epochs")])
def test_the_paper_is_judged_only_on_the_setup_it_measured(tiny, setup, note):
    """Reference rows that state their setup: params and GMACs are matched only on the paper's backbone and image
    size, the paper's effect judged only where the whole setup is ours; elsewhere one column says what differs."""
    spec = load_study(tiny["study"])
    spec.cfg.reference = [setup, *REFERENCE]
    report = record(tiny, spec=spec)
    df = report.frame
    assert df["setup"].tolist() == [note, note]
    size_differs = note.startswith("different") and "backbone" in note
    assert df["params match"].isna().all() == size_differs
    se = df.loc["attention=se"]
    assert (se["effect"] in ("reproduced", "contradicted", "inconclusive")) == (note == "same")
    if note != "same":  # no effect judged: not "contradicted", and the reproduction table says why
        assert pd.isna(se["paper Δ top-1"]) and se["effect"] == "-"
    against = report.render("md").split("Against the paper:")[1]
    assert f"| {note}" in next(line for line in against.splitlines() if line.startswith("| attention=se"))


def test_every_format_writes_every_view_and_an_unknown_one_says_what_is_allowed(tiny):
    report = record(tiny)
    for fmt in FORMATS:
        for columns in COLUMNS:
            assert "attention=se" in report.render(fmt, columns)
    with pytest.raises(AblateError, match=r"^--format: 'pdf' is not one of md, csv, latex, html, json$"):
        report.render("pdf")
    with pytest.raises(AblateError, match=r"^--columns: 'wide' is not one of compact, all$"):
        report.render("md", "wide")


def test_the_footnote_says_what_the_table_leaves_out(tiny):
    report = replace(record(tiny), hidden=3, refused={"attention=cbam": "params_m 1.26 > max 1.25"})
    note = footnote(report, "compact", reproduction=False)
    assert "vs `attention=none`" in note and "Reproduction" not in note and note.endswith("--columns all.")
    assert " 3 finished trials of configurations the study file no longer holds are left out" in note
    assert "Refused by study.constraints before training: attention=cbam (params_m 1.26 > max 1.25)." in note
    assert "the row before" in footnote(replace(report, ladder=True), "all", reproduction=True)


def test_ladder_report_has_a_delta_to_the_previous_row(tiny):
    df = table(tiny, name="ladder")
    assert list(df.index) == ["baseline", "+ se"] and df["n"].tolist() == [2, 2]
    assert pd.isna(df.loc["baseline", "Δ prev top-1"])
    assert df.loc["+ se", "Δ prev top-1"] == pytest.approx(
        df.loc["+ se", "top-1 acc (%)"] - df.loc["baseline", "top-1 acc (%)"])
    assert "Δ prev top-1" in ablate("report", str(tiny["ladder"]), cwd=tiny["folder"]).stdout
    assert "Δ prev top-1" not in table(tiny).columns


def test_dry_run_report_puts_the_papers_params_beside_ours_without_data(tmp_path):
    """The CBAM paper's ImageNet table: 9 models, our params equal the paper's to its 2 decimals."""
    study = Path(__file__).resolve().parent.parent / "studies" / "imagenet_cbam_table.yaml"
    proc = ablate("report", str(study), "--dry-run", "--format", "csv", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    df = pd.read_csv(io.StringIO(proc.stdout), index_col="config")
    assert len(df) == 9 and df["paper params (M)"].notna().all()
    assert (df["ours params (M)"].round(2) == df["paper params (M)"]).all()
    assert "paper top-1 err" in df and not (tmp_path / "mlruns").exists()  # read the file, touched no store
    # the markdown of the same table, priced from the costs just printed (building 9 ResNet-50s again costs 25 s)
    costs = {label: {"params_m": row["ours params (M)"], "gmacs": row["ours GMACs"]} for label, row in df.iterrows()}
    md = dry_run_report(str(study), lambda spec, params: costs[cell_label(params)])
    assert "| backbone=resnet50, attention=cbam" in md and "28.09" in md


def test_unknown_study_and_no_finished_trials_exit_2(tiny, tmp_path):
    proc = ablate("report", "nosuch", cwd=tiny["folder"])
    assert proc.returncode == 2 and "unknown study 'nosuch'" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    journal = str(tmp_path / "failed.journal")
    failed = optuna.create_study(study_name="failed", storage=make_storage(journal, 1))
    failed.tell(failed.ask(), state=optuna.trial.TrialState.FAIL)
    proc = ablate("report", "failed", "--storage", journal, cwd=tmp_path)
    assert proc.returncode == 2 and "no finished trials" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_report_and_plots_are_logged_on_the_parent_run_with_log(tiny, tmp_path):
    plots = tmp_path / "plots"
    proc = ablate("report", "tiny", "--plots", str(plots), "--log", cwd=tiny["folder"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (plots / "top1_by_config.png").stat().st_size > 0
    client = mlflow.MlflowClient(tiny["uri"])
    parent = load("tiny", tiny["storage"]).user_attrs["mlflow_parent_run_id"]
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert "report/report.md" in logged
    assert "report/plots/top1_by_config.png" in {a.path for a in client.list_artifacts(parent, "report/plots")}
    text = Path(client.download_artifacts(parent, "report/report.md", str(tmp_path))).read_text()
    assert "attention=se" in text
    # the landing page `ablate ui` opens: the same table, with the figure (the same PNG) inside it
    page = Path(client.download_artifacts(parent, "report/index.html", str(tmp_path))).read_text()
    figure = base64.b64encode((plots / "top1_by_config.png").read_bytes()).decode()
    assert "attention=se" in page and f'src="data:image/png;base64,{figure}"' in page


def test_searched_study_gets_optunas_plots(tmp_path):
    """Optuna's own plots of a searched study; a stored study with fake trials stands in for a real run."""
    from ablate.plots import make_plots

    study = optuna.create_study(study_name="searched", direction="maximize")
    for i in range(6):
        study.add_trial(optuna.trial.create_trial(params={"lr": 0.01 * (i + 1)}, value=0.5 + 0.01 * i,
                        distributions={"lr": optuna.distributions.FloatDistribution(0.001, 1.0)}))
    df = pd.DataFrame({"top-1 acc (%)": [50.0, 55.0], "top-1 acc (%) sd": [1.0, 2.0], "GMACs": [0.1, 0.2]},
                      index=["a", "b"])
    names = set(make_plots(plotted(df), study))
    assert {"top1_by_config.png", "optimization_history.png", "parallel_coordinate.png",
            "param_importances.png"} <= names


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ui_serves_the_parent_and_every_child(tiny, tmp_path):
    """`ablate ui STUDY`: the link it prints opens the study's configuration runs in a real browser, and SIGTERM to
    the command ends the MLflow server's whole process tree."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "ui.log"  # a file, not a pipe: nobody reads while the server runs
    # its own session: the MLflow server's worker processes are stopped with it
    with open(log, "w") as out:
        ui = start("ui", "tiny", "--port", port, cwd=tiny["folder"], stdout=out, stderr=subprocess.STDOUT,
                   start_new_session=True)
    try:
        wait = 300  # generous: the MLflow server starts slowly on a busy machine, but a silent skip hid failures
        deadline = time.time() + wait
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=5)
                break
            except OSError:
                if ui.poll() is not None:
                    pytest.fail(f"`ablate ui` exited with code {ui.returncode} before answering on port {port}:\n"
                                f"{log.read_text()[-3000:]}")
                if time.time() > deadline:
                    pytest.fail(f"`ablate ui` did not answer on port {port} within {wait} s:\n"
                                f"{log.read_text()[-3000:]}")
                time.sleep(2)
        experiment = mlflow.MlflowClient(tiny["uri"]).get_experiment_by_name("tiny")
        body = json.dumps({"experiment_ids": [experiment.experiment_id], "max_results": 1000}).encode()
        request = urllib.request.Request(f"{url}/api/2.0/mlflow/runs/search", data=body,
                                         headers={"Content-Type": "application/json"}, method="POST")
        runs = json.load(io.TextIOWrapper(urllib.request.urlopen(request, timeout=30)))["runs"]
        ids = {r["info"]["run_id"] for r in runs}
        study = load("tiny", tiny["storage"])
        parent = study.user_attrs["mlflow_parent_run_id"]
        assert parent in ids
        children = {t.user_attrs["mlflow_run_id"] for t in study.trials}
        assert len(children) == 6 and children <= ids
        tags = {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs}
        for run in children:  # a trial's run is a child of its configuration's run, a child of the study's
            configuration = tags[run]["mlflow.parentRunId"]
            assert tags[configuration]["ablate.role"] == "configuration"
            assert tags[configuration]["mlflow.parentRunId"] == parent
        printed = log.read_text().splitlines()
        landing = next(line.split(": ", 1)[1] for line in printed if line.startswith("tiny: "))
        link = next(line.split(": ", 1)[1] for line in printed if line.startswith("  configuration runs: "))
        # the study has ended: the link opens its parent run's report page
        assert landing == (f"{url}/#/experiments/{experiment.experiment_id}/runs/{parent}/artifacts/report/index.html"
                           "?workflowType=machine_learning")
        assert link.startswith(f"{url}/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning")
        browse(landing, link, tiny)
        # the MLflow server runs in a session of its own (its workers are one process group): ui's child leads it
        server = int(Path(f"/proc/{ui.pid}/task/{ui.pid}/children").read_text().split()[0])
        ui.send_signal(signal.SIGTERM)  # what a service manager, `timeout` or `kill` sends to the command alone
        assert ui.wait(timeout=60) == 0
        with pytest.raises(ProcessLookupError):  # not one of the server's worker processes is left
            deadline = time.time() + 20
            while time.time() < deadline:
                os.killpg(server, 0)
                time.sleep(0.5)
        with pytest.raises(OSError):
            urllib.request.urlopen(f"{url}/health", timeout=5)
    finally:
        if ui.poll() is None:  # a failed check: SIGTERM, so that ablate ends the server's tree too
            ui.send_signal(signal.SIGTERM)
            try:
                ui.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(ui.pid, signal.SIGKILL)
                ui.wait()


CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def screenshot_path(name: str) -> Path:
    """Where a test keeps a screenshot for a person to look at: $ABLATE_TEST_ARTIFACTS, else tests/artifacts/."""
    folder = Path(os.environ.get("ABLATE_TEST_ARTIFACTS") or Path(__file__).parent / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def browse(landing: str, link: str, tiny) -> None:
    """Headless Chromium, as a researcher clicks: the landing link shows the report (every configuration's mean ±
    sd, n, delta with its interval, verdict) and its figure without a click; the runs link lists one run per
    configuration, best mean first; a configuration's page shows its numbers and its seed runs."""
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no headless browser: .ci/run installs Debian's chromium and chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the test extra")
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    flags = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1600,1000")
    for arg in flags:
        options.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    try:
        # the UI re-renders as its data arrives: an element read a moment too early is looked up again
        wait = WebDriverWait(driver, 120, ignored_exceptions=(StaleElementReferenceException,))
        driver.get(landing)
        # MLflow shows an HTML artifact in a sandboxed iframe: the report is read from inside it, as it is shown
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "iframe.mlflow-html-iframe"))
        driver.switch_to.frame(driver.find_element(By.CSS_SELECTOR, "iframe.mlflow-html-iframe"))
        shown = wait.until(lambda d: {r.find_element(By.TAG_NAME, "th").text: [c.text for c in r.find_elements(
            By.TAG_NAME, "td")] for r in d.find_elements(By.CSS_SELECTOR, "table:first-of-type tbody tr")} or None)
        view = compact(record(tiny))  # the report's own strings: nothing on the page is computed again
        assert shown == {label: list(row) for label, row in view.iterrows()}
        headers = [h.text for h in driver.find_elements(By.CSS_SELECTOR, "table:first-of-type thead th")]
        assert {"top-1 acc (%)", "seeds n / pruned / failed", "Δ top-1 (95% CI)", "verdict"} <= set(headers)
        assert any("(n 3)" in cell for row in shown.values() for cell in row)  # mean ± sd (n) as a reader sees it
        figure = driver.find_element(By.TAG_NAME, "img")
        assert driver.execute_script("return arguments[0].naturalWidth", figure) > 100  # the figure drawn, not broken
        driver.switch_to.default_content()
        shot = screenshot_path("mlflow_landing_tiny.png")
        assert driver.save_screenshot(str(shot))
        print(f"landing page screenshot: {shot}")

        driver.get(link)
        rows = lambda d: [a.text for a in d.find_elements(By.CSS_SELECTOR, "a") if a.text in ("none", "se")]  # noqa: E731
        names = wait.until(lambda d: rows(d) if len(rows(d)) == 2 else None)
        means = table(tiny)["top-1 acc (%)"]
        if means["attention=none"] != means["attention=se"]:  # ranked by mean over seeds (a tie: either way)
            assert names == sorted(["none", "se"], key=lambda n: -means[f"attention={n}"])
        assert "2 matching runs" in driver.find_element(By.TAG_NAME, "body").text  # configurations only
        wait.until(lambda d: [a.click() for a in d.find_elements(By.CSS_SELECTOR, "a") if a.text == "se"][:1])
        page = wait.until(lambda d: d.find_element(By.TAG_NAME, "body").text if "se · seed 2" in d.find_element(
            By.TAG_NAME, "body").text else None)
        for shown in ("val/acc1/mean", "val/acc1/sd", "val/acc1/delta_low", "val/acc1/delta_high", "seeds",
                      "ablate.verdict", "se · seed 0", "se · seed 1"):
            assert shown in page, shown
        assert f"{means['attention=se'] / 100:.4f}"[:5] in page  # the mean the report gives, as the run holds it
    finally:
        driver.quit()


def test_multi_objective_study_gets_a_pareto_plot(tmp_path):
    from ablate.plots import make_plots

    study = optuna.create_study(study_name="pareto", directions=["maximize", "minimize"])
    for i in range(2):  # grid trials: their configuration is in user attrs, not in Optuna's params
        study.add_trial(optuna.trial.create_trial(values=[0.5 + 0.1 * i, 0.1 + 0.1 * i]))
    df = pd.DataFrame({"top-1 acc (%)": [50.0, 60.0], "top-1 acc (%) sd": [1.0, 2.0], "GMACs": [0.1, 0.2]},
                      index=["attention=none", "attention=se"])
    assert set(make_plots(plotted(df), study)) == {"top1_by_config.png", "pareto.png"}
    frame = pd.DataFrame({"number": [0, 1], "state": "COMPLETE", "model.attention.name": ["none", "se"]})
    assert "parallel_coordinate.png" in make_plots(plotted(df), study, frame)  # given the trials: Optuna's plots too
