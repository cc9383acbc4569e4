"""MLflow: where the store lives, one experiment per study, runs that always end, batched logging.

Plain functions over MLflow's own `MlflowClient` (no fluent API: its global active-run stack does not
suit several trials in one process). A trial's run is a context manager, so an exception passing
through ends it FAILED (reason in the `reason` tag) or KILLED, never RUNNING.
"""
from __future__ import annotations

import os
import re
import socket
import time
import traceback
import urllib.parse
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Iterator, Mapping
from urllib.parse import urlsplit

import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.utils.credentials import read_mlflow_creds
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from ablate.errors import AblateError, at, describe, one_line, os_reason, path_kind, shown

HOME = "mlruns"  # the project's tracking home, relative to the working directory
MAX_REASON = 4000  # well under MLflow's tag-value limit
LANDING = "report/index.html"  # a study's parent run: its report, footnote and figures on one page (report.py)


class Tag:
    """Every MLflow tag name ablate writes or searches, defined once (as storage.Attr does for Optuna's user attrs,
    and MLflow's own mlflow.utils.mlflow_tags for its tags)."""

    # a study's runs
    STUDY = "optuna.study"  # every run of a study: the study's name
    TRIAL = "optuna.trial"  # a trial's run: its Optuna trial number
    ROLE = "ablate.role"  # 'study' (the parent), 'configuration' (one per cell), 'trial' (one seed)
    CELL = "ablate.cell"  # a trial's and a configuration's run: the cell's label
    SEED = "ablate.seed"  # a trial's run: its seed
    CELL_DIGEST = "ablate.cell_digest"  # a configuration run's cell (cell keys are JSON: a digest searches simply)
    # a configuration run: its result over seeds (study.ConfigurationRuns), and the study's parent run the best one
    RESULT = "ablate.result"
    VERDICT = "ablate.verdict"
    DELTA = "ablate.delta"
    REFUSED = "ablate.refused"
    EFFECT = "ablate.effect"  # the paper's effect against our interval: reproduced / contradicted / inconclusive
    STAGE = "ablate.stage"  # a searched study's configuration: 'confirmed' (fresh seeds) or 'search' (selection only)
    SUMMARY = "ablate.summary"
    BEST_CONFIGURATION = "ablate.best_configuration"
    REASON = "reason"  # a FAILED or KILLED run: why, in one line
    RESUMED_AT_EPOCH = "ablate.resumed_at_epoch"  # a resumed trial's run: the epoch training continued in
    RESUMED_FROM_RUN = "ablate.resumed_from_run"  # ... and the run of the trial whose checkpoint it continued
    RESUMED_BY = "ablate.resumed_by"  # a stopped trial's run: the run that continued it
    # MLflow's own
    PARENT_RUN = MLFLOW_PARENT_RUN_ID  # how MLflow (and its UI) nests a child run
    NOTE = MLFLOW_RUN_NOTE  # the run's description in the UI
    # a study's experiment
    OBJECTIVE = "ablate.objective"  # 'val/acc1 maximize', what its links rank by
    EXPERIMENT_KIND = "mlflow.experimentKind"


# MLflow 3's UI opens an experiment without this tag in its GenAI view (traces, judges); ours are model training
EXPERIMENT_KIND = {Tag.EXPERIMENT_KIND: "custom_model_development"}
TRAINING_VIEW = "workflowType=machine_learning"  # the UI's pages in its model-training view (a URL's query)
# stopped on purpose (Ctrl-C, sys.exit, and what the caller adds: a pruned trial): KILLED; anything else: FAILED
KILLED_BY = (KeyboardInterrupt, SystemExit)

_URL_PASSWORD = re.compile(r"(?<=://)([^:/@\s]*):[^@\s/]+@")  # user:password@ inside any text


