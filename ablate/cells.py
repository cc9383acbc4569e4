"""A study's configurations as models: the dry forward that checks and prices every cell before any store is touched.

spec says what the configurations are (no torch); this builds them (timm, the injector, the data checks), for the
runner's checks and constraints and the dry run's table.
"""
from __future__ import annotations

from ablate.config import KNOB_PREFIX, MODULE_KEY, TrialConfig
from ablate.data import check_data, dataset_shape
from ablate.errors import at, within
from ablate.models import BuiltModel, build_model, check_weights
from ablate.spec import StudySpec, cell_location, grid_cells, knob_applies, module_of, trial_config, values_to_check


def build_cell(spec: StudySpec, params: dict, location: str, data: bool = True) -> tuple[BuiltModel, TrialConfig]:
    """The model of one configuration (pretrained weights not fetched), after the cheap data checks (`data`);
    errors name the file and the cell."""
    cfg = trial_config(spec, params, spec.cfg.study.seed_list[0])
    with within(f"{spec.path}: {location}"):
        if data:
            check_data(cfg.data)
        if cfg.model.checkpoint:
            with at("model"):
                check_weights(cfg.model.checkpoint)
        model_cfg = cfg.model.model_copy(update={"pretrained": False, "checkpoint": None})  # shapes only
        # with the data checks, the evaluated side too (data.test_size); pricing builds at the trained side only
        test_size = cfg.data.test_size if data else None
        return build_model(model_cfg, *dataset_shape(cfg.data), cfg.data.image_size, test_size), cfg


def check_cells(spec: StudySpec) -> None:
    """Build every distinct model the study can train (grid: each cell; search: the base with each value of each
    space key) and check its data folder, so bad input fails before any store is touched."""
    if spec.is_grid:
        todo = [(c.location, c.params) for c in grid_cells(spec)]
    else:
        todo = [("base", {})]
        for key, values in spec.space.items():
            for value in values_to_check(values):
                if not key.startswith(KNOB_PREFIX):
                    todo.append((f"space.{key}={value}", {key: value}))
                    continue
                for module in spec.space.get(MODULE_KEY, [module_of({}, spec)]):  # each module taking the knob
                    params = {MODULE_KEY: module, key: value}
                    if knob_applies(key, params, spec):
                        todo.append((f"space.{key}={value} with {module}", params))
    seen = set()
    for location, params in todo:
        cfg = trial_config(spec, params, spec.cfg.study.seed_list[0])
        key = (cfg.model.model_dump_json(), cfg.data.model_dump_json())
        if key not in seen:  # training keys (lr, epochs ...) build the same model
            seen.add(key)
            build_cell(spec, params, location)


def cell_cost(spec: StudySpec, params: dict) -> dict[str, float]:
    """A configuration's cost from its dry forward: params (M), GMACs and both as % above the plain backbone."""
    built, _ = build_cell(spec, params, cell_location(params), data=False)
    report = built.report
    return {"params_m": report.params / 1e6, "gmacs": report.gmacs,
            "params_delta_pct": 100 * (report.params - report.base_params) / report.base_params,
            "gmacs_delta_pct": 100 * (report.gmacs - report.base_gmacs) / max(report.base_gmacs, 1e-12)}
