"""Discriminative selection vs the DisCLIP reference (CompVis/DisCLIP @ cdba1ba) on identical embeddings.

The reference was run once in a throwaway venv (float32; see tests/fixtures/disclip_reference/README.md);
only its inputs and outputs are stored. Selections, fallbacks and predictions must be identical.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from visroute.descriptions import load_descriptions
from visroute.heads.descriptions import ClassnameFreeClassifier
from visroute.heads.selection import (DiscriminativeSelectionClassifier, class_mean_similarities, disclip_pool,
                                      masked_mean_similarity, neighbourhoods, select_descriptions)

FIX = Path(__file__).parent / "fixtures" / "disclip_reference"


class LookupEncoder:
    """Returns the reference run's embedding for every text it encoded (so both sides see identical inputs)."""

    score_rule, logit_scale, logit_bias = "softmax", 100.0, 0.0

    def __init__(self, table: dict[str, np.ndarray]):
        self.table = table

    def encode_texts(self, texts, batch_size=1024):
        missing = [t for t in texts if t not in self.table]
        assert not missing, f"text not encoded by the reference: {missing[:2]}"
        return torch.from_numpy(np.stack([self.table[t] for t in texts]))


def load_reference(shared_data):
    """DisCLIP's stored inputs and outputs, the descriptions it read, and the text embeddings it computed for the
    pooled descriptions and captions (text -> vector)."""
    z = np.load(FIX / "inputs.npz")
    inputs = json.loads((FIX / "inputs.json").read_text())
    expected = json.loads((FIX / "expected.json").read_text())
    d = shared_data / "descriptions" / "disclip"
    dset = load_descriptions(d / "descriptions_food_con_llama.json").with_fallback(
        load_descriptions(d / "descriptions_food_dclip.json"))
    table = dict(zip(inputs["description_texts_gs"], z["description_encodings"]))
    table.update(zip(inputs["caption_texts"], z["caption_encodings"]))
    return z, inputs, expected, dset, table


@pytest.fixture(scope="module")
def ref(shared_data):
    z, inputs, expected, dset, table = load_reference(shared_data)
    texts = np.array(inputs["imagewise_cls_description_texts"]).reshape(-1)
    table.update(zip(texts, z["imagewise_cls_description_encodings"].reshape(len(texts), -1)))
    flat = [t for c in sorted(inputs["classwise_cls_description_texts"], key=int) for t in inputs["classwise_cls_description_texts"][c]]
    table.update(zip(flat, z["classwise_cls_description_encodings"]))
    return z, inputs, expected, dset, LookupEncoder(table)


def test_pool_order_and_fallback_descriptions_match(ref):
    z, inputs, expected, dset, _ = ref
    assert dset.classnames == inputs["classnames"]
    assert dset.descriptions == [inputs["index_to_descriptions"][str(i)] for i in range(len(dset))]
    assert disclip_pool(dset.descriptions) == inputs["description_texts_gs"]


def test_selection_and_classname_free_predictions_are_identical(ref):
    z, inputs, expected, dset, _ = ref
    pool = inputs["description_texts_gs"]
    index = {d: i for i, d in enumerate(pool)}
    own = [[index[d] for d in ds] for ds in dset.descriptions]
    X = torch.from_numpy(z["eval_image_encodings"])
    pool_emb = torch.from_numpy(z["description_encodings"])
    caps = torch.from_numpy(z["caption_encodings"])
    S = class_mean_similarities(pool_emb, torch.from_numpy(z["selection_image_encodings"]), z["selection_labels"],
                                len(dset), inputs["n_reference_samples"])
    topk = neighbourhoods(X, caps, 3)
    assert topk.tolist() == expected["top_k_ambiguous_classes"]
    selected, fallback = select_descriptions(S, topk, 5, own)
    ours = [[sorted(i for i in row if i >= 0) for row in img] for img in selected.tolist()]
    assert ours == expected["selected_pool_indices"]
    assert fallback.tolist() == expected["fallback_used"]
    assert fallback.any() and (~fallback).any()  # both branches exercised
    desc = masked_mean_similarity(X, pool_emb, selected)
    cap = torch.gather(X @ caps.T, 1, topk)
    for w, want in zip(expected["cls_weights"], expected["classname_free_imagewise"]["predictions"]):
        pred = torch.gather(topk, 1, (desc + w * cap).argmax(1, keepdim=True)).squeeze(1)
        assert pred.tolist() == want, f"w_cls={w}"


def test_estimators_reproduce_all_reference_modes(ref):
    z, inputs, expected, dset, encoder = ref
    X, y_sel = torch.from_numpy(z["eval_image_encodings"]), z["selection_labels"]
    X_sel = torch.from_numpy(z["selection_image_encodings"])
    names = inputs["classnames"]
    for w, want in list(zip(expected["cls_weights"], expected["classname_free_imagewise"]["predictions"]))[::5]:
        head = DiscriminativeSelectionClassifier(encoder, dset, k=3, m=5, w_cls=w).fit(names, X_sel, y_sel)
        assert head.predict(X).tolist() == want
    cc = expected["classname_containing_imagewise"]
    for reduce, key in (("mean", "predictions_ensembling"), ("max", "predictions_maxing")):
        head = DiscriminativeSelectionClassifier(encoder, dset, k=3, m=5, mode="classname-containing",
                                                 reduce=reduce).fit(names, X_sel, y_sel)
        assert head.predict(X).tolist() == cc[key], reduce
    acc = float((np.array(cc["predictions_ensembling"]) == z["eval_labels"]).mean() * 100)
    assert acc == pytest.approx(cc["accuracy_ensembling"], abs=1e-4)
    free = ClassnameFreeClassifier(encoder, dset).fit(names)
    for w, want in list(zip(expected["cls_weights"], expected["classname_free_classwise_LLM"]["predictions"]))[::4]:
        assert free.similarities(X, w_cls=w).argmax(-1).tolist() == want, f"classwise w_cls={w}"
