"""A study file's `reference:` rows, the paper's numbers: which columns they fill, which configuration each names
(one matcher for the study file's checks, the report's columns and the runner's effects), and what the paper
published for a configuration, and how precisely it printed it. No torch, no pandas."""
from __future__ import annotations

import difflib
import math
import re
from pathlib import Path

import yaml

from ablate.errors import AblateError, at
from ablate.replication import Published

# a study file's reference keys -> the report's column names; other keys describe the row in words
REFERENCE_COLUMNS = {"top1_err": "top-1 err", "top5_err": "top-5 err", "top1_acc": "top-1 acc",
                     "top5_acc": "top-5 acc", "params_m": "params (M)", "gflops": "GMACs", "gmacs": "GMACs"}
# the setup a row measured, compared with each configuration's own (setup_of); `source` (words) says where it is printed
SETUP_KEYS = ("dataset", "backbone", "image_size", "epochs", "recipe")
SIZE_KEYS = ("backbone", "image_size")  # where these agree, params and GMACs are comparable
WHOLE_NUMBER_SETUP = ("image_size", "epochs")
DATASET_ALIASES = {"imagenet1k": "imagenet", "in1k": "imagenet", "ilsvrc2012": "imagenet"}
# keys about the row's numbers: `sd` the paper's seed-to-seed sd of top-1 (points, replication.py), `decimals` the
# decimals each number was printed with where the study file's text cannot say it (read_printed)
ABOUT_NUMBERS = ("sd", "decimals")
# our params match the paper's within half a unit of its last printed digit (half_unit); our GMAC delta the
# paper's within both rows' rounding plus this share of the paper's delta (counters differ: 4.089 vs 3.858)
GMACS_DELTA_RELATIVE = 0.10
MATCH_RULE = ("params match the paper's within half a unit of its last printed digit (25.56: ±0.005M), the GMAC "
              "delta within both rows' rounding plus {:.0%} of the paper's delta.".format(GMACS_DELTA_RELATIVE))


def check_reference(reference: list[dict], cells: list | None) -> None:
    """Published numbers must land in a column and on a row: a typo'd key, a number written as a string or a
    match that names no configuration (of a grid's `cells`, spec.Cell) would make the row disappear without a
    word."""
    for i, ref in enumerate(reference):
        with at(f"reference[{i}]"):
            match = ref.get("match", {})
            if not isinstance(match, dict):
                raise AblateError(f"match: {match!r} is not a mapping of keys to values", key=None)
            _check_about_numbers(ref)
            _check_setup(ref)
            for key, value in ref.items():
                if key in ("match", *ABOUT_NUMBERS, *WHOLE_NUMBER_SETUP):
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


def setup_of(cfg) -> dict:
    """A configuration's setup (its TrialConfig) in a reference row's terms; an image folder is named by its folder
    (data.root: /data/imagenet is `imagenet`). `image_size` is the size top-1 is measured at (data.test_size where
    set: ResNet strikes back's A3 trains at 160 px and is published at 224). `recipe` is compared once a
    configuration names one (train.recipe)."""
    data = cfg.data
    dataset = Path(data.root).name if data.name == "imagefolder" and data.root else data.name
    return {"dataset": dataset, "backbone": cfg.model.backbone, "image_size": data.test_size or data.image_size,
            "epochs": cfg.train.epochs, "recipe": getattr(cfg.train, "recipe", None)}


def _same(key: str, paper, ours) -> bool:
    """ResNet-50 is resnet50, ImageNet-1K is imagenet: case, spaces and punctuation aside."""
    paper, ours = (re.sub(r"[^a-z0-9]", "", str(v).lower()) for v in (paper, ours))
    if key == "dataset":
        paper, ours = DATASET_ALIASES.get(paper, paper), DATASET_ALIASES.get(ours, ours)
    return paper == ours


def stated_setup(rows: list[dict]) -> dict:
    """The setup the reference rows naming a configuration state, each key from the first row that states it: a
    row with only `match` and setup keys is a default (`{match: {}, dataset: ImageNet-1K, image_size: 224}` for
    the whole study), as for `sd`."""
    return {key: next(r[key] for r in rows if key in r) for key in SETUP_KEYS if any(key in r for r in rows)}


def setup_gap(stated: dict, ours: dict | None, keys=SETUP_KEYS) -> list[str]:
    """The parts of a stated setup (of `keys`) that differ from a configuration's: [] where all agree, or where
    nothing is stated (the study file then vouches for the setup, as before rows carried one)."""
    if ours is None:
        return []
    return [key for key in keys if key in stated and ours.get(key) is not None
            and not _same(key, stated[key], ours[key])]