def store_uri(uri: str | None = None) -> str:
    """Explicit uri, else $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlruns/mlflow.db; nothing is created.

    Never the old ./mlruns file store: MLflow 3 refuses to start on it.
    """
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd().resolve() / HOME / 'mlflow.db'}"


def home(uri: str | None = None) -> Path:
    """The folder ablate keeps its own files in (checkpoints, launched jobs' logs): beside a SQLite store, else the
    project's mlruns/ (a server's store is elsewhere); nothing is created."""
    uri = store_uri(uri)
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).resolve().parent
    return Path.cwd().resolve() / HOME


def resolve_uri(uri: str | None = None) -> str:
    """store_uri, with the folder of a SQLite store created."""
    uri = store_uri(uri)
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)  # SQLite creates the file but not its folder
        except OSError as e:
            raise AblateError(f"tracking.uri: cannot create {folder} for {uri} ({type(e).__name__}: "
                              f"{e.strerror or e})") from None
    return uri


def artifact_root(uri: str) -> str | None:
    """Artifacts sit beside a SQLite store (<cwd>/mlruns/artifacts by default), in mlruns/ for other databases;
    None for a tracking server, which owns its artifact root."""
    if uri.startswith(("http://", "https://", "databricks")):
        return None
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).resolve().parent.joinpath("artifacts").as_uri()
    return (Path.cwd().resolve() / HOME / "artifacts").as_uri()


# a database server's port when its URL names none: probed like a tracking server's
DEFAULT_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "mysql": 3306, "mssql": 1433}


def probe_store(uri: str) -> None:
    """Fail in seconds with one line, and leave nothing behind, where MLflow would retry for minutes or write into
    the wrong file: a server or database that refuses connections, an SQLite file that is not MLflow's database,
    cannot be written or cannot be created, MLflow's retired file store."""
    parts = urlsplit(uri)
    scheme = parts.scheme.split("+")[0]  # postgresql+psycopg: the dialect, then the driver
    if scheme in ("", "file") and not uri.startswith("databricks"):
        raise AblateError(f"tracking.uri: {shown(uri)} is MLflow's file store, which MLflow 3 retired; give "
                          "sqlite:///PATH/mlflow.db, a database URL or http://HOST:PORT")
    if scheme in DEFAULT_PORTS and parts.hostname:
        try:
            socket.create_connection((parts.hostname, parts.port or DEFAULT_PORTS[scheme]), timeout=5).close()
        except (OSError, ValueError) as e:
            what = "tracking server" if scheme.startswith("http") else "database server"
            raise AblateError(f"tracking.uri: no {what} answers at {mask_secrets(uri)} "
                              f"({type(e).__name__}: {getattr(e, 'strerror', None) or e})") from None
        if scheme.startswith("http"):  # a database has no accounts of MLflow's: only a server asks who we are
            check_credentials(uri)
    elif uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        with at("tracking.uri"):
            kind = path_kind(path)  # a name too long, a loop of links: said as such
        if kind is None:
            return _probe_creatable(path, uri)
        if kind != "file":
            what = "a folder" if kind == "folder" else "not a regular file"
            raise AblateError(f"tracking.uri: {shown(path)} is {what}; give the SQLite file's path "
                              "(sqlite:///PATH/mlflow.db)")
        if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK):
            raise AblateError(f"tracking.uri: {path} is read-only (runs, their metrics and reports are written "
                              "there); make it writable or copy it")
        with path.open("rb") as f:
            header = f.read(16)
        if header and header != b"SQLite format 3\x00":
            raise AblateError(f"tracking.uri: {path} is not an SQLite database")


