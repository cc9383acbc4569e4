"""A module paper's own ablations as a study file (`ablate plan MODULE`), and the checklist of those a study has not
run (the report's footnote). The ablations are registry metadata (ablate/attention/ablations.py); no torch here.

The study: the paper's setup as its base (backbone, data, image size, train.recipe), one named cell per ablated value
(the paper's default configuration once, shared by every axis, and the plain backbone as every cell's control), and
the paper's published numbers as reference rows naming those cells, under one row stating the setup they measured
(so another backbone reads `different: backbone` in the report, not `contradicted`).
"""
from __future__ import annotations

import json
import re

import yaml

from ablate.attention import get_attention, resolve_knobs
from ablate.attention.ablations import NAME, POSITION, STAGES, Ablation, PaperAblations, PaperSetup, declared
from ablate.config import KNOB_PREFIX, MODULE_KEY, POSITION_NAMES
from ablate.errors import AblateError
from ablate.spec import StudySpec, grid_cells, trial_config, values_to_check

# where a paper's dataset is, as a study's data section: ImageNet in ImageNet layout, CIFAR fetched by torchvision
DATA = {"imagenet1k": {"name": "imagefolder", "root": "data/imagenet", "num_classes": 1000, "batch_size": 256,
                       "num_workers": 8},
        "cifar100": {"name": "cifar100", "root": "data/cifar100", "download": True, "batch_size": 128}}
DEFAULT_SETUP = ("ImageNet-1K", "resnet50", 224)  # a module whose paper's tables we do not declare
ABBREVIATIONS = {"reduction": "r", "kernel_size": "k", "dilation": "d"}  # as papers write them: SE r=16
NUMBER_DIGITS = {"top1_err": 2, "top5_err": 2, "top1_acc": 2, "top5_acc": 2}  # as the papers print their errors


def ablations_of(module: str) -> PaperAblations:
    """The declared ablations of `module`, or a one-line error naming what exists."""
    info = get_attention(module)  # unknown module: its own one-line error
    entry = declared(info.name)
    if entry is None:
        raise AblateError(f"module {module!r} has no knobs and its paper declares no ablations (nothing to plan)")
    return entry


def setup_of(entry: PaperAblations) -> PaperSetup:
    if entry.setup is not None:
        return entry.setup
    dataset, backbone, image_size = DEFAULT_SETUP
    return PaperSetup(get_attention(entry.module).paper, dataset, backbone, entry.image_size or image_size)


def text(value) -> str:
    """A value as a cell's name and a checklist write it: avg+max, 1+2, null."""
    if isinstance(value, (tuple, list)):
        return "+".join(map(str, value))
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _yaml_value(value):
    return list(value) if isinstance(value, tuple) else value


def cell_name(ablation: Ablation, value) -> str:
    """'reduction r=8 (Table 10)', 'SE-PRE (Table 14)', 'squeeze max (Table 11)', 'extent=2 (not from the paper)'."""
    source = ablation.source or "not from the paper"
    if value in ablation.labels:
        what = ablation.labels[value]
    elif isinstance(value, str):
        what = f"{ablation.key} {value}"
    elif ablation.key in ABBREVIATIONS:
        what = f"{ablation.key} {ABBREVIATIONS[ablation.key]}={text(value)}"
    else:
        what = f"{ablation.key}={text(value)}"
    module = ablation.with_params.get(NAME)
    return f"{module + ' ' if module else ''}{what} ({source})"


def _applies(ablation: Ablation, value) -> bool:
    """Can this ablate express the value? (A position another branch adds is skipped until it lands.)"""
    return ablation.axis != POSITION or value in POSITION_NAMES


