"""The `ablate` command: parse, call the library, print. The only module that imports lazily: the library
(torch, Optuna, MLflow) loads inside the commands, so `ablate --help` and bad input stay fast."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import click
import typer

from ablate.config import POSITION_NAMES
from ablate.errors import AblateError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None, help="Attention-module ablations and architecture search on timm backbones.")


# custom attention modules come from installed entry points or from this flag, never from a study file
PLUGIN = typer.Option([], "--plugin", help="import this module first (it registers attention modules); repeatable")
# the two stores, the same option in every command that reads or writes them
STORAGE = typer.Option(None, "--storage", help="Optuna storage: a journal file (default mlruns/optuna.journal) or "
                       "postgresql://...")
TRACKING_URI = typer.Option(None, "--tracking-uri", help="MLflow store (default sqlite:///mlruns/mlflow.db)")


# what a command said when Ctrl-C stopped it: typer turns any other KeyboardInterrupt into exit 130 without a word
_SAID_STOPPED: list[str] = []


def _stopped(message: str) -> typer.Exit:
    typer.echo(message, err=True)
    _SAID_STOPPED.append(message)
    return typer.Exit(130)


def _plugins(names: list[str]) -> None:
    if names:
        from ablate.attention import load_plugins

        load_plugins(names)


def resume_command(command: str, target: str, overrides: list[str], storage: str | None = None,
                   tracking_uri: str | None = None) -> str:
    """The command line that continues where this one stopped: the same file, overrides and stores (without the
    overrides a resumed study would differ, and be refused as incomparable)."""
    return " ".join([f"ablate {command}", target, *overrides, *(["--storage", storage] if storage else []),
                     *(["--tracking-uri", tracking_uri] if tracking_uri else [])])


@app.callback(invoke_without_command=True)
def _root(ctx: typer.Context):
    if ctx.invoked_subcommand is None:  # bare `ablate`: the help, not an error
        typer.echo(ctx.get_help())


@app.command()
def modules(plugin: List[str] = PLUGIN):
    """Every registered attention module: name, kind, where its paper puts it, knobs with defaults, paper."""
    _plugins(plugin)
    from ablate.attention import list_attention

    infos = list_attention()
    rows = [(i.name, i.kind, i.placement.describe() if i.placement else "-",
             ", ".join(f"{k}={_show(v.default)}" for k, v in i.knobs.items()) or "-", i.paper) for i in infos]
    header = ("name", "kind", "placement", "knobs (defaults)", "paper")
    widths = [max(len(r[c]) for r in rows + [header]) for c in range(4)]
    for row in [header] + rows:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + "  " + row[4])
    typer.echo(f"{len(infos)} modules")


@app.command()
def recipes(name: Optional[str] = typer.Argument(None, help="one recipe, e.g. rsb_a2; none: all")):
    """Every named training recipe (train.recipe): its values and where each comes from."""
    from ablate.config import recipe_text

    typer.echo(recipe_text(name))


def _show(value) -> str:
    if isinstance(value, tuple):
        return "+".join(map(str, value))
    return "null" if value is None else str(value)


@app.command()
def inspect(
    backbone: str = typer.Argument(..., help="timm model name, e.g. resnet50"),
    attention: str = typer.Option("none", help="registered module name (see `ablate modules`)"),
    position: Optional[str] = typer.Option(None, help=", ".join(POSITION_NAMES) + " (default: the paper's placement)"),
    knob: List[str] = typer.Option([], help="module knob as name=value (repeatable)"),
    stages: Optional[str] = typer.Option(None, help="1-based stages, comma separated, e.g. 3,4"),
    every: int = typer.Option(1, help="every n-th block within a stage"),
    pattern: Optional[str] = typer.Option(None, help="module-path glob for --position pattern"),
    init: str = typer.Option("default", help="default or identity"),
    image_size: int = typer.Option(224, min=8, max=2048, help="input size for channels, feature sizes and GMACs"),
    in_chans: int = typer.Option(3, min=1),
    num_classes: int = typer.Option(1000, min=0, help="0: no classifier (timm's feature backbone)"),
    plugin: List[str] = PLUGIN,
):
    """Where the module goes in BACKBONE, and the params and GMACs it adds; nothing is trained."""
    _plugins(plugin)
    from pydantic import ValidationError

    from ablate.config import ModelConfig, apply_overrides, validation_error

    try:
        stage_list = [int(s) for s in stages.split(",")] if stages else None
    except ValueError:
        raise AblateError(f"--stages: {stages!r} is not a comma-separated list of stage numbers") from None
    knobs = apply_overrides({}, knob, "--knob")  # the same name=value parsing as trial overrides
    try:
        cfg = ModelConfig(backbone=backbone, attention=dict(name=attention, position=position, knobs=knobs,
                                                            stages=stage_list, every=every, pattern=pattern, init=init))
    except ValidationError as e:
        raise validation_error("inspect", e, ModelConfig) from None
    from ablate.models import build_model

    try:
        built = build_model(cfg, num_classes, in_chans, image_size)
    except AblateError as e:
        if e.key == "data.image_size":  # the input is this command's flags
            raise AblateError(f"--image-size, --in-chans: {e.message}") from None
        raise
    typer.echo(built.report.to_text())


@app.command()
def plan(
    module: str = typer.Argument(..., help="registered module name, e.g. se (see `ablate modules`)"),
    backbone: Optional[str] = typer.Option(None, help="timm model name (default: the paper's, e.g. resnet50)"),
    out: Optional[str] = typer.Option(None, help="write the study file here (default: print it)"),
    plugin: List[str] = PLUGIN,
):
    """A study file holding MODULE's paper's own ablations as cells, its published numbers as reference rows."""
    _plugins(plugin)
    from ablate.errors import at, check_output, write_output
    from ablate.paper_plan import plan_study

    if out:
        check_output(out, "--out")
    if backbone is not None:
        from ablate.models import check_backbone

        with at("--backbone"):
            check_backbone(backbone)
    with at("module"):
        text = plan_study(module, backbone, " ".join(["ablate plan", module, *(["--backbone", backbone] if backbone
                                                                               else [])]))
    if out:
        write_output(out, text, "--out")
        typer.echo(f"wrote {out}; dry run: ablate run {out} --dry-run")
    else:
        typer.echo(text, nl=False)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def train(
    ctx: typer.Context,
    config: str = typer.Argument(..., help="trial config YAML"),
    tracking_uri: Optional[str] = TRACKING_URI,
    plugin: List[str] = PLUGIN,
):
    """Train one trial config (extra args are dotted overrides, e.g. train.lr=0.05) and track it in MLflow."""
    _plugins(plugin)
    from ablate.config import load_trial

    overrides = list(ctx.args) + ([f"tracking.uri={tracking_uri}"] if tracking_uri else [])
    cfg = load_trial(config, overrides)
    from ablate import tracking
    from ablate.checkpoint import resume_point, single_checkpoint
    from ablate.errors import Preempted
    from ablate.interrupt import REQUEUE_EXIT_CODE
    from ablate.train import DivergedError, run_trial

    checkpoint = single_checkpoint(cfg)  # the same config trained again resumes from it
    again = resume_command("train", config, ctx.args, tracking_uri=tracking_uri)
    try:
        resume = resume_point(checkpoint, cfg)
        if resume is not None:
            typer.echo(f"resuming at epoch {resume.epoch} from {checkpoint}")
        result = run_trial(cfg, checkpoint=checkpoint, resume=resume)
    except AblateError as e:  # raised while building data or model, before the store: name the file
        raise AblateError(f"{config}: {e}") from None
    except Preempted as e:
        typer.echo(f"\nablate: {e}: the trial's checkpoint is saved; resume with: {again}", err=True)
        raise typer.Exit(REQUEUE_EXIT_CODE) from None
    except DivergedError as e:  # not bad input: the run exists and ended FAILED with this reason
        typer.echo(f"ablate: trial diverged: {e} (its MLflow run is marked FAILED)", err=True)
        raise typer.Exit(1) from None
    uri = tracking.resolve_uri(cfg.tracking.uri)
    typer.echo(f"run {result.run_id} in experiment {cfg.tracking.experiment!r} at {uri}")
    typer.echo("  " + "  ".join(f"{k}={v:.4g}" for k, v in sorted(result.metrics.items())))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def run(
    ctx: typer.Context,
    study: str = typer.Argument(..., help="study YAML, e.g. studies/cbam_vs_se.yaml"),
    trials: Optional[int] = typer.Option(None, help="number of trials (default: every grid cell x seed)"),
    jobs: int = typer.Option(1, min=1, help="worker processes on this machine (one accelerator each)"),
    storage: Optional[str] = STORAGE,
    tracking_uri: Optional[str] = TRACKING_URI,
    dry_run: bool = typer.Option(False, "--dry-run", help="list the trials with params and GMACs; train nothing"),
    force_new: bool = typer.Option(False, "--force-new", help="set an existing study of this name aside (renamed "
                                   "<name>.before-<time>) and start it over"),
    launcher: Optional[str] = typer.Option(None, help="slurm or local: submit the workers as one submitit job array "
                                           "(options in the study's launcher: section) instead of running here"),
    workers: Optional[int] = typer.Option(None, min=1, help="with --launcher: array tasks (default launcher.workers)"),
    plugin: List[str] = PLUGIN,
    progress: str = typer.Option("auto", help="auto (a study bar over each trial's bar at a terminal, else one "
                                 "line per trial), bar or lines"),
):
    """Run (or resume) an Optuna study of tracked trials; extra args are dotted overrides."""
    _plugins(plugin)
    from ablate.spec import load_study

    overrides = list(ctx.args) + ([f"study.trials={trials}"] if trials is not None else [])
    if tracking_uri:
        overrides.append(f"tracking.uri={tracking_uri}")
    loaded = load_study(study, overrides)
    from ablate.launch import check_arguments

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    launcher = check_arguments(launcher, jobs, workers, loaded.cfg.launcher, cores)
    if dry_run:  # plain text with each cell's dotted params; `ablate report --dry-run` renders the formats
        from ablate.cells import cell_cost
        from ablate.formats import checklist
        from ablate.paper_plan import missing_ablations
        from ablate.report import dry_run_table
        from ablate.step_cost import price_records

        steps = price_records if loaded.cfg.study.price_steps else None  # each training step, timed side by side
        typer.echo(dry_run_table(loaded, cell_cost, steps).to_string(float_format="{:.3f}".format)
                   + checklist(missing_ablations(loaded)))
        return
    from ablate.errors import Preempted
    from ablate.interrupt import REQUEUE_EXIT_CODE
    from ablate.plots import make_plots
    from ablate.report import write_report
    from ablate.study import WorkerDied, run_study

    again = resume_command("run", study, ctx.args, storage, tracking_uri)
    if launcher is not None:
        _launch(loaded, launcher, workers, storage, force_new)
        return
    try:
        run_study(loaded, jobs=jobs, storage_url=storage, force_new=force_new, progress=progress)
    except Preempted as e:  # exit 75: a scheduler requeues the job, and the same command resumes it
        typer.echo(f"\nablate: {e}: the running trials' checkpoints are saved; resume with: {again}", err=True)
        raise typer.Exit(REQUEUE_EXIT_CODE) from None
    except KeyboardInterrupt:
        raise _stopped(f"\ninterrupted: finished trials are kept; resume with: {again}") from None
    except WorkerDied as e:  # a worker process died (OOM killer, kill -9): not bad input
        typer.echo(f"ablate: {e}: {again}", err=True)
        raise typer.Exit(1) from None
    typer.echo(write_report(loaded, storage=storage, tracking_uri=tracking_uri, plotter=make_plots, log=True))


def _launch(loaded, launcher: str, workers: int | None, storage: str | None, force_new: bool) -> None:
    from ablate.launch import launch, wait
    from ablate.plots import make_plots
    from ablate.report import write_report

    launched = launch(loaded, launcher, workers=workers, storage_url=storage, force_new=force_new)
    status = " ".join(["ablate status", loaded.name, *(["--storage", storage] if storage else [])])
    typer.echo(f"[{loaded.name}] submitted {len(launched.tasks)} {launcher} tasks (job {launched.job}; logs in "
               f"{launched.folder}); follow them with: {status}")
    try:
        wait(loaded, launched, storage)
    except KeyboardInterrupt:
        stop = f"scancel {launched.job}" if launcher == "slurm" else "Ctrl-C reached them too"
        raise _stopped(f"\nstopped waiting; the tasks keep running ({stop}); follow them with: {status}") from None
    tracking_uri = loaded.base.get("tracking", {}).get("uri")
    typer.echo(write_report(loaded, storage=storage, tracking_uri=tracking_uri, plotter=make_plots, log=True))


@app.command()
def status(
    study: str = typer.Argument(..., help="study name (study.name) or study YAML"),
    storage: Optional[str] = STORAGE,
    tracking_uri: Optional[str] = TRACKING_URI,
):
    """The study's trial counts, its launched job arrays' tasks, and its running trials with their epoch."""
    from ablate import storage as stores
    from ablate.launch import status_text
    from ablate.results import resolve_study

    resolved = resolve_study(study, tracking_uri)
    typer.echo(status_text(stores.load(resolved.name, storage), resolved.tracking_uri, storage))


@app.command()
def report(
    study: str = typer.Argument(..., help="study name (study.name) or study YAML"),
    fmt: str = typer.Option("md", "--format", help="md, csv, latex, html or json"),
    out: Optional[str] = typer.Option(None, help="write the report here (default: print it)"),
    by: Optional[str] = typer.Option(None, help="group rows by these keys, comma separated (default: the cells)"),
    baseline: Optional[str] = typer.Option(None, help="the delta's reference row: a label or key=value"),
    plots: Optional[str] = typer.Option(None, help="write the plots (PNG) to this folder"),
    storage: Optional[str] = STORAGE,
    tracking_uri: Optional[str] = TRACKING_URI,
    dry_run: bool = typer.Option(False, "--dry-run", help="a study file's params and GMACs beside the paper's; "
                                 "nothing trained or read from the stores"),
    show_all: bool = typer.Option(False, "--all", help="also the configurations the study file no longer holds "
                                  "(marked as such)"),
    columns: str = typer.Option("compact", help="compact (what a paper prints; the paper's numbers in a second "
                                "table) or all (every number: sd of each metric, top-5, throughput, counts)"),
    log: bool = typer.Option(False, "--log", help="also log the table (and the plots) on the study's parent run, "
                             "as `ablate run` does when the study ends"),
):
    """The study's ablation table (mean ± sd over seeds, deltas with 95% CIs); reads the stores, writes nothing
    to them unless --log."""
    from ablate.errors import check_output, write_output
    from ablate.report import dry_run_report, write_report

    if out:
        check_output(out, "--out")
    if plots:
        check_output(plots, "--plots", folder=True)
    if dry_run:
        from ablate.cells import cell_cost

        text = dry_run_report(study, cell_cost, fmt)
        if out:
            write_output(out, text, "--out")
        else:
            typer.echo(text)
        return

    plotter = None
    if plots or log:  # matplotlib and Optuna's plots: only when asked (the study's run logs them when it ends)
        from ablate.plots import make_plots as plotter
    text = write_report(study, fmt=fmt, out=out, by=by, baseline=baseline, plots=plots, plotter=plotter,
                        storage=storage, tracking_uri=tracking_uri, show_all=show_all, columns=columns, log=log)
    if not out:
        typer.echo(text)


@app.command()
def gradcam(
    study: str = typer.Argument(..., help="study name (study.name) or study YAML"),
    images: int = typer.Option(6, min=1, help="validation images (columns of the figure)"),
    out: Optional[str] = typer.Option(None, help="PNG path (default <study>_gradcam.png)"),
    storage: Optional[str] = STORAGE,
    tracking_uri: Optional[str] = TRACKING_URI,
    plugin: List[str] = PLUGIN,
):
    """Grad-CAM of each configuration's best run on the same validation images, in one figure."""
    _plugins(plugin)
    from ablate.errors import check_output
    from ablate.gradcam import write_gradcam

    if out:
        check_output(out, "--out")
    typer.echo(f"wrote {write_gradcam(study, images, out, storage, tracking_uri)}")


