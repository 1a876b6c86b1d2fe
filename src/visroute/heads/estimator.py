"""The scikit-learn estimator protocol for the heads, without importing scikit-learn.

``visroute classify`` fits one zero-shot head per run; importing scikit-learn for its base class alone cost
about 1.6 s of a 2 s budget. What ``clone``, grid search and scikit-learn's API checks ask of an estimator is
small: parameters read from ``__init__``'s signature (``get_params``/``set_params``), a ``repr`` and
``__sklearn_tags__`` (built only when scikit-learn asks, so scikit-learn is already loaded then).
"""

from __future__ import annotations

import inspect
from typing import Any


def raise_not_fitted(estimator: Any) -> None:
    """scikit-learn's NotFittedError, with its wording (loaded only when the error happens)."""
    from sklearn.exceptions import NotFittedError

    raise NotFittedError(f"This {type(estimator).__name__} instance is not fitted yet. Call 'fit' with appropriate "
                         "arguments before using this estimator.")


class HeadEstimator:
    """Base of the heads: scikit-learn's parameter and tag protocol, classifier flavour."""

    _estimator_type = "classifier"

    @classmethod
    def _get_param_names(cls) -> list[str]:
        init = cls.__init__
        if init is object.__init__:
            return []
        params = [p for p in inspect.signature(init).parameters.values()
                  if p.name != "self" and p.kind != p.VAR_KEYWORD]
        if any(p.kind == p.VAR_POSITIONAL for p in params):
            raise RuntimeError(f"{cls.__name__}: scikit-learn estimators take no *args in __init__")
        return sorted(p.name for p in params)

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        out = {}
        for key in self._get_param_names():
            value = getattr(self, key)
            if deep and hasattr(value, "get_params") and not isinstance(value, type):
                out.update((f"{key}__{k}", v) for k, v in value.get_params().items())
            out[key] = value
        return out

    def set_params(self, **params: Any) -> "HeadEstimator":
        if not params:
            return self
        valid = self.get_params(deep=True)
        nested: dict[str, dict[str, Any]] = {}
        for key, value in params.items():
            name, delim, sub = key.partition("__")
            if name not in valid:
                raise ValueError(f"Invalid parameter {name!r} for estimator {self}. Valid parameters are: "
                                 f"{sorted(self._get_param_names())!r}.")
            if delim:
                nested.setdefault(name, {})[sub] = value
            else:
                setattr(self, name, value)
                valid[name] = value
        for name, sub_params in nested.items():
            valid[name].set_params(**sub_params)
        return self

    def __repr__(self) -> str:
        defaults = {name: p.default for name, p in inspect.signature(type(self).__init__).parameters.items()}
        changed = []
        for key in self._get_param_names():
            value = getattr(self, key, None)
            default = defaults.get(key, inspect.Parameter.empty)
            same = value is default or (type(value) is type(default) and _safe_equal(value, default))
            if not same:
                changed.append(f"{key}={value!r}")
        return f"{type(self).__name__}({', '.join(changed)})"

    def __sklearn_tags__(self):
        from sklearn.utils import ClassifierTags, InputTags, Tags, TargetTags

        return Tags(estimator_type="classifier", target_tags=TargetTags(required=False), transformer_tags=None,
                    regressor_tags=None, classifier_tags=ClassifierTags(), input_tags=InputTags())

    def _check_fitted(self) -> None:
        if not [v for v in vars(self) if v.endswith("_") and not v.startswith("__")]:
            raise_not_fitted(self)


def _safe_equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # arrays, tensors: not comparable as one bool, so shown
        return False
