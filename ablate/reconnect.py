"""A database that restarts under running workers: Optuna's PostgreSQL storage waits it out and reconnects.

Three layers, each SQLAlchemy's or Optuna's own object with a bounded wait added:
- `pool_pre_ping`: a pooled connection the restart killed is found dead at checkout and replaced;
- a `do_connect` hook: once an engine has connected, a new connection that fails (server down, starting up,
  shutting down) is tried again with backoff, for up to `study.db_outage_s` seconds; an engine that never
  connected fails at once (a wrong URL is bad input, not an outage);
- `ReconnectingRDBStorage`: a storage call whose connection died mid-statement is made again. Only a COMMIT cut
  off in flight is ambiguous (it may have landed): a trial claim or a state change re-made after one reads the
  stored state to say whether it was ours, so a trial is neither claimed twice nor left claimed by nobody.
"""
from __future__ import annotations

import sys
import threading
import time
from functools import wraps

import sqlalchemy as sa
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.trial import TrialState
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, OperationalError

from ablate.errors import one_line

FIRST_WAIT_S, MAX_WAIT_S = 0.5, 8.0  # backoff between attempts: doubling, capped


class Outage:
    """One engine's view of its database: whether it ever connected, since when it has been unreachable, and
    (per thread) whether the statement that failed was a COMMIT."""

    def __init__(self, engine, limit_s: float, connected: bool = False):
        self.limit_s, self.connected, self.since = limit_s, connected, None
        self.local = threading.local()
        self.lock = threading.Lock()
        event.listen(engine, "do_connect", self.connect)
        event.listen(engine, "begin", lambda conn: setattr(self.local, "committing", False))
        event.listen(engine, "commit", lambda conn: setattr(self.local, "committing", True))

    @property
    def committing(self) -> bool:
        return getattr(self.local, "committing", False)

    def connect(self, dialect, record, cargs, cparams):
        while True:
            try:
                conn = dialect.connect(*cargs, **cparams)
            except dialect.loaded_dbapi.OperationalError as e:
                if not self.connected:
                    raise  # never reached: bad input, said at once
                self.wait(e)
                continue
            self.connected = True
            self.recovered()
            return conn

    def wait(self, error: BaseException) -> None:
        """Sleep before the next attempt, or raise `error` once the outage has lasted limit_s."""
        with self.lock:
            if self.since is None:
                self.since = time.monotonic()
                print(f"ablate: database unreachable ({one_line(error, 120)}); retrying for up to "
                      f"{self.limit_s:g} s", file=sys.stderr, flush=True)
            waited = time.monotonic() - self.since
        if waited >= self.limit_s:
            raise error
        attempt = getattr(self.local, "attempt", 0)
        self.local.attempt = attempt + 1
        time.sleep(min(MAX_WAIT_S, FIRST_WAIT_S * 2 ** attempt, self.limit_s - waited))

    def recovered(self) -> None:
        self.local.attempt = 0
        with self.lock:
            if self.since is not None:
                print(f"ablate: database reachable again after {time.monotonic() - self.since:.1f} s",
                      file=sys.stderr, flush=True)
                self.since = None


def lost_connection(error: BaseException) -> bool:
    """The error (or one it was raised from: Optuna wraps SQLAlchemy's) is a connection the database dropped."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, DBAPIError) and (error.connection_invalidated or isinstance(error, OperationalError)):
            return True
        error = error.__cause__ or error.__context__
    return False


def _retried(method):
    """A storage call made again while its connection died mid-statement, for as long as the outage allows."""
    @wraps(method)
    def call(self, *args, **kwargs):
        while True:
            try:
                result = method(self, *args, **kwargs)
            except Exception as e:
                if not lost_connection(e):
                    raise
                self.outage.wait(e)
                continue
            self.outage.recovered()
            return result

    return call


class ReconnectingRDBStorage(RDBStorage):
    """Optuna's RDBStorage whose calls survive a database restart of up to `outage_s` seconds."""

    def __init__(self, url: str, *, outage_s: float, engine_kwargs: dict | None = None, **kwargs):
        self.outage_s = outage_s
        super().__init__(url, engine_kwargs={"pool_pre_ping": True, **(engine_kwargs or {})}, **kwargs)
        self.outage = Outage(self.engine, outage_s, connected=True)  # __init__ connected (schema, version)

    def __setstate__(self, state) -> None:  # a pickled storage (spawned workers) gets its own engine and hooks
        super().__setstate__(state)
        self.outage = Outage(self.engine, self.outage_s, connected=True)

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("outage", None)
        return state

    def set_trial_state_values(self, trial_id: int, state: TrialState, values=None) -> bool:
        """A claim (WAITING -> RUNNING) or an end whose COMMIT was cut off may have landed: the stored state says."""
        ambiguous = False
        while True:
            try:
                done = RDBStorage.set_trial_state_values(self, trial_id, state, values)
            except UpdateFinishedTrialError:
                if ambiguous and self._stored_state(trial_id) == state:
                    return True  # our end had landed before the connection dropped
                raise
            except Exception as e:
                if not lost_connection(e):
                    raise
                ambiguous = ambiguous or self.outage.committing
                self.outage.wait(e)
                continue
            self.outage.recovered()
            if not done and ambiguous and state == TrialState.RUNNING and not self._heartbeat_seen(trial_id):
                return True  # our claim landed; another worker's would have started its heartbeat
            return done

    def _stored_state(self, trial_id: int) -> TrialState:
        return self.get_trial(trial_id).state

    def _heartbeat_seen(self, trial_id: int) -> bool:
        with self.engine.connect() as conn:  # Optuna's heartbeat table: a row once a worker's trial started beating
            row = conn.execute(sa.text("SELECT 1 FROM trial_heartbeats WHERE trial_id = :t"), {"t": trial_id})
            return row.first() is not None


# every other call of the storage interface: reads, and writes that are the same when made twice (attrs, params,
# intermediate values, heartbeats). A new trial whose COMMIT is cut off in flight is made again (as Optuna's own
# deadlock retry does): if the first had landed it stays RUNNING with no configuration and no heartbeat
for _name in ("create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
              "get_study_id_from_name", "get_study_name_from_id", "get_study_directions", "get_study_user_attrs",
              "get_study_system_attrs", "get_trial_user_attrs", "get_trial_system_attrs", "get_all_studies",
              "create_new_trial", "set_trial_param", "get_trial_param", "set_trial_intermediate_value",
              "set_trial_user_attr", "set_trial_system_attr", "get_trial_id_from_study_id_trial_number",
              "get_trial", "get_all_trials", "get_best_trial", "record_heartbeat", "_get_stale_trial_ids"):
    setattr(ReconnectingRDBStorage, _name, _retried(getattr(RDBStorage, _name)))
