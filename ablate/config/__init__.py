"""Configs: the validated schemas (pydantic), safe YAML loading, dotted overrides, one-line errors.

Light on purpose (no torch import): the CLI validates configs before anything heavy loads, so bad input fails fast
and touches no store. The modules, one job each:
    trial.py     the trial schema (model, data, train, tracking), and reading a trial file
    study.py     the study and launcher schemas, Slurm's time grammar
    loading.py   YAML under size/depth/alias limits, duplicate keys refused; dotted overrides and flatten
    messages.py  pydantic's errors as one line naming the file and the key
    base.py      the strict model every schema derives from
"""
from ablate.config.base import SEED, Strict
from ablate.config.loading import (MAX_YAML_BYTES, MAX_YAML_DEPTH, MAX_YAML_NODES, apply_overrides, decode, flatten,
                                   load_yaml, read_yaml)
from ablate.config.messages import validation_error
from ablate.config.study import (CONSTRAINTS, LAUNCHERS, METRICS, Bound, LauncherConfig, Objective, Range,
                                 SeedsOnDemand, StudyConfig, StudySection, slurm_minutes)
from ablate.config.trial import (DATASETS, KNOB_PREFIX, MODULE_KEY, OPTIMIZERS, POSITIONS, AttentionSpec, DataConfig,
                                 ModelConfig, TrackingConfig, TrainConfig, TrialConfig, load_trial, parse_trial)

__all__ = ["SEED", "Strict", "MAX_YAML_BYTES", "MAX_YAML_DEPTH", "MAX_YAML_NODES", "apply_overrides", "decode",
           "flatten", "load_yaml", "read_yaml", "validation_error", "CONSTRAINTS", "LAUNCHERS", "METRICS", "Bound",
           "LauncherConfig", "Objective", "Range", "SeedsOnDemand", "StudyConfig", "StudySection", "slurm_minutes",
           "DATASETS", "KNOB_PREFIX", "MODULE_KEY", "OPTIMIZERS", "POSITIONS", "AttentionSpec", "DataConfig",
           "ModelConfig", "TrackingConfig", "TrainConfig", "TrialConfig", "load_trial", "parse_trial"]
