"""Who may use the shared tracking server: MLflow's basic-auth app (`mlflow server --app-name basic-auth`), its
users' database with the admin in it, and the admin's credential, read from a file or the environment.

Apart from server.py so that `ablate ui` (one local user, loopback) does not import MLflow's auth app."""
from __future__ import annotations

import configparser
import os
import secrets
import stat
import warnings
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from mlflow.exceptions import MlflowException
from mlflow.utils.validation import _validate_password

from ablate.errors import AblateError, one_line
from ablate.tracking import home, mask_secrets

with warnings.catch_warnings():  # the auth package imports MLflow's FastAPI app, which Starlette warns about
    warnings.simplefilter("ignore")
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

# where the admin's password may come from, in this order after --admin-password-file: MLflow's own variables for
# the server's admin, then the client's pair (one pair of exports then serves the server and this machine's workers)
ADMIN_ENV = (("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD"),
             ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"))
PERMISSIONS = ("READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS")  # MLflow's, for default_permission
AUTH_DB = "basic_auth.db"
AUTH_CACHE_S = 60  # seconds a checked password is trusted (MLflow's auth_cache_ttl_seconds)


@dataclass(frozen=True)
class Admin:
    """The shared server's admin credential: from a file or the environment, never the command line (`ps` shows
    that to every user of the machine); the password is left out of repr, so no message or log can carry it."""

    username: str
    password: str = field(repr=False)
    source: str  # where the password came from, for messages: '$MLFLOW_AUTH_ADMIN_PASSWORD', the file's path


def read_secret(path: str, flag: str) -> str:
    """A password file's first line; the file must be readable by its owner only (as ssh and libpq insist)."""
    try:
        mode = Path(path).expanduser().stat().st_mode
        if not stat.S_ISREG(mode):
            raise AblateError(f"{flag}: {path} is not a file")
        if mode & 0o077:
            raise AblateError(f"{flag}: {path} can be read by others (mode {stat.S_IMODE(mode):o}); the password "
                              f"file must be its owner's alone: chmod 600 {path}")
        lines = Path(path).expanduser().read_text().splitlines()
    except OSError as e:
        raise AblateError(f"{flag}: cannot read {path} ({type(e).__name__}: {e.strerror or e})") from None
    if not lines or not lines[0]:
        raise AblateError(f"{flag}: {path} holds no password (its first line is the password)")
    return lines[0]


def admin_credential(password_file: str | None, username: str | None,
                     env: Mapping[str, str] = os.environ) -> Admin:
    """The admin's name and password: --admin-password-file, else $MLFLOW_AUTH_ADMIN_PASSWORD, else
    $MLFLOW_TRACKING_PASSWORD; the name from --admin-username, else the variable paired with the password, else
    'admin'. The password must pass MLflow's own rule (12 characters or more)."""
    if password_file:
        password = read_secret(password_file, "--admin-password-file")
        admin = Admin(username or env.get(ADMIN_ENV[0][0]) or "admin", password, password_file)
    else:
        found = next(((user, key) for user, key in ADMIN_ENV if env.get(key)), None)
        if found is None:
            raise AblateError("--admin-password-file: the server needs an admin password: set "
                              "$MLFLOW_AUTH_ADMIN_PASSWORD (or $MLFLOW_TRACKING_PASSWORD) or give --admin-password-file"
                              " FILE (mode 600); --open serves without authentication")
        admin = Admin(username or env.get(found[0]) or "admin", env[found[1]], f"${found[1]}")
    try:
        _validate_password(admin.password)
    except MlflowException as e:
        raise AblateError(f"{admin.source}: {e.message}") from None
    return admin


def default_auth_db(backend: str) -> str:
    """The users' database: beside an SQLite backend store, else in the working directory's mlruns/."""
    return f"sqlite:///{home(backend) / AUTH_DB}"


def ensure_admin(auth_db: str, admin: Admin) -> str:
    """Create the users' database and its admin, or set the admin's password to the given one (a restart with a
    new password is how it is changed); returns what was done, for the start-up line. Another user of that name
    who is no admin is refused rather than promoted."""
    store = SqlAlchemyStore()
    try:
        if auth_db.startswith("sqlite:///"):
            Path(auth_db.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        store.init_db(auth_db)
        if not store.has_user(admin.username):
            store.create_user(admin.username, admin.password, is_admin=True)
            return f"admin {admin.username!r} created"
        if not store.get_user(admin.username).is_admin:
            raise AblateError(f"--admin-username: {admin.username!r} is a user of {mask_secrets(auth_db)} but not an "
                              "admin; name the admin user (--admin-username or $MLFLOW_AUTH_ADMIN_USERNAME)")
        if store.authenticate_user(admin.username, admin.password):
            return f"admin {admin.username!r}"
        store.update_user(admin.username, password=admin.password)
        return f"admin {admin.username!r}: password changed to the one from {admin.source}"
    except (MlflowException, OSError) as e:  # sqlalchemy's errors reach us wrapped in MlflowException
        raise AblateError(f"--auth-db: cannot use {mask_secrets(auth_db)}: {one_line(mask_secrets(str(e)), 200)}"
                          ) from None
    finally:
        with suppress(AttributeError):
            store.engine.dispose()


def auth_environment(folder: Path, auth_db: str, admin: Admin, default_permission: str) -> dict[str, str]:
    """The variables that point `mlflow server --app-name basic-auth` at its configuration (written to `folder`,
    the caller's private directory). The password is not among them: the admin already exists in the database."""
    config = configparser.ConfigParser(interpolation=None)
    config["mlflow"] = {"default_permission": default_permission, "database_uri": auth_db,
                        "admin_username": admin.username,
                        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
                        # a password check is a scrypt hash (0.13 s of CPU here) on every request, and a worker sends
                        # several each epoch: a checked password is trusted for a minute per server process, so a
                        # changed or deleted user's old password may work that long on the other processes
                        "auth_cache_ttl_seconds": str(AUTH_CACHE_S)}
    path = folder / "basic_auth.ini"
    with path.open("w") as f:
        config.write(f)
    path.chmod(0o600)  # the users' database URL may hold a password
    env = {k: v for k, v in os.environ.items() if k not in {key for _, key in ADMIN_ENV}}
    # CSRF tokens of MLflow's sign-up page: one key for all the server's workers, a new one each start unless given
    return {**env, "MLFLOW_AUTH_CONFIG_PATH": str(path), "MLFLOW_AUTH_ADMIN_USERNAME": admin.username,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": env.get("MLFLOW_FLASK_SERVER_SECRET_KEY") or secrets.token_hex(32)}
