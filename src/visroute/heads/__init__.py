"""Heads turn image features into class scores; each is a scikit-learn-style estimator."""

from visroute.heads.zeroshot import ZeroShotClassifier, class_embeddings_from_prompts, fill_templates

__all__ = ["ZeroShotClassifier", "class_embeddings_from_prompts", "fill_templates"]
