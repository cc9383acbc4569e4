"""Optuna storage: which storage a URL names, the setup lock, loading a study to read it, and what ablate
keeps on Optuna's records (the user-attr keys the runner writes and the results reader reads).

One machine: a journal file (safe for several processes). Several machines: PostgreSQL `RDBStorage` with
heartbeats, so a live worker fails and retries a dead machine's trial. Never SQLite with parallel workers.
"""
from __future__ import annotations

import json
import sqlite3
import time
import warnings
import zlib
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Iterator

import optuna
import sqlalchemy as sa
from filelock import FileLock
from optuna.exceptions import ExperimentalWarning
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, ProgrammingError

from ablate.errors import AblateError, at, one_line, path_kind, shown
from ablate.reconnect import ReconnectingRDBStorage
from ablate.tracking import mask_secrets

JOURNAL = "mlruns/optuna.journal"


CONFIRM = "confirm"  # Attr.STAGE of a search's confirmation run (study.confirm)


class Attr:
    """Keys of ablate's user attrs on Optuna studies and trials: the one schema of what a study records."""

    PARENT_RUN = "mlflow_parent_run_id"  # study: the MLflow run every trial's run is a child of
    FINGERPRINT = "ablate.fingerprint"  # study: the base config and metric its trials share (optuna_setup.fingerprint)
    STUDY_FILE = "ablate.study_file"  # study: the study file it was last run from (what a report reads it from)
    CELL = "cell"  # trial: its configuration's key (spec.cell_key); absent on a trial that got no configuration
    PARAMS = "params"  # trial: the configuration's dotted params
    LABEL = "label"  # trial: the configuration's row name
    SEED = "seed"
    RUN_ID = "mlflow_run_id"  # trial: its MLflow child run
    METRICS = "metrics"  # trial: final value of every logged metric
    FAIL_REASON = "fail_reason"
    WORKER = "worker"  # trial: host:pid of the process running it
    RESUMED = "resumed"  # trial: {trial, epoch}: it continued that stopped trial's checkpoint at that epoch
    RETRY_OF = "retry_of"  # searched trial: queued again to resume this stopped trial's params and seed
    TASK = "task"  # trial: the launcher's task running it ('slurm 1234_0', 'local 4321'), when launched
    LAUNCHES = "ablate.launches"  # study: the job arrays `ablate run --launcher` submitted for it
    REFUSED = "refused"  # searched trial: why study.constraints refused it; study: {cell key: why} of a grid's cells
    STAGE = "ablate.stage"  # trial: CONFIRM for a search's confirmation run (study.confirm); absent otherwise
    CORRECT = "ablate.correct"  # trial: per-image correctness on the reported split (correct.pack_correct)
    STEP_COST = "ablate.step_cost"  # study: {cell key: step price} of a grid (step_cost.py); searched trial: its own
    WARM_FROM = "warm_start_of"  # trial: a finished trial of this earlier study, copied in for the sampler (warm_start)
    PARAM_SPACE = "ablate.param_space"  # study: each grid key's kind, as its trials' Optuna params hold it (params.py)


def resumed_trials(trials) -> set[int]:
    """The numbers of trials that stopped and were then resumed by a later trial (its `resumed` attr): the
    work is the later trial's, so they count as neither failed nor done."""
    return {t.user_attrs[Attr.RESUMED]["trial"] for t in trials if t.user_attrs.get(Attr.RESUMED)}


def journal_file(url: str | None) -> str | None:
    """The journal file a storage URL names (None, the default, is mlruns/optuna.journal), or None for a database."""
    url = url or JOURNAL
    return None if "://" in url else url


def check_journal(journal: str) -> None:
    """A file that is there must be an Optuna journal (JSON records, one a line): the MLflow database or a study
    file given as --storage would be read as garbage, or appended to."""
    path = Path(journal)
    with at("--storage"):
        kind = path_kind(path)  # a name too long, a loop of links: said as such
    if kind == "other":  # a FIFO would block the read
        raise AblateError(f"--storage: {shown(journal)} is not a regular file (a FIFO, a device or a socket); give a "
                          f"journal file (default {JOURNAL})")
    if kind != "file" or not path.stat().st_size:
        return
    with path.open("rb") as f:
        first = f.readline(1 << 16)
    try:
        record = json.loads(first)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError
        record = None
    if not isinstance(record, dict) or "op_code" not in record:
        raise AblateError(f"--storage: {journal} is not an Optuna journal (its first line is no journal record); "
                          f"give a new file or an existing journal (default {JOURNAL})")


