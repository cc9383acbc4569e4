"""Configs: the validated schemas (pydantic), safe YAML loading, dotted overrides, one-line errors.

Light on purpose (no torch import): the CLI validates configs before anything heavy loads, so bad input fails fast
and touches no store. The modules, one job each:
    trial.py     the trial schema (model, data, train, tracking), and reading a trial file
    data.py      the data configs, one per dataset, chosen by data.name
    study.py     the study and launcher schemas, Slurm's time grammar
    loading.py   YAML under size/depth/alias limits, duplicate keys refused; dotted overrides and flatten
    messages.py  pydantic's errors as one line naming the file and the key
    recipes.py   named, cited training recipes (train.recipe) and their expansion under a trial's own keys
    base.py      the strict model every schema derives from; what editing a key changes (EFFECTS)
"""
from ablate.config.base import EFFECTS, SEED, Strict, effect, keys_with_effect
from ablate.config.data import (
                                DATA_CONFIGS,
                                DATASET_NAMES,
                                Cifar10Data,
                                Cifar100Data,
                                CifarData,
                                ClutteredDigitsData,
                                DataBase,
                                DataConfig,
                                DigitsData,
                                ImageFolderData,
                                SyntheticData,
                                data_config,
)
from ablate.config.loading import (
                                MAX_YAML_BYTES,
                                MAX_YAML_DEPTH,
                                MAX_YAML_NODES,
                                apply_overrides,
                                decode,
                                flatten,
                                load_yaml,
                                read_yaml,
)
from ablate.config.messages import validation_error
from ablate.config.recipes import RECIPE_KEY, RECIPES, Recipe, expand_recipe, recipe_text
from ablate.config.study import (
                                CONSTRAINTS,
                                INTERVALS,
                                LAUNCHER_NAMES,
                                METRICS,
                                SELECTION_ONLY_METRICS,
                                STEP_CONSTRAINTS,
                                Bound,
                                Confirm,
                                LauncherConfig,
                                Objective,
                                Range,
                                SeedsOnDemand,
                                StudyConfig,
                                StudySection,
                                slurm_minutes,
)
from ablate.config.trial import (
                                KNOB_PREFIX,
                                MODULE_KEY,
                                OPTIMIZERS,
                                POSITION_NAMES,
                                AttentionSpec,
                                ModelConfig,
                                TrackingConfig,
                                TrainConfig,
                                TrialConfig,
                                load_trial,
                                parse_trial,
)

__all__ = ["EFFECTS", "SEED", "Strict", "effect", "keys_with_effect",
           "DATA_CONFIGS", "DATASET_NAMES", "Cifar10Data", "Cifar100Data", "CifarData", "ClutteredDigitsData",
           "DataBase", "DataConfig", "DigitsData", "ImageFolderData", "SyntheticData", "data_config",
           "MAX_YAML_BYTES", "MAX_YAML_DEPTH", "MAX_YAML_NODES", "apply_overrides", "decode", "flatten", "load_yaml",
           "read_yaml", "validation_error", "RECIPE_KEY", "RECIPES", "Recipe", "expand_recipe", "recipe_text",
           "CONSTRAINTS", "INTERVALS", "LAUNCHER_NAMES", "METRICS", "SELECTION_ONLY_METRICS", "STEP_CONSTRAINTS",
           "Bound", "Confirm",
           "LauncherConfig", "Objective", "Range",
           "SeedsOnDemand", "StudyConfig", "StudySection", "slurm_minutes",
           "KNOB_PREFIX", "MODULE_KEY", "OPTIMIZERS", "POSITION_NAMES", "AttentionSpec", "ModelConfig",
           "TrackingConfig", "TrainConfig", "TrialConfig", "load_trial", "parse_trial"]
