"""MLflow's UI and tracking server as processes: the commands that start them, the address check before
they start, and running one until it exits or is stopped (its whole process tree with it). The shared server's
users are server_auth.py's."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from contextlib import suppress
from typing import Mapping

from ablate.errors import AblateError
from ablate.tracking import artifact_root, resolve_uri


def ui_command(port: int = 5000, host: str = "127.0.0.1", uri: str | None = None) -> list[str]:
    """MLflow's UI over the project's store (the one ablate's runs log to) and its artifacts."""
    uri = resolve_uri(uri)
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--host", host, "--port", str(port), "--workers", "1"]  # one local user: one worker is plenty
    root = artifact_root(uri)
    if root:
        cmd += ["--default-artifact-root", root]
    return cmd


def server_command(backend: str, artifacts: str | None, port: int, host: str, workers: int,
                   allowed_hosts: str | None = None, auth: bool = True) -> list[str]:
    """The tracking server several machines' workers log to: its store in a database, artifacts proxied (the
    workers upload them over HTTP into `artifacts`, a folder or bucket the server can write); with `auth`, MLflow's
    basic-auth app in front of it (configured by auth_environment)."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend, "--host", host,
           "--port", str(port), "--workers", str(workers), "--serve-artifacts"]
    if auth:
        cmd += ["--app-name", "basic-auth"]
    if workers > 1:  # a worker still loading MLflow's apps on busy cores is slow, not dead (uvicorn's default: 5 s)
        cmd += ["--uvicorn-opts", "--timeout-worker-healthcheck 60"]
    if artifacts:
        cmd += ["--artifacts-destination", artifacts]
    if allowed_hosts:  # beyond the local network MLflow checks the Host header against this list
        cmd += ["--allowed-hosts", allowed_hosts]
    return cmd


def check_address(host: str, port: int) -> None:
    """--host and --port as a server would bind them, tried before MLflow starts (and fails inside itself)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except (OSError, OverflowError) as e:  # socket.gaierror is an OSError; a port beyond 65535 an OverflowError
        raise AblateError(f"--host {host} --port {port}: cannot serve there ({getattr(e, 'strerror', None) or e})"
                          ) from None


def serve(cmd: list[str], env: Mapping[str, str] | None = None) -> int:
    """Run an MLflow server until it exits or we are stopped; Ctrl-C or SIGTERM end its whole process tree.

    The server runs in a session of its own so that its worker processes (gunicorn's or uvicorn's) can be ended
    as one group: stopping only the `mlflow` process would leave them holding the port."""
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)

    def stop(signum, frame):
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return proc.wait()
    except KeyboardInterrupt:
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)  # a second Ctrl-C must not leave the group half-stopped
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        with suppress(ProcessLookupError):  # workers that outlived their master
            os.killpg(proc.pid, signal.SIGKILL)
        return 0
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def serve_ui(port: int = 5000, host: str = "127.0.0.1", uri: str | None = None) -> int:
    """MLflow's UI over the project's store, loopback-only unless `host` says otherwise; blocks until stopped."""
    return serve(ui_command(port, host, uri))