def check_sqlite(url: str) -> None:
    """An SQLite file that is there must hold Optuna's tables (or none yet): RDBStorage would add its own to the
    MLflow database, and a study file is no database at all."""
    path = make_url(url).database
    if not path or path == ":memory:" or not Path(path).is_file():
        return
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as e:
        raise AblateError(f"--storage: {path} is not an SQLite database ({e})") from None
    if tables and not {"studies", "trials"} <= tables:
        what = "the MLflow tracking database" if "experiments" in tables else "another program's database"
        raise AblateError(f"--storage: {path} is {what}, not an Optuna storage (tables: "
                          f"{', '.join(sorted(tables)[:5])} ...); give Optuna its own file")


def make_storage(url: str | None, jobs: int, heartbeat_interval: int = 30, grace_period: int = 120,
                 outage_s: float = 300):
    """`outage_s`: how long a database server (not SQLite) may be unreachable before a storage call fails."""
    journal = journal_file(url)
    if journal:  # safe for several processes on one machine
        check_journal(journal)
        try:
            Path(journal).parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(journal))
        except OSError as e:  # a folder where the file should be, a file where a folder should be, no rights
            raise AblateError(f"--storage: cannot use {journal} as the Optuna journal file ({type(e).__name__}: "
                              f"{e.strerror or e})") from None
    if url.startswith("sqlite") and jobs > 1:
        raise AblateError("--storage: SQLite does not take parallel workers; use the default journal or PostgreSQL")
    if url.startswith("sqlite"):
        check_sqlite(url)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)  # heartbeats: "experimental" since Optuna 2.9
            for attempt in range(5):
                try:
                    # several machines: heartbeats let another worker retry a dead machine's trial
                    beats = dict(heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                                 heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))
                    if url.startswith("sqlite"):
                        return RDBStorage(url, **beats)
                    return ReconnectingRDBStorage(url, outage_s=outage_s, **beats)  # a server may restart
                except (IntegrityError, ProgrammingError):  # another worker is creating the same schema right now
                    if attempt == 4:
                        raise
                    time.sleep(0.5 * (attempt + 1))
    except Exception as e:  # noqa: BLE001 (driver and connection errors come in many types)
        raise AblateError(f"--storage: cannot open {mask_secrets(url)}: {one_line(e, 200)}") from None


def load(study_name: str, url: str | None = None) -> optuna.Study:
    """An existing study, to read it (reports, Grad-CAM); never creates one, nor an empty journal."""
    journal = journal_file(url)
    if journal:
        check_journal(journal)
        if not Path(journal).is_file():
            raise AblateError(f"unknown study {study_name!r}: no Optuna journal at {shown(journal)}")
    try:
        return optuna.load_study(study_name=study_name, storage=make_storage(url, 1))
    except KeyError:
        raise AblateError(f"unknown study {study_name!r} in {mask_secrets(url or JOURNAL)}") from None


@contextmanager
def setup_lock(storage, name: str, journal: str | None) -> Iterator[None]:
    """Serialise a study's setup (create, recover, enqueue the grid, parent run) across `ablate run` processes:
    a lock file beside a journal, a PostgreSQL session advisory lock; both released if the process dies."""
    if journal is not None:
        with FileLock(f"{journal}.setup-lock"):  # not `.lock`: Optuna's journal lock is that file
            yield
        return
    if not isinstance(storage, RDBStorage) or storage.engine.dialect.name != "postgresql":
        yield  # other databases: setups of one study must not start at the same moment
        return
    key = zlib.crc32(f"ablate.study:{name}".encode())
    with storage.engine.connect() as conn:
        conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            conn.commit()