def check_credentials(uri: str) -> None:
    """A server that asks who we are (`ablate server`) must accept the credentials MLflow's client sends
    ($MLFLOW_TRACKING_USERNAME and $MLFLOW_TRACKING_PASSWORD, or ~/.mlflow/credentials): one line now, before
    anything is written, not a 401 in every trial."""
    try:
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except MlflowException as e:
        if e.get_http_status_code() != 401:
            return  # not ours to judge here: the first real call reports it
        user = read_mlflow_creds().username
        if user:
            raise AblateError(f"tracking.uri: {mask_secrets(uri)} refuses user {user!r} (401: wrong name or password; "
                              "they come from $MLFLOW_TRACKING_USERNAME and $MLFLOW_TRACKING_PASSWORD)") from None
        raise AblateError(f"tracking.uri: {mask_secrets(uri)} asks who you are (401): set $MLFLOW_TRACKING_USERNAME "
                          "and $MLFLOW_TRACKING_PASSWORD to an account of that server") from None


def _probe_creatable(path: Path, uri: str) -> None:
    """A new SQLite store's file can be created (its missing folders too): tried, and undone, now; MLflow would
    retry a file it cannot create for minutes (under /proc, on a read-only file system, where a folder is a file)."""
    missing = [p for p in [path.parent, *path.parent.parents] if not p.exists()][::-1]
    made: list[Path] = []
    # a name as long as the store's, never the store itself: another process's MLflow may be creating that now
    probe = path.with_name(("." + path.name)[:len(path.name)])
    try:
        for folder in missing:
            folder.mkdir()
            made.append(folder)
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        probe.unlink()
    except FileExistsError:
        pass  # something is there already: the folder takes files
    except OSError as e:
        raise AblateError(f"tracking.uri: cannot create {shown(path)} for {shown(uri)} ({os_reason(e)})") from None
    finally:
        for folder in reversed(made):
            with suppress(OSError):
                folder.rmdir()


def make_client(uri: str | None = None) -> MlflowClient:
    probe_store(store_uri(uri))  # before resolve_uri makes a folder for a store that cannot be used
    uri = resolve_uri(uri)
    try:
        return MlflowClient(tracking_uri=uri)
    except Exception as e:  # noqa: BLE001 (an unknown scheme, a missing driver ...)
        raise AblateError(f"tracking.uri: cannot open {mask_secrets(uri)}: {one_line(e, 200)}") from None


def get_or_create_experiment(client: MlflowClient, name: str) -> str:
    """The experiment's id in the client's store, creating it once; another process creating it first is not an
    error."""
    try:  # the first touch of the store: an unusable URI is bad input, one line
        found = client.get_experiment_by_name(name)
    except Exception as e:  # noqa: BLE001 (MLflow, SQLAlchemy and driver errors come in many types)
        raise AblateError(f"tracking.uri: cannot open {mask_secrets(client.tracking_uri)}: "
                          f"{one_line(e, 200)}") from None
    if found is not None:
        if Tag.EXPERIMENT_KIND not in found.tags:  # created by an earlier ablate: the UI's training view too
            for key, value in EXPERIMENT_KIND.items():
                client.set_experiment_tag(found.experiment_id, key, value)
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_root(client.tracking_uri),
                                        tags=EXPERIMENT_KIND)
    except MlflowException as e:
        if e.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
        return client.get_experiment_by_name(name).experiment_id


def mask_secrets(text: str) -> str:
    """The password of every URL in `text` hidden: postgresql://user:secret@host -> postgresql://user:***@host
    (params, tags, logs and messages are visible to all). A whole URL goes through SQLAlchemy's parser, which
    also reads a password with a '/' in it; URLs inside longer text (a traceback, a config) by pattern."""
    with suppress(ArgumentError, ValueError):  # not a URL as a whole (a path, a traceback)
        url = make_url(text)
        if url.password is not None:
            text = url.render_as_string(hide_password=True)
    return _URL_PASSWORD.sub(r"\1:***@", text)


def start_run(client: MlflowClient, experiment_id: str, *, run_name: str | None = None,
              parent_run_id: str | None = None, tags: Mapping[str, Any] | None = None) -> str:
    tags = {k: mask_secrets(str(v)) for k, v in (tags or {}).items()}
    if parent_run_id:
        tags[Tag.PARENT_RUN] = parent_run_id
    return client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id


