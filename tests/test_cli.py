"""The `ablate` command as a user meets it: output, one-line errors, exit code 2, fast help."""
import subprocess
import sys

import pytest
from helpers import ablate


def test_inspect_resnet50_se_reports_the_paper_params(run_cli):
    proc = run_cli("inspect", "resnet50", "--attention", "se", "--position", "block", "--image-size", "64")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "params 28.09M (25.56M plain" in out and "16 insertions" in out


def test_modules_lists_every_module_with_kind_and_defaults(run_cli):
    proc = run_cli("modules")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for expected in ("cbam ", "reduction=16", "pool_types=avg+max", "arrangement=channel_first", "Woo et al.",
                     "stage (not after the last)"):
        assert expected in out
    assert int(out.strip().splitlines()[-1].split()[0]) >= 16


@pytest.mark.parametrize("args, message", [
    (["inspect", "resnet50", "--attention", "cbma"], "unknown attention module 'cbma' (did you mean cbam"),
    (["inspect", "resnt50"], "unknown timm backbone 'resnt50' (did you mean resnet50"),
    (["inspect", "densenet121", "--attention", "se"], "neither an attention slot nor a residual branch"),
    (["inspect", "resnet18", "--attention", "se", "--knob", "foo=1"], "takes no knob 'foo'"),
    (["inspect", "resnet18", "--attention", "se", "--knob", "reduction=1024"], "out of range for 64 channels"),
    (["inspect", "resnet18", "--attention", "cbam", "--knob", "kernel_size=4"], "must be odd"),
    (["inspect", "resnet18", "--attention", "se", "--position", "middle"], "position: 'middle' is not allowed"),
    (["inspect", "resnet18", "--attention", "se", "--stages", "5"], "stage 5 does not exist"),
    (["inspect", "resnet18", "--attention", "se", "--knob", "oops"], "--knob: override 'oops' is not of the form"),
    (["inspect", "resnet18", "--attention", "se", "--stages", "3,x"], "--stages: '3,x' is not a comma-separated"),
    (["inspect", "resnet18", "--bogus"], "No such option: --bogus"),
])
def test_bad_input_is_one_line_exit_2(run_cli, args, message):
    proc = run_cli(*args, "--image-size", "32") if args[-1] != "--bogus" else run_cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_real_process_error_has_no_traceback():  # a process: the exit a user's terminal sees, no test harness
    proc = ablate("inspect", "resnet18", "--attention", "cbma")
    assert proc.returncode == 2
    assert proc.stderr.startswith("ablate: error:") and "Traceback" not in proc.stderr


def test_help_does_not_import_torch():  # a fresh interpreter: this one imported torch long ago
    code = "import sys; from ablate.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit: pass\n" \
           "assert 'torch' not in sys.modules, 'ablate --help imported torch'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
