"""A study's progress as a user sees it: at a terminal, the study bar (done / total, pruned, failed) over each
trial's bar, with nothing else interleaved (Lightning's srun hint is silenced); elsewhere one line per trial and
no escape codes; with --jobs N the parent draws the bar and prints each trial's line once."""
import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time

import yaml
from helpers import TINY_BASE, Toy, cli_env, write_study

from ablate.plan import StudyPlan
from ablate.spec import load_study
from ablate.study.progress import QUIET, StudyBar
from ablate.study.runner import prepare_study
from ablate.study.workers import _worker, planned_trials, wanted

LINE = "[tiny] trial {} complete | {}/{} done, 0 pruned, 0 failed"


def at_terminal(args: list[str], env: dict, timeout: float = 300) -> tuple[int, str, str]:
    """`ablate ARGS` with stdout on a pseudo-terminal of 24 x 120 (as a user's shell) and stderr on a pipe:
    exit code, what the terminal received, stderr."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a pty starts 0 columns wide
    proc = subprocess.Popen([sys.executable, "-m", "ablate.cli", *args], stdin=slave, stdout=slave,
                            stderr=subprocess.PIPE, env=env)
    os.close(slave)
    out, deadline = b"", time.time() + timeout
    try:
        while time.time() < deadline:
            if select.select([master], [], [], 1)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the process closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
        err = proc.communicate(timeout=60)[1]
    finally:
        os.close(master)
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def test_a_terminal_shows_the_study_bar_and_no_third_party_noise(tmp_path):
    """A real process at a terminal, on a machine where Slurm is installed (a fake srun when it is not): the study
    bar ends at 2/2, Lightning's trial bar ran under it, each trial has its line, and stderr holds no warning."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake / "srun").chmod(0o755)
    base = TINY_BASE | {"train": {"epochs": 1, "progress_bar": True}}
    path = write_study(tmp_path / "tiny.yaml", base=base, study={"name": "tiny", "seeds": [0], "price_steps": False})
    env = cli_env(PATH=f"{fake}{os.pathsep}{os.environ['PATH']}", COLUMNS="120")
    code, out, err = at_terminal(["run", str(path)], env)
    assert code == 0, err[-2000:]
    assert "tiny: 100%" in out and "2/2 [" in out and "0 pruned, 0 failed]" in out  # the bar's final state
    assert "Epoch 0: 100%" in out  # the trial's own bar (Lightning's), drawn under the study bar
    assert LINE.format(0, 1, 2) in out and LINE.format(1, 2, 2) in out
    # Lightning's hint, or any other warning: MLflow's two INFO lines when it creates the store are all there is
    assert "srun" not in err and "Warning" not in err, err


def test_output_that_is_no_terminal_gets_one_line_per_trial(tmp_path, run_cli):
    """CI, a Slurm log, a pipe: today's lines, one per trial, and neither a bar nor an escape code."""
    base = TINY_BASE | {"train": {"epochs": 1, "progress_bar": True}}
    path = write_study(tmp_path / "tiny.yaml", base=base, study={"name": "tiny", "seeds": [0], "price_steps": False})
    proc = run_cli("run", path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("[tiny] trial ")]
    assert lines[0].startswith(LINE.format(0, 1, 2)) and lines[1].startswith(LINE.format(1, 2, 2)), proc.stdout
    assert len(lines) == 2 and "\x1b[" not in proc.stdout and "trial/s" not in proc.stdout and "%|" not in proc.stdout


def test_the_parent_of_several_workers_draws_their_bar(tmp_path, capfd):
    """--jobs N with the bar: the workers print nothing of their own (QUIET) and the parent, polling the storage,
    prints each trial's line exactly once and ends the bar at the study's total. In this process, in turn: what the
    spawned workers and the parent's polling loop do at once (tests/test_study.py spawns real ones)."""
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({"study": {"name": "tiny", "seeds": [0, 1], "price_steps": False},
                                    "base": TINY_BASE, "space": {"model.attention.name": ["none", "se"]}}))
    plan = StudyPlan(load_study(path))
    prepared = prepare_study(plan, jobs=2)
    pairs = wanted(plan)
    bar = StudyBar(prepared.study, pairs, planned_trials(plan, pairs))
    _worker(plan, None, 2, 0, prepared.parent, Toy(), QUIET)
    assert "[tiny] trial" not in capfd.readouterr().out  # the worker's own output
    bar.poll(prepared.study)
    bar.poll(prepared.study)  # a second look prints nothing again
    bar.close(prepared.study)
    out = capfd.readouterr().out
    assert "tiny: 100%" in out and "4/4 [" in out and "0 pruned, 0 failed]" in out, out
    lines = [line for line in out.replace("\r", "\n").splitlines() if line.startswith("[tiny] trial ")]
    assert sorted(line.split(" complete")[0] for line in lines) == [f"[tiny] trial {n}" for n in range(4)], lines


def test_an_unknown_progress_mode_is_one_line(tmp_path, run_cli):
    path = write_study(tmp_path / "tiny.yaml")
    proc = run_cli("run", path, "--progress", "fancy")
    assert proc.returncode == 2 and proc.stderr.strip() == \
        "ablate: error: --progress: 'fancy' is not one of auto, bar, lines", proc.stderr
    assert not (tmp_path / "mlruns").exists()  # refused before either store