@app.command()
def ui(
    study: Optional[str] = typer.Argument(None, help="print this study's links (default: every study's)"),
    port: int = typer.Option(5000, min=1, max=65535, help="port on the host"),
    host: str = typer.Option("127.0.0.1", help="bind address; anything but loopback exposes your runs"),
    tracking_uri: Optional[str] = TRACKING_URI,
):
    """Serve the MLflow UI over the project's store (loopback only unless --host says otherwise); prints each
    study's link (its report page: every configuration's mean ± sd, n, delta, verdict and the figure) and the link
    to its configuration runs (each with its seed runs inside)."""
    from ablate import tracking
    from ablate.server import check_address, serve_ui

    check_address(host, port)
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(f"warning: serving on {host}: anyone who can reach it can read and change your runs", err=True)
    address = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    links = tracking.study_links(address, tracking_uri)
    if study is not None and study not in links:
        raise AblateError(f"study: no study {study!r} in {tracking.store_uri(tracking_uri)} "
                          f"(studies: {', '.join(links) or 'none yet'})")
    for name, (landing, runs) in links.items():
        if study in (None, name):
            typer.echo(f"{name}: {landing}")  # the report's page once the study has ended, else its runs
            if landing != runs:
                typer.echo(f"  configuration runs: {runs}")
    raise typer.Exit(serve_ui(port, host, tracking_uri))