def configuration_run(client: MlflowClient, experiment_id: str, parent_run_id: str, digest: str, name: str,
                      tags: Mapping[str, Any] | None = None) -> str:
    """The run of one configuration (a grid cell, a searched configuration) between the study's parent and its seed
    runs, found by its cell's digest or started; it carries the result over seeds (study.summarise)."""
    query = (f"tags.`{Tag.ROLE}` = 'configuration' and tags.`{Tag.CELL_DIGEST}` = '{digest}' and "
             f"tags.`{Tag.PARENT_RUN}` = '{parent_run_id}'")
    found = client.search_runs([experiment_id], query, order_by=["attributes.start_time ASC"], max_results=1)
    if found:
        return found[0].info.run_id
    return start_run(client, experiment_id, run_name=name, parent_run_id=parent_run_id,
                     tags={Tag.ROLE: "configuration", Tag.CELL_DIGEST: digest, **(tags or {})})


def end_configuration_runs(client: MlflowClient, parent_run_id: str, status: str) -> None:
    """A study's configuration runs still RUNNING end with the study's parent run (stopped, failed or done)."""
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    query = (f"tags.`{Tag.ROLE}` = 'configuration' and tags.`{Tag.PARENT_RUN}` = '{parent_run_id}' and "
             "attributes.status = 'RUNNING'")
    for run in client.search_runs([experiment_id], query, max_results=10000):
        client.set_terminated(run.info.run_id, status)


def runs_url(server: str, experiment_id: str, objective: str | None = None) -> str:
    """The MLflow UI's page of a study's configuration runs (one row each, best mean first), in its model-training
    view; each opens on its result over seeds and its seed runs."""
    metric, _, direction = (objective or "val/acc1 maximize").partition(" ")
    query = urllib.parse.urlencode({
        **dict(urllib.parse.parse_qsl(TRAINING_VIEW)), "searchFilter": f"tags.`{Tag.ROLE}` = 'configuration'",
        # ordered by a metric (not by date), the filtered runs are listed flat rather than under their parent
        "orderByKey": f"metrics.`{metric}/mean`", "orderByAsc": str(direction == "minimize").lower()},
        quote_via=urllib.parse.quote)
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


def landing_run(client: MlflowClient, experiment_id: str) -> str | None:
    """The study's parent run when it holds the landing page (the report logged when the study ended), else None."""
    found = client.search_runs([experiment_id], f"tags.`{Tag.ROLE}` = 'study'",
                               order_by=["attributes.start_time DESC"], max_results=1)  # a reset Optuna side: the last
    if not found:
        return None
    run = found[0].info.run_id
    return run if any(f.path == LANDING for f in client.list_artifacts(run, LANDING.rpartition("/")[0])) else None


