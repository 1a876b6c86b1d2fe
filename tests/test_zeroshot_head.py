"""The zero-shot head on constructed embeddings where the right answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visroute.errors import LabelError, TemplateError
from visroute.heads import ZeroShotClassifier, class_embeddings_from_prompts, fill_templates


class TableModel:
    """A stand-in text encoder: each prompt maps to a fixed vector, so the head's math is checkable."""

    score_rule = "softmax"
    logit_scale = 100.0
    logit_bias = 0.0

    def __init__(self, table: dict[str, torch.Tensor]):
        self.table = table
        self.calls: list[int] = []

    def encode_texts(self, texts, batch_size=1024):
        self.calls.append(len(texts))
        return torch.nn.functional.normalize(torch.stack([self.table[t] for t in texts]), dim=-1)

    def logits(self, img, txt):
        return self.logit_scale * img @ txt.T + self.logit_bias

    def probabilities(self, logits):
        return logits.softmax(-1)


def test_class_embedding_is_renormalised_mean_of_normalised_prompts():
    prompts = torch.tensor([[3.0, 0, 0], [0, 4.0, 0], [0, 0, 2.0], [0, 0, 5.0]])
    out = class_embeddings_from_prompts(prompts, n_classes=2)
    torch.testing.assert_close(out[0], torch.tensor([1.0, 1.0, 0]) / 2**0.5)
    torch.testing.assert_close(out[1], torch.tensor([0, 0, 1.0]))


def test_fill_templates_is_class_major_and_keeps_other_braces():
    assert fill_templates(["cat", "dog"], ["a {c}.", "{c} {x}"]) == ["a cat.", "cat {x}", "a dog.", "dog {x}"]


def test_head_predicts_the_constructed_class_and_encodes_in_one_batch():
    rng = np.random.default_rng(0)
    classes = [f"class{i}" for i in range(20)]
    templates = ["a photo of a {c}.", "art of the {c}.", "a {c} in the wild."]
    centers = torch.nn.functional.normalize(torch.tensor(rng.normal(size=(20, 64)), dtype=torch.float32), dim=-1)
    table = {}
    for i, c in enumerate(classes):
        for t in templates:
            table[t.replace("{c}", c)] = centers[i] + 0.3 * torch.tensor(rng.normal(size=64), dtype=torch.float32) / 8
    model = TableModel(table)
    head = ZeroShotClassifier(model, templates).fit(classes)
    assert model.calls == [60]  # all classes x templates in one batch, not one class at a time
    y = rng.integers(0, 20, size=200)
    X = torch.nn.functional.normalize(centers[y] + 0.05 * torch.tensor(rng.normal(size=(200, 64)), dtype=torch.float32), dim=-1)
    assert head.score(X, y) == 1.0
    idx, p = head.predict_topk(X, k=3)
    assert idx.shape == (200, 3) and (idx[:, 0] == y).all() and (np.diff(p, axis=1) <= 0).all()
    np.testing.assert_allclose(head.predict_proba(X).sum(-1), 1.0, atol=1e-5)
    # shuffled class embeddings must break it (the test can fail)
    head.class_embeddings_ = head.class_embeddings_[torch.randperm(20, generator=torch.Generator().manual_seed(0))]
    assert head.score(X, y) < 0.5


def test_head_accepts_duplicate_names_but_rejects_empty_lists():
    model = TableModel({"a photo of a x.": torch.ones(4), "a photo of a y.": -torch.ones(4)})
    head = ZeroShotClassifier(model, ["a photo of a {c}."]).fit(["x", "y", "x"])  # ImageNet repeats names
    assert head.class_embeddings_.shape == (3, 4)
    with pytest.raises(LabelError, match="empty"):
        ZeroShotClassifier(model, ["a photo of a {c}."]).fit([])
    with pytest.raises(TemplateError, match=r"\{c\}"):
        ZeroShotClassifier(model, ["a photo"]).fit(["x"])
