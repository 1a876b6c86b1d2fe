"""visroute: image classification with vision-language models, routed per task.

Data path: images -> features -> heads -> predictions (+ costs) -> routing records -> router.

Public names are imported on first use (module-level ``__getattr__``), so ``import visroute`` and the CLI's
``--help`` / ``--version`` do not pay for torch and transformers.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

from visroute.errors import VisrouteError

# OpenMP threads that wait by sleeping, not spinning: decoding workers and the model share the cores, and a
# spinning thread burns the core a worker needs (measured: 3x the CPU per image for a small model on 2 busy cores).
# Read once when torch loads, so it is set here, before any import of torch; a value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

#: public name -> module that defines it, imported on first attribute access. Extend here to export more.
_LAZY: dict[str, str] = {
    "classify": "visroute.api",
    "evaluate": "visroute.api",
    "Router": "visroute.api",
    "PipelineSpec": "visroute.pipeline.spec",
    "build_pipeline": "visroute.pipeline.build",
    "ZeroShotClassifier": "visroute.heads.zeroshot",
    "DescriptionEnsembleClassifier": "visroute.heads.descriptions",
    "ClassnameFreeClassifier": "visroute.heads.descriptions",
    "DiscriminativeSelectionClassifier": "visroute.heads.selection",
    "KNNRouter": "visroute.router.learn.routers",
    "MLPRouter": "visroute.router.learn.routers",
    "LogisticRouter": "visroute.router.learn.routers",
    "MatrixFactorizationRouter": "visroute.router.learn.routers",
    "SequenceClassifierRouter": "visroute.router.learn.routers",
    "load_model": "visroute.models",
    "parse_model_spec": "visroute.models",
}

__all__ = ["VisrouteError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'visroute' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # static checkers and IDEs see the real objects
    from visroute.api import Router, classify, evaluate
    from visroute.pipeline.build import build_pipeline
    from visroute.pipeline.spec import PipelineSpec
    from visroute.heads.zeroshot import ZeroShotClassifier
    from visroute.models import load_model, parse_model_spec
