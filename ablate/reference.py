"""A study file's `reference:` rows, the paper's numbers: which columns they fill, which configuration each names
(one matcher for the study file's checks, the report's columns and the runner's effects), and what the paper
published for a configuration. No torch, no pandas."""
from __future__ import annotations

import difflib

from ablate.errors import AblateError, at

# a study file's reference keys -> the report's column names; other keys describe the row in words
REFERENCE_COLUMNS = {"top1_err": "top-1 err", "top5_err": "top-5 err", "top1_acc": "top-1 acc",
                     "top5_acc": "top-5 acc", "params_m": "params (M)", "gflops": "GMACs", "gmacs": "GMACs"}


def check_reference(reference: list[dict], cells: list | None) -> None:
    """Published numbers must land in a column and on a row: a typo'd key, a number written as a string or a
    match that names no configuration (of a grid's `cells`, spec.Cell) would make the row disappear without a
    word."""
    for i, ref in enumerate(reference):
        with at(f"reference[{i}]"):
            match = ref.get("match", {})
            if not isinstance(match, dict):
                raise AblateError(f"match: {match!r} is not a mapping of keys to values", key=None)
            for key, value in ref.items():
                if key == "match":
                    continue
                close = difflib.get_close_matches(str(key), REFERENCE_COLUMNS, n=1, cutoff=0.7)
                if key in REFERENCE_COLUMNS:
                    if isinstance(value, bool) or not isinstance(value, (int, float)):
                        raise AblateError(f"{value!r} is not a number (a published {REFERENCE_COLUMNS[key]})",
                                          key=str(key))
                elif isinstance(value, (int, float)) and not isinstance(value, bool) or close:
                    columns = ", ".join(REFERENCE_COLUMNS)
                    hint = f"did you mean {close[0]!r}?" if close else f"numbers go under {columns}"
                    raise AblateError(f"unknown reference column ({hint})", key=str(key))
                elif not isinstance(value, str):
                    raise AblateError(f"{value!r}: a description is a string (numbers go under "
                                      f"{', '.join(REFERENCE_COLUMNS)})", key=str(key))
            if cells is not None and not any(matches(match, c.params, c.label) for c in cells):
                raise AblateError(f"match: {match} names no configuration of the grid (its rows: "
                                  f"{', '.join(c.label for c in cells[:6])}{' ...' if len(cells) > 6 else ''})")


def matches(match: dict, params: dict, label: str) -> bool:
    """Does a `reference:` row's `match` name this configuration (its dotted params, or `name`: its label)?"""
    return all(str(label if key == "name" else params.get(key, object())) == str(value) for key, value in match.items())


def reference_row(reference: list[dict], params: dict, label: str) -> dict | None:
    """The first `reference:` row that matches the configuration, or None."""
    return next((r for r in reference if matches(r.get("match", {}), params, label)), None)


def published_top1(reference: list[dict], params: dict, label: str) -> float:
    """The paper's top-1 accuracy of a configuration in points (its row's top1_acc, or 100 - top1_err), else NaN."""
    ref = reference_row(reference, params, label) or {}
    for key, to_accuracy in (("top1_acc", lambda v: v), ("top1_err", lambda v: 100 - v)):
        value = ref.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(to_accuracy(value))
    return float("nan")
