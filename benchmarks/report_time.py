"""Fast to read: `ablate report STUDY` wall time, this tree against an earlier commit, side by side in one run.

Both variants run the same command on the same stores (default: the headline study, cbam_vs_se, in ./mlruns: run
`ablate run studies/cbam_vs_se.yaml` first), alternating, --runs times each. Printed: median and fastest wall
seconds, whether both print the same table, and where a run's time goes: what its process imports of the heavy
packages (python -X importtime, one extra run each: cumulative seconds, so a row holds what that package imports
first, timm holding torchvision; importtime itself adds a little).

    python benchmarks/report_time.py                       # this tree vs 9c8fe9f, the commit before the fast report
    python benchmarks/report_time.py --before HEAD~1 --runs 9 --study budget
"""
from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "timm", "torchvision", "pytorch_lightning", "sklearn", "mlflow", "scipy.stats", "scipy.special",
         "pandas", "optuna", "matplotlib")
# the package's root first on the path: before the working directory's ablate/ and the editable install
MAIN = ("import sys; sys.path.insert(0, sys.argv[1]); from ablate.cli import main; "
        "sys.argv = ['ablate', *sys.argv[2:]]; main()")


def checkout(rev: str, into: Path) -> Path:
    """The package `ablate/` as it was at `rev` (git archive: no worktree, nothing in the repository changes)."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", rev, "ablate"], check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def report(root: Path, args: list[str], cwd: Path, *flags: str) -> subprocess.CompletedProcess:
    """One `ablate report` with the package at `root`."""
    return subprocess.run([sys.executable, *flags, "-c", MAIN, str(root), "report", *args], cwd=cwd,
                          capture_output=True, text=True)


def imported(stderr: str) -> dict[str, float]:
    """Seconds each heavy package took to import, from python -X importtime: the largest cumulative time of its
    own line or of its submodules' (where a package is first imported inside another, only those may be listed)."""
    found = dict.fromkeys(HEAVY, 0.0)
    for line in stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2 and line.split("|")[1].strip().isdigit():
            _, cumulative, name = line.split("|")
            for package in HEAVY:
                if name.strip() == package or name.strip().startswith(package + "."):
                    found[package] = max(found[package], int(cumulative) / 1e6)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default="9c8fe9f", help="the git revision to compare with")
    parser.add_argument("--study", default="cbam_vs_se")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cwd", default=".", help="the folder whose mlruns/ holds the study")
    opts = parser.parse_args()
    cwd = Path(opts.cwd).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        variants = {f"before ({opts.before})": checkout(opts.before, Path(tmp)), "now (this tree)": REPO}
        times: dict[str, list[float]] = {name: [] for name in variants}
        outputs = {}
        for _ in range(opts.runs):
            for name, root in variants.items():  # alternating: a busy moment slows both, not one
                start = time.perf_counter()
                proc = report(root, [opts.study], cwd)
                times[name].append(time.perf_counter() - start)
                if proc.returncode:
                    sys.exit(f"{name}: ablate report {opts.study} failed: {proc.stderr.strip()[-2000:]}")
                outputs[name] = proc.stdout
        imports = {name: imported(report(root, [opts.study], cwd, "-X", "importtime").stderr)
                   for name, root in variants.items()}
    rows = {name: {"median (s)": statistics.median(t), "fastest (s)": min(t), "runs": len(t)}
            for name, t in times.items()}
    table = pd.DataFrame(rows).T
    before, now = (table.loc[name, "median (s)"] for name in variants)
    print(f"ablate report {opts.study}: wall time, {opts.runs} alternating runs each\n")
    print(table.to_string(float_format="{:.2f}".format))
    print(f"\nspeed-up (median): {before / now:.1f}x; same table printed: "
          f"{'yes' if len(set(outputs.values())) == 1 else 'no'}\n")
    print("where the time goes: seconds spent importing each package (cumulative, 0 = not imported)\n")
    print(pd.DataFrame(imports).to_string(float_format="{:.2f}".format))


if __name__ == "__main__":
    main()
