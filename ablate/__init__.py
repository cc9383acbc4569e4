"""ablate: attention-module ablations and architecture search on timm backbones.

The public API, in timm's manner (everything else is internal):

    model = ablate.create_model("resnet50", "cbam", position="block", knobs={"reduction": 8}, num_classes=10)
    report = ablate.inject_attention(timm.create_model("resnet18"), "se")   # into a model one already has
    ablate.list_modules(), ablate.list_positions()
    results = ablate.load_study("cbam_vs_se")   # .table, .trials, .samples: pandas DataFrames
"""
import importlib

__version__ = "0.1.0"

__all__ = ["StudyResults", "create_model", "inject_attention", "list_modules", "list_positions", "load_study"]

# each public name -> the module that defines it, imported on first use: `import ablate` loads no torch or MLflow
_HOME = {"create_model": "ablate.api", "inject_attention": "ablate.api", "list_modules": "ablate.api",
         "list_positions": "ablate.api", "load_study": "ablate.api_results", "StudyResults": "ablate.api_results"}


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'ablate' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME[name]), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