def study_links(server: str, uri: str | None = None) -> dict[str, tuple[str, str]]:
    """Each study's experiment in the store -> the UI's links: where it opens (its parent run's landing page once
    the study has logged its report; until then its configuration runs) and its configuration runs. Nothing when
    the store does not exist."""
    uri = store_uri(uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return {}
    client, server, links = make_client(uri), server.rstrip("/"), {}
    for e in client.search_experiments():
        if e.name == "Default":
            continue
        runs = runs_url(server, e.experiment_id, e.tags.get(Tag.OBJECTIVE))
        parent = landing_run(client, e.experiment_id)
        # the run page in the model-training view too (without workflowType MLflow 3 shows it in its GenAI one)
        landing = f"{server}/#/experiments/{e.experiment_id}/runs/{parent}/artifacts/{LANDING}?{TRAINING_VIEW}"
        links[e.name] = (landing if parent else runs, runs)
    return links


def end_run(client: MlflowClient, run_id: str, status: str = "FINISHED", reason: str | None = None) -> None:
    """FINISHED, FAILED or KILLED; the reason (one line) goes to the `reason` tag."""
    try:
        if reason:
            client.set_tag(run_id, Tag.REASON, mask_secrets(reason)[:MAX_REASON])
    finally:
        client.set_terminated(run_id, status)  # even if the tag could not be written


@contextmanager
def tracked_run(client: MlflowClient, experiment_id: str, *, killed_by: tuple[type[BaseException], ...] = (),
                **start_kwargs) -> Iterator[str]:
    """Yield a new run's id; end it FINISHED, or KILLED/FAILED with the reason when an exception passes.

    `killed_by`: more exceptions that mean "stopped on purpose" (the study runner passes optuna.TrialPruned)."""
    run_id = start_run(client, experiment_id, **start_kwargs)
    status, reason = "FAILED", None
    try:
        yield run_id
        status = "FINISHED"
    except KILLED_BY + tuple(killed_by) as e:
        status, reason = "KILLED", describe(e)
        raise
    except BaseException as e:
        reason = describe(e)
        with suppress(Exception):  # the whole traceback goes with the run; the console gets the one-line reason
            client.log_text(run_id, mask_secrets(traceback.format_exc()), "error.txt")
        raise
    finally:
        end_run(client, run_id, status, reason)


def set_shared_tag(client: MlflowClient, run_id: str, key: str, value: str) -> None:
    """A tag several workers may write at once (a study's or a configuration's summary): MLflow's SQL store selects
    then inserts, so two first writes of one key race to a UNIQUE failure; the loser writes again, now an update."""
    try:
        client.set_tag(run_id, key, value)
    except MlflowException as e:
        if "UNIQUE constraint" not in str(e) and "duplicate key" not in str(e):
            raise
        client.set_tag(run_id, key, value)


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    """Params as MLflow writes them (str), URL passwords masked; MlflowClient.log_batch chunks by 100."""
    client.log_batch(run_id, params=[Param(k, mask_secrets(str(v))) for k, v in params.items()])


def log_metrics(client: MlflowClient, run_id: str, metrics: Mapping[str, float], step: int) -> None:
    """All of one step's metrics in one call: one SQLite transaction instead of one per value."""
    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
    if batch:
        client.log_batch(run_id, metrics=batch)


def continue_history(client: MlflowClient, run_id: str, earlier_run: str, before: int) -> None:
    """A resumed trial's run takes over what its predecessor logged for the epochs before `before` (each metric's
    steps < before, so that every epoch has one value), and the two runs name each other in tags."""
    own = set(client.get_run(run_id).data.metrics)  # logged again by the new run itself (the model's size)
    # a run's system metrics are its own machine's samples, not epochs
    history = [m for key in client.get_run(earlier_run).data.metrics if key not in own and not key.startswith(SYSTEM)
               for m in client.get_metric_history(earlier_run, key) if m.step < before]
    client.log_batch(run_id, metrics=history)  # MlflowClient chunks it
    client.set_tag(run_id, Tag.RESUMED_FROM_RUN, earlier_run)
    client.set_tag(earlier_run, Tag.RESUMED_BY, run_id)


def log_trial_artifacts(client: MlflowClient, run_id: str, config: Mapping[str, Any], report=None) -> None:
    """config.yaml (the resolved trial config) and, when there is one, the insertion report as JSON and text."""
    client.log_text(run_id, mask_secrets(yaml.safe_dump(dict(config), sort_keys=False)), "config.yaml")
    if report is not None:
        client.log_dict(run_id, report.to_dict(), "insertion_report.json")
        client.log_text(run_id, report.to_text(), "insertion_report.txt")


WEIGHTS = "model.pt"  # a trial run's evaluated state_dict (tracking.log_weights writes it, Grad-CAM reads it)
SYSTEM = "system/"  # MLflow's system metrics (system_metrics.py): the machine's samples, not the trial's results
