"""A study resolved once: its base trial config, its cells (key, params, labels) and their trial configs.

The runner, its queue and checks, and the results reader are handed a StudyPlan instead of re-deriving the study
file's meaning at every turn (spec.py holds the rules; this holds their results for one study file as it reads
now). No torch: a cell's cost (params, GMACs) is priced by the caller's `price` (cells.cell_cost builds the model)
and kept.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from ablate.config import TrialConfig, flatten
from ablate.spec import Cell, StudySpec, cell_key, keyed_cells, module_of, trial_config

__all__ = ["Cell", "StudyPlan"]


@dataclass
class StudyPlan:
    spec: StudySpec
    costs: dict[str, dict[str, float]] = field(default_factory=dict)  # cell key -> its price, once priced
    step_prices: dict[str, dict] = field(default_factory=dict)  # cell key -> its step's price (step_cost.py)

    @cached_property
    def base(self) -> TrialConfig:
        """The base trial config (seed: the study's first)."""
        return self.config({}, self.first_seed)

    @cached_property
    def flat_base(self) -> dict:
        return flatten(trial_config(self.spec, {}, 0))  # what cell keys are computed against

    @cached_property
    def cells(self) -> dict[str, Cell]:
        """A grid's cells by key, in file order ({} for a search)."""
        if not self.spec.is_grid:
            return {}
        return keyed_cells(self.spec)

    @property
    def first_seed(self) -> int:
        return self.spec.cfg.study.seed_list[0]

    @property
    def name(self) -> str:
        return self.spec.name

    def cell(self, params: dict) -> Cell:
        """The cell a configuration is (a sampled one's key computed against the resolved base)."""
        return Cell(cell_key(self.spec, params, self.flat_base), params)

    def config(self, params: dict, seed: int) -> TrialConfig:
        return trial_config(self.spec, params, seed)

    def module(self, params: dict) -> str:
        return module_of(params, self.spec)

    def cost(self, cell: Cell, price) -> dict[str, float]:
        """A cell's params and GMACs from its dry forward (`price`: cells.cell_cost), priced once."""
        if cell.key not in self.costs:
            self.costs[cell.key] = price(self.spec, cell.params)
        return {**self.costs[cell.key], **self.step_prices.get(cell.key, {})}  # and its step's, once measured
