"""The pages a person reads stay true: every `ablate ...` command README.md and docs/*.md show is one the CLI accepts
(parsed by the CLI's own parser, nothing run), their links lead to pages, and the README keeps the test line CI runs."""
import re
import shlex
from pathlib import Path

import pytest
import typer

from ablate.cli import app

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# the prose's placeholders, as a reader would fill them in
PLACEHOLDERS = {"STUDY": "cbam_vs_se", "STUDY.yaml": "studies/cbam_vs_se.yaml", "MODULE": "se", "N": "6",
                "ROW": "attention=none", "...": "local"}
SHELL = {"&&", "||", ";", "|", ">", "<"}  # where the shell takes over from the `ablate` command


def shown_commands(text: str) -> tuple[list[str], list[str]]:
    """(the command lines of the code blocks, joined over `\\` continuations; the `ablate ...` spans of the prose).
    A code block's line is a whole command; a span in a sentence may name a command without its arguments."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
    lines = [line.strip() for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M).replace("\n", " ")
    return [line for line in lines if line.startswith("ablate ")], re.findall(r"`(ablate [^`]*)`", prose)


def parse(command: str, whole: bool) -> None:
    """Parse `command` as `ablate` would, without running it: an unknown command or option, a bad value (or, for a
    whole command, a missing argument) raises the CLI's usage error."""
    group = typer.main.get_command(app)
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split, lexer.commenters = True, "#"
    words = list(lexer)
    words = words[:next((i for i, w in enumerate(words) if w in SHELL), len(words))]  # `ablate ... && cp ...`
    args = [PLACEHOLDERS.get(a, a) for a in words[1:]]
    parent = group.make_context("ablate", args[:1])
    found = group.get_command(parent, args[0])
    if found is None:
        raise typer.BadParameter(f"no command {args[0]!r}")
    try:
        found.make_context(args[0], args[1:], parent=parent)
    except typer.BadParameter as e:
        # a sentence may name a command without its arguments (`ablate report --log`): only that is let pass
        if whole or type(e).__name__ != "MissingParameter":
            raise


def every_command() -> list[tuple[str, str, bool]]:
    shown = []
    for page in PAGES:
        whole, named = shown_commands(page.read_text())
        shown += [(page.name, c, True) for c in whole] + [(page.name, c, False) for c in named]
    return shown


def test_every_command_the_docs_show_is_accepted():
    shown = every_command()
    assert len({c for _, c, _ in shown}) >= 30  # the pages do show commands: the parse below is not vacuous
    refused = []
    for page, command, whole in shown:
        try:
            parse(command, whole)
        except (typer.TyperException, typer.Exit) as e:
            refused.append(f"{page}: {command}: {e}")
    assert not refused, "\n".join(refused)


@pytest.mark.parametrize("command, whole", [("ablate reprot STUDY", True), ("ablate report STUDY --formt md", True),
                                            ("ablate run --jobs 0 STUDY.yaml", True), ("ablate run", True),
                                            ("ablate inspect --knobs reduction=8", False)])
def test_a_command_the_cli_refuses_is_caught(command, whole):
    with pytest.raises(typer.TyperException):
        parse(command, whole)


def test_links_between_pages_lead_to_pages():
    missing = [f"{page.name}: {target}" for page in PAGES
               for target in re.findall(r"\]\(([^)#:]+\.md)(?:#[^)]*)?\)", page.read_text())
               if not (page.parent / target).is_file()]
    assert not missing, missing


def test_the_readme_keeps_the_test_line_ci_runs():
    """.ci/run runs the README's first line that starts with `python -m pytest`."""
    lines = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("python -m pytest")]
    assert lines[:1] == ["python -m pytest -q --durations=25"]