@app.command()
def server(
    backend_store_uri: str = typer.Option(..., help="the runs' database, e.g. postgresql://user@db-host/mlflow (the "
                                          "password from $PGPASSWORD or ~/.pgpass, not the command line)"),
    artifacts: str = typer.Option(..., help="where the server keeps artifacts: a folder on shared storage, s3://..."),
    port: int = typer.Option(5000, min=1, max=65535),
    host: str = typer.Option("0.0.0.0", help="bind address (all interfaces: the workers are on other machines)"),
    workers: int = typer.Option(4, min=1, help="server processes (each takes requests from many ablate workers)"),
    allowed_hosts: Optional[str] = typer.Option(None, help="beyond the local network: the Host names clients use"),
    admin_password_file: Optional[str] = typer.Option(None, help="a file (mode 600) whose first line is the admin's "
                                                      "password (default $MLFLOW_AUTH_ADMIN_PASSWORD, else "
                                                      "$MLFLOW_TRACKING_PASSWORD)"),
    admin_username: Optional[str] = typer.Option(None, help="the admin user (default $MLFLOW_AUTH_ADMIN_USERNAME, "
                                                 "else the name paired with the password's variable, else admin)"),
    auth_db: Optional[str] = typer.Option(None, help="the users' database (default basic_auth.db beside an SQLite "
                                          "store, else mlruns/basic_auth.db)"),
    default_permission: str = typer.Option("READ", help="what every user may do to experiments they were given no "
                                           "permission on: READ, USE, EDIT, MANAGE or NO_PERMISSIONS"),
    open_: bool = typer.Option(False, "--open", help="no authentication: anyone who reaches the port may read, "
                               "change and delete every run"),
):
    """An MLflow tracking server for workers on several machines (ablate run --tracking-uri http://HOST:PORT). Users
    sign in (MLflow's basic-auth app); workers pass $MLFLOW_TRACKING_USERNAME and $MLFLOW_TRACKING_PASSWORD."""
    import tempfile

    from ablate.server import check_address, serve, server_command
    from ablate.tracking import mask_secrets

    if not backend_store_uri.startswith(("postgresql", "mysql", "mssql", "sqlite")):
        raise AblateError(f"--backend-store-uri: {backend_store_uri!r} is not a database URL (postgresql://...)")
    check_address(host, port)
    if "://" not in artifacts:
        artifacts = Path(artifacts).expanduser().resolve().as_uri()
    cmd = server_command(backend_store_uri, artifacts, port, host, workers, allowed_hosts, auth=not open_)
    where = f"MLflow server for {mask_secrets(backend_store_uri)} on {host}:{port}, artifacts in {artifacts}"
    if open_:
        if admin_password_file or admin_username or auth_db:
            raise AblateError("--open: serves without authentication; not with --admin-password-file, "
                              "--admin-username or --auth-db")
        typer.echo(f"warning: --open: no authentication: anyone who can reach {host}:{port} can read, change and "
                   "delete every run", err=True)
        typer.echo(f"{where}; workers log to it with --tracking-uri http://<this host>:{port}", err=True)
        raise typer.Exit(serve(cmd))
    from ablate.server_auth import PERMISSIONS, admin_credential, auth_environment, default_auth_db, ensure_admin

    if default_permission.upper() not in PERMISSIONS:
        raise AblateError(f"--default-permission: {default_permission!r} is not one of {', '.join(PERMISSIONS)}")
    admin = admin_credential(admin_password_file, admin_username)
    auth_db = auth_db or default_auth_db(backend_store_uri)
    done = ensure_admin(auth_db, admin)
    typer.echo(f"{where}; users in {mask_secrets(auth_db)} ({done}; others get {default_permission.upper()}); "
               f"workers log to it with --tracking-uri http://<this host>:{port} and $MLFLOW_TRACKING_USERNAME, "
               "$MLFLOW_TRACKING_PASSWORD", err=True)
    with tempfile.TemporaryDirectory(prefix="ablate-server-") as folder:  # private (0700): the auth config
        env = auth_environment(Path(folder), auth_db, admin, default_permission.upper())
        code = serve(cmd, env)
    raise typer.Exit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per downloaded file is noise
    command = typer.main.get_command(app)
    _SAID_STOPPED.clear()
    try:
        code = command.main(args=argv, prog_name="ablate", standalone_mode=False)
        if code == 130 and not _SAID_STOPPED:  # Ctrl-C before a command could say what it kept (loading, setup)
            print("ablate: interrupted", file=sys.stderr)
        # without standalone mode click returns typer.Exit's code instead of exiting with it
        sys.exit(code if isinstance(code, int) else 0)
    except AblateError as e:
        print(f"ablate: error: {e}", file=sys.stderr)
        sys.exit(2)
    except typer.Abort:  # Ctrl-C
        print("ablate: interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (typer.TyperException, click.ClickException) as e:  # usage errors (typer may vendor click)
        print(f"ablate: error: {e.format_message()}", file=sys.stderr)
        sys.exit(getattr(e, "exit_code", 2))


if __name__ == "__main__":
    main()
