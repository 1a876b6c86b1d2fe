"""visroute: image classification with vision-language models, routed per task.

Data path: images -> features -> heads -> predictions (+ costs) -> routing records -> router.
"""

from visroute.errors import VisrouteError
from visroute.heads.zeroshot import ZeroShotClassifier
from visroute.models import load_model, parse_model_spec

__version__ = "0.1.0"
__all__ = ["VisrouteError", "ZeroShotClassifier", "load_model", "parse_model_spec", "__version__"]