def plan_study(module: str, backbone: str | None = None, command: str | None = None) -> str:
    """The study file (YAML text) holding `module`'s paper's ablation grid on `backbone` (default the paper's)."""
    entry = ablations_of(module)
    setup = setup_of(entry)
    backbone = backbone or setup.backbone
    default_name = f"{entry.module} (the paper's default)"
    plain_name = f"{backbone} (no attention)"
    cells = [{"name": default_name}, {"name": plain_name, MODULE_KEY: "none"}]
    reference = [{"match": {}, "dataset": setup.dataset, "backbone": setup.backbone, "image_size": setup.image_size,
                  **({"epochs": setup.epochs} if setup.epochs else {}),
                  **({"recipe": setup.recipe} if setup.recipe and setup.recipe_stated else {}),
                  "source": setup.paper}] \
        if entry.setup is not None else []  # without the paper's tables no row may claim what it measured
    if setup.baseline:
        reference.append({"match": {"name": plain_name}, **setup.baseline, "source": setup.baseline_source})
    skipped, default_published = [], dict(setup.default)
    default_sources = [setup.default_source] if setup.default else []
    for ablation in entry.ablations:
        for value in ablation.values:
            published = ablation.published.get(value)
            if not ablation.with_params and value == ablation.default:  # the default cell, shared by every axis
                if published and set(published) - set(default_published):  # a table adds a number (Table 13: GMACs)
                    default_published = {**published, **default_published}
                    default_sources.append(ablation.source)
                continue
            if not _applies(ablation, value):
                skipped.append(f"{ablation.key} {text(value)} ({ablation.source}): not a position of this ablate")
                continue
            name = cell_name(ablation, value)
            cells.append({"name": name, **ablation.with_params, ablation.axis: _yaml_value(value)})
            if published:
                reference.append({"match": {"name": name}, **published, "source": ablation.source})
    if default_published:
        reference.insert(1 + bool(setup.baseline) if reference else 0,
                         {"match": {"name": default_name}, **default_published, "source": ", ".join(default_sources)})
    data = _data(setup)
    doc = {
        "study": {"name": f"{entry.module}_paper" + ("" if backbone == setup.backbone else f"_{backbone}"),
                  "metric": "val/acc1", "sampler": "grid", "seeds": [0]},
        "base": {"model": {"backbone": backbone, "attention": {"name": entry.module}},
                 "data": data, **({"train": {"recipe": setup.recipe}} if setup.recipe else {})},
    }
    return _header(entry, setup, backbone, skipped, command) + yaml.safe_dump(doc, sort_keys=False) \
        + "cells:\n" + "".join(f"  - {_flow(c)}\n" for c in cells) \
        + ("reference:\n" + "".join(f"  - {_flow(r)}\n" for r in reference) if reference else "")


def _data(setup: PaperSetup) -> dict:
    """The base's data section; with a recipe its batch size is the recipe's (hu2018_se: 1024 for its lr 0.6)."""
    key = "".join(c for c in setup.dataset.lower() if c.isalnum())
    data = {**DATA.get(key, DATA["imagenet1k"]), "image_size": setup.image_size}
    return {k: v for k, v in data.items() if not (setup.recipe and k == "batch_size")}


def _flow(row: dict) -> str:
    """One cell or reference row on one line, each published number with the decimals the paper printed (22.20,
    not 22.2: the report reads a number's precision from the file's text)."""
    parts = []
    for key, value in row.items():
        if key in NUMBER_DIGITS and isinstance(value, float):
            shown = f"{value:.{NUMBER_DIGITS[key]}f}"
        elif isinstance(value, dict):
            shown = _flow(value)
        else:
            shown = _scalar(value)
        parts.append(f"{_scalar(key)}: {shown}")
    return "{" + ", ".join(parts) + "}"


