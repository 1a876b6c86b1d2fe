"""Zero-shot head: class names x prompt templates -> one text embedding per class.

Also the scikit-learn plumbing every contrastive head shares (``ContrastiveHead``, ``ClassScoresMixin``).
A head is fitted on class names, ``fit(classnames)``, or the scikit-learn way on image features,
``fit(X, y)`` with ``classnames`` given at construction, so that ``clone``, pipelines and grid search
work. Predictions are class indices: positions in ``classes_`` (class names may repeat, ImageNet's do,
so a name cannot serve as a label).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from visroute.data.text import DEFAULT_TEMPLATES, validate_classnames, validate_templates
from visroute.errors import InputError
from visroute.heads.estimator import HeadEstimator
from visroute.models.contrastive import ContrastiveModel


def fill_templates(classnames: Sequence[str], templates: Sequence[str]) -> list[str]:
    """All prompts, class-major: [t0(c0), t1(c0), ..., t0(c1), ...]."""
    return [t.replace("{c}", c) for c in classnames for t in templates]


def class_embeddings_from_prompts(prompt_emb: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Per-class mean of L2-normalised prompt embeddings (class-major rows), re-normalised."""
    emb = torch.nn.functional.normalize(prompt_emb.float(), dim=-1)
    emb = emb.reshape(n_classes, -1, emb.shape[-1]).mean(dim=1)
    return torch.nn.functional.normalize(emb, dim=-1)


def is_text_list(X) -> bool:
    """True for a list of class names (``fit(classnames)``), False for image features."""
    if isinstance(X, str):
        raise InputError("class names must be a list of strings, not one string")
    if isinstance(X, np.ndarray):
        return X.ndim == 1 and X.dtype.kind in "OUS" and all(isinstance(x, str) for x in X)
    if isinstance(X, Sequence) and not isinstance(X, torch.Tensor):
        return all(isinstance(x, str) for x in X)
    return False


def as_feature_tensor(X, n_features: int | None = None, owner: str = "head") -> torch.Tensor:
    """Image features as a float32 CPU tensor (n, n_features), or a one-line InputError saying what is wrong."""
    if isinstance(X, torch.Tensor):
        t = X.detach().to("cpu", torch.float32)
    else:  # scikit-learn's own checks, so messages match what its users know (sparse, complex, NaN, 1-D, ...)
        from sklearn.utils.validation import check_array

        try:
            a = check_array(X, dtype=np.float32, ensure_min_samples=0, ensure_all_finite=False, input_name="X")
        except (TypeError, ValueError) as e:
            raise InputError(f"{owner}: {str(e).splitlines()[0]}") from None
        t = torch.from_numpy(np.require(a, requirements=["C", "W"]))
    if t.ndim != 2:
        raise InputError(f"{owner} needs a 2-D array of image features (n_images, dim), got shape {tuple(t.shape)}")
    if n_features is not None and t.shape[1] != n_features:
        raise InputError(f"X has {t.shape[1]} features, but {owner} is expecting {n_features} features as input "
                         "(the model's embedding size)")
    if not bool(torch.isfinite(t).all()):
        raise InputError(f"{owner}: image features contain NaN or infinity")
    return t


def as_label_array(y, n_samples: int, n_classes: int, owner: str = "head") -> np.ndarray:
    """Class indices (positions in the class names) as a 1-D int array, checked against range and length."""
    y = np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y)
    if y.ndim != 1 or len(y) != n_samples:
        raise InputError(f"{owner} needs one class index per image: y has shape {y.shape}, X has {n_samples} rows")
    integral = y.dtype.kind in "biu" or (y.dtype.kind == "f" and bool(np.all(np.mod(y, 1) == 0)))
    if not integral:
        raise InputError(f"{owner}: y must hold class indices (positions in the class names), got {y.dtype} values")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise InputError(f"{owner}: class indices must lie in [0, {n_classes}), got {y.min()}..{y.max()}")
    return y


