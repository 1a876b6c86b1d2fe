"""Zero-shot head: class names x prompt templates -> one text embedding per class."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from visroute.data.text import DEFAULT_TEMPLATES, validate_classnames, validate_templates
from visroute.models.contrastive import ContrastiveModel


def fill_templates(classnames: Sequence[str], templates: Sequence[str]) -> list[str]:
    """All prompts, class-major: [t0(c0), t1(c0), ..., t0(c1), ...]."""
    return [t.replace("{c}", c) for c in classnames for t in templates]


def class_embeddings_from_prompts(prompt_emb: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Per-class mean of L2-normalised prompt embeddings (class-major rows), re-normalised."""
    emb = torch.nn.functional.normalize(prompt_emb.float(), dim=-1)
    emb = emb.reshape(n_classes, -1, emb.shape[-1]).mean(dim=1)
    return torch.nn.functional.normalize(emb, dim=-1)


def _as_tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


class ClassScoresMixin:
    """predict / predict_topk / score for heads that define ``decision_function`` and ``predict_proba`` over
    ``classes_`` (argmax of the decision function: ties and monotone probability rules give the same class)."""

    def predict(self, X) -> np.ndarray:
        """Index of the best class for each image."""
        return self.decision_function(X).argmax(dim=-1).numpy()

    def predict_topk(self, X, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """(class indices, probabilities), each (n_images, k), best first."""
        k = max(1, min(k, len(self.classes_)))
        values, indices = self.predict_proba(X).topk(k, dim=-1)
        return indices.numpy(), values.numpy()

    def score(self, X, y) -> float:
        """Top-1 accuracy against class indices ``y``."""
        return float((self.predict(X) == np.asarray(y)).mean())


class ZeroShotClassifier(ClassScoresMixin):
    """Zero-shot classifier over image features (from ``model.encode_images``).

    ``fit(classnames)`` encodes every prompt (all classes x all templates) in large batches and
    keeps one normalised embedding per class in ``class_embeddings_``. Scores follow the model's
    rule: softmax of ``scale * cos`` for CLIP, sigmoid of ``scale * cos + bias`` for SigLIP.
    Class names may repeat (ImageNet's CLIP names do); predictions are class indices into ``classes_``.
    """

    def __init__(self, model: ContrastiveModel, templates: Sequence[str] | None = None, batch_size: int = 1024):
        self.model = model
        self.templates = templates
        self.batch_size = batch_size

    def fit(self, classnames: Sequence[str], y=None) -> "ZeroShotClassifier":
        classes = validate_classnames(list(classnames), allow_duplicates=True)
        templates = validate_templates(list(self.templates or DEFAULT_TEMPLATES))
        prompt_emb = self.model.encode_texts(fill_templates(classes, templates), batch_size=self.batch_size)
        self.classes_ = np.array(classes, dtype=object)
        self.templates_ = templates
        self.class_embeddings_ = class_embeddings_from_prompts(prompt_emb, len(classes))
        return self

    def decision_function(self, X) -> torch.Tensor:
        """Logits, shape (n_images, n_classes)."""
        return self.model.logits(_as_tensor(X), self.class_embeddings_)

    def predict_proba(self, X) -> torch.Tensor:
        return self.model.probabilities(self.decision_function(X))