def _scalar(value) -> str:
    """A value inside a flow mapping: strings YAML would misread there (commas, colons, quotes) as JSON strings."""
    if isinstance(value, str):
        return value if re.fullmatch(r"[A-Za-z0-9_.=+ ()-]+", value) and value.strip() == value else json.dumps(value)
    return yaml.safe_dump(_yaml_value(value), default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def _header(entry: PaperAblations, setup: PaperSetup, backbone: str, skipped: list[str], command: str | None) -> str:
    sources = ", ".join(dict.fromkeys(a.source for a in entry.ablations if a.source)) or "none"
    lines = [f"Generated by `{command or f'ablate plan {entry.module} --backbone {backbone}'}` from the ablations "
             f"ablate declares for {entry.module} (ablate/attention/ablations.py).",
             f"Paper: {setup.paper}; its ablations: {sources}.",
             (f"Its setup: {setup.dataset}, {setup.backbone}, {setup.image_size} px"
              + (f", train.recipe {setup.recipe}" if setup.recipe and setup.recipe_stated else "")
              + "; the reference rows state it, so on another backbone the report reads `different: backbone`."
              + ("" if setup.recipe_stated or not setup.recipe else f" The paper's own training is no ablate recipe: "
                 f"this study trains {setup.recipe}, the closest, and its rows state no recipe (see "
                 "ablate/attention/ablations.py).")) if entry.setup is not None else
             (f"No table of its paper is declared: the base is ablate's default setup ({setup.dataset}, "
              f"{setup.backbone}, {setup.image_size} px) and there are no reference rows."),
             "Dry run (our params and GMACs beside the paper's; no data needed): ablate run THIS_FILE --dry-run "
             "(add study.price_steps=false to skip timing each cell's training step: minutes on a CPU)",
             f"Run: ablate run THIS_FILE (needs {setup.dataset} under the base's data.root)."]
    lines += [f"Not generated: {s}." for s in skipped]
    lines += [f"{a.source}, {a.title}: {a.note}." for a in entry.ablations if a.note]
    lines += [f"Ablations not from the paper (the registry's choices or a grid round the default, no numbers): "
              f"{', '.join(a.key for a in entry.ablations if not a.source)}."] \
        if any(not a.source for a in entry.ablations) else []
    return "".join(f"# {line}\n" for line in lines)


# ---------------------------------------------------------------- the missing-ablation checklist

def missing_ablations(spec: StudySpec) -> list[str]:
    """One line per declared ablation of each module the study uses that it has not run ('not run: ...'), or has
    run for some of its values ('partially run: ..., missing ...')."""
    views = [_view(spec, params) for params in _configurations(spec)]
    modules = list(dict.fromkeys(v[NAME] for v in views if v[NAME] != "none"))
    lines, done = [], set()
    for module in modules:
        entry = declared(module)
        if entry is None or entry.module in done:
            continue
        done.add(entry.module)
        paper = setup_of(entry).paper if entry.setup else "not from the paper"
        for ablation in entry.ablations:
            wanted = {text(v): f"{text(v)} ({ablation.labels[v]})" if v in ablation.labels else text(v)
                      for v in ablation.values}
            owner = {NAME: entry.module, **ablation.with_params}
            seen = {v.get(ablation.axis) for v in views if all(v.get(k) == text(x) for k, x in owner.items())}
            missing = [shown for shown in wanted if shown not in seen]
            cite = f"({paper}, {ablation.source})" if ablation.source else f"({paper})"
            what = f"{entry.module} {ablation.title}"
            if len(wanted) - len(missing) <= 1:
                lines.append(f"not run: {what} {'/'.join(wanted.values())} {cite}")
            elif missing:
                lines.append(f"partially run: {what}, missing {'/'.join(wanted[m] for m in missing)} {cite}")
    return lines


def _configurations(spec: StudySpec) -> list[dict]:
    """The dotted params of every configuration a study runs: a grid's cells; a search's base with each value of
    each space key (and each module of the space with each knob value)."""
    if spec.is_grid:
        return [cell.params for cell in grid_cells(spec)]
    out = [{}]
    modules = spec.space.get(MODULE_KEY)
    for key, values in spec.space.items():
        for value in values_to_check(values):
            if key.startswith(KNOB_PREFIX) and modules:
                out += [{MODULE_KEY: m, key: value} for m in values_to_check(modules)]
            else:
                out.append({key: value})
    return out


def _view(spec: StudySpec, params: dict) -> dict:
    """A configuration as the checklist compares it: module, position, stages and every knob, each as text()."""
    try:
        attention = trial_config(spec, params, 0).model.attention
    except AblateError:  # a search's knob value its module cannot take: not a configuration it runs
        return {NAME: "none"}
    view = {NAME: attention.name}
    if attention.name == "none":
        return view
    info = get_attention(attention.name)
    try:
        knobs = resolve_knobs(attention.name, attention.knobs)
    except AblateError:
        return {NAME: "none"}
    view[POSITION] = attention.position or (info.placement.position if info.placement else None)
    view[STAGES] = attention.stages
    view |= {KNOB_PREFIX + k: v for k, v in knobs.items()}
    return {k: text(v) for k, v in view.items()}