class ContrastiveHead(HeadEstimator):
    """Shared scikit-learn plumbing of the heads over image features (model embeddings); the estimator protocol
    comes from ``HeadEstimator``, so fitting and predicting never import scikit-learn (start-up time).

    Subclasses keep their parameters in ``__init__`` unchanged; ``fit`` only sets attributes ending in ``_``,
    including ``n_features_in_`` (the text embedding size, which image features must match).
    """

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = True
        tags.target_tags.required = False  # zero-shot: the class names are the training data
        return tags

    def _fit_inputs(self, X, y) -> tuple[list[str], object, object]:
        """(class names, image features or None, labels or None) from fit(classnames) or fit(X, y)."""
        if is_text_list(X):
            return list(X), None, None
        names = self.classnames
        if names is None and getattr(self, "descriptions", None) is not None:
            names = self.descriptions.classnames
        if names is None:
            raise InputError(f"{type(self).__name__}.fit got image features but no class names: pass "
                             "classnames=[...] when constructing the head, or call fit(classnames)")
        return list(names), X, y

    def _check_training_data(self, X, y, n_features: int, n_classes: int, require_y: bool = False):
        """Image features and class indices given to fit(X, y): checked, returned as (tensor, int array)."""
        owner = type(self).__name__
        if X is None:
            return None, None
        Xt = as_feature_tensor(X, n_features, owner)
        if y is None:
            if require_y:
                raise InputError(f"{owner}.fit needs class indices y for the image features X")
            return Xt, None
        return Xt, as_label_array(y, len(Xt), n_classes, owner)

    def _features(self, X) -> torch.Tensor:
        self._check_fitted()
        return as_feature_tensor(X, self.n_features_in_, type(self).__name__)

    def score(self, X, y, sample_weight=None) -> float:
        """Top-1 accuracy against class indices ``y``."""
        from sklearn.metrics import accuracy_score

        y = y.cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
        return float(accuracy_score(y, self.predict(X), sample_weight=sample_weight))


class ClassScoresMixin:
    """decision_function / predict_proba / predict / predict_topk for heads that define ``_logits`` (a torch
    (n_images, n_classes) tensor of model logits). Probabilities follow the model family's rule
    (``model.probabilities``: softmax for CLIP, per-class sigmoid of scale * cos + bias for SigLIP);
    predictions are the argmax of the logits, which every monotone probability rule agrees with."""

    def decision_function(self, X) -> np.ndarray:
        """Model logits, shape (n_images, n_classes)."""
        return self._logits(self._features(X)).numpy()

    def _proba(self, Xt: torch.Tensor) -> torch.Tensor:
        return self.model.probabilities(self._logits(Xt))

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, (n_images, n_classes), float32."""
        return self._proba(self._features(X)).numpy()

    def predict(self, X) -> np.ndarray:
        """Index of the best class for each image."""
        return self._logits(self._features(X)).argmax(dim=-1).numpy()

    def predict_topk(self, X, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """(class indices, probabilities), each (n_images, k), best first."""
        k = max(1, min(k, len(self.classes_)))
        values, indices = self._proba(self._features(X)).topk(k, dim=-1)
        return indices.numpy(), values.numpy()


class ZeroShotClassifier(ClassScoresMixin, ContrastiveHead):
    """Zero-shot classifier over image features (from ``model.encode_images``).

    ``fit(classnames)`` encodes every prompt (all classes x all templates) in large batches and
    keeps one normalised embedding per class in ``class_embeddings_``. ``fit(X, y)`` does the same for
    ``classnames`` given here and only checks X and y: a zero-shot head learns nothing from images.
    Scores follow the model's rule: softmax of ``scale * cos`` for CLIP, sigmoid of ``scale * cos + bias``
    for SigLIP. Class names may repeat (ImageNet's CLIP names do); predictions are indices into ``classes_``.
    """

    def __init__(self, model: ContrastiveModel, templates: Sequence[str] | None = None, batch_size: int = 1024,
                 classnames: Sequence[str] | None = None):
        self.model = model
        self.templates = templates
        self.batch_size = batch_size
        self.classnames = classnames

    def fit(self, X, y=None) -> "ZeroShotClassifier":
        """``fit(classnames)``, or ``fit(X, y)`` with image features and class indices (checked, not learnt from)."""
        names, X_img, y_img = self._fit_inputs(X, y)
        classes = validate_classnames(names, allow_duplicates=True)
        templates = validate_templates(list(self.templates or DEFAULT_TEMPLATES))
        prompt_emb = self.model.encode_texts(fill_templates(classes, templates), batch_size=self.batch_size)
        class_embeddings = class_embeddings_from_prompts(prompt_emb, len(classes))
        self._check_training_data(X_img, y_img, class_embeddings.shape[1], len(classes))
        self.classes_ = np.array(classes, dtype=object)
        self.templates_ = templates
        self.class_embeddings_ = class_embeddings
        self.n_features_in_ = int(class_embeddings.shape[1])
        return self

    def _logits(self, Xt: torch.Tensor) -> torch.Tensor:
        return self.model.logits(Xt, self.class_embeddings_)