def setup_note(rows: list[dict], ours: dict) -> str | None:
    """One cell saying whether the reference rows naming a configuration measured its setup: `same`, `different:
    backbone, image_size`, or None where they state no setup."""
    stated = stated_setup(rows)
    if not stated:
        return None
    gap = setup_gap(stated, ours)
    return f"different: {', '.join(gap)}" if gap else "same"


def published_top1(reference: list[dict], params: dict, label: str, setup: dict | None = None) -> float:
    """The paper's top-1 accuracy of a configuration in points (the first matching row's top1_acc, or 100 -
    top1_err) with its noise (replication.Published): the row's `sd`, else the first matching row's that carries
    one (a row with only `match` and `sd` is a default, e.g. per dataset: {match: {data.name: cifar10}, sd: 0.16};
    `match: {}` for the whole study), else NaN. A row whose stated setup differs from the configuration's (`setup`,
    setup_of) publishes no effect for it: ImageNet's delta says nothing about cluttered digits."""
    rows = [r for r in reference if matches(r.get("match", {}), params, label)]
    if setup_gap(stated_setup(rows), setup):
        return float("nan")
    sd = next((r["sd"] for r in rows if "sd" in r), None)
    for ref in rows:
        for key, to_accuracy in (("top1_acc", lambda v: v), ("top1_err", lambda v: 100 - v)):
            value = ref.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return Published(to_accuracy(value), ref.get("sd", sd))  # with its noise, for stats.reproduction
    return float("nan")


def _check_setup(ref: dict) -> None:
    """image_size and epochs: whole numbers >= 1; dataset, backbone and recipe: words."""
    for key in SETUP_KEYS:
        if key not in ref:
            continue
        value = ref[key]
        if key in WHOLE_NUMBER_SETUP and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise AblateError(f"{value!r} is not a whole number >= 1 (the {key} the paper trained at)", key=key)
        if key not in WHOLE_NUMBER_SETUP and not isinstance(value, str):
            raise AblateError(f"{value!r}: the paper's {key} is a name (e.g. backbone: ResNet-50)", key=key)


def _check_about_numbers(ref: dict) -> None:
    """`sd`: a number of points >= 0; `decimals`: a mapping of the row's number keys to counts of decimals."""
    sd = ref.get("sd", 0.0)
    if isinstance(sd, bool) or not isinstance(sd, (int, float)) or not sd >= 0:
        raise AblateError(f"{sd!r} is not a standard deviation (the paper's seed-to-seed sd of top-1, points, >= 0)",
                          key="sd")
    decimals = ref.get("decimals", {})
    if not isinstance(decimals, dict):
        raise AblateError(f"{decimals!r} is not a mapping of number keys to decimals (e.g. {{gmacs: 3}})",
                          key="decimals")
    for key, value in decimals.items():
        if key not in ref or key not in REFERENCE_COLUMNS or isinstance(value, bool) or not isinstance(value, int) \
                or value < 0:
            raise AblateError(f"{key}: {value!r}: decimals name one of this row's numbers and count its printed "
                              "decimals (an integer >= 0)", key="decimals")


def printed_decimals(text: str) -> list[dict[str, int]]:
    """Each `reference:` row's numbers' decimals as the study file writes them: YAML reads 3.860 as 3.86, the paper
    printed three decimals, and the node tree keeps the scalar's own text. A number in exponent notation says
    nothing about its digits and is left out."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    rows = next((v for k, v in root.value if k.value == "reference"), None) if isinstance(root, yaml.MappingNode) \
        else None
    if not isinstance(rows, yaml.SequenceNode):
        return []
    out = []
    for row in rows.value:
        pairs = row.value if isinstance(row, yaml.MappingNode) else []
        written = {k.value: re.fullmatch(r"[+-]?\d*(?:\.(\d*))?", v.value) for k, v in pairs
                   if isinstance(v, yaml.ScalarNode) and k.value in REFERENCE_COLUMNS}
        out.append({key: len(m.group(1) or "") for key, m in written.items() if m})
    return out


def read_printed(reference: list[dict], path: Path) -> None:
    """Each row's `decimals` from the study file's text, where the row does not state them itself."""
    for ref, found in zip(reference, printed_decimals(path.read_text(encoding="utf-8")), strict=False):
        ref["decimals"] = {**found, **ref.get("decimals", {})}


def half_unit(ref: dict, key: str) -> float:
    """Half a unit of the last digit a row's number was printed with (25.56 -> 0.005): what rounding hides. Without
    `decimals` (a row not read from a file), the digits of the number itself, a lower bound."""
    decimals = ref.get("decimals", {}).get(key)
    if decimals is None:
        text = repr(float(ref[key]))
        decimals = len(text.split(".")[1]) if "." in text and "e" not in text else 0
    return 0.5 * math.pow(10, -decimals)
