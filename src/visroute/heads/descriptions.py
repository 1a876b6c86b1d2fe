"""Description heads: class scores from many texts per class, and the controls that test them.

All heads take image features (from the model or the feature cache) and follow the scikit-learn
shape of the zero-shot head: ``fit(classnames)`` then ``predict`` / ``predict_proba`` / ``score``.
Scores are means of cosine similarities (DCLIP's rule) scaled by the model's logit scale.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Callable, Sequence

import numpy as np
import torch

from visroute.descriptions.sets import DescriptionSet
from visroute.heads.zeroshot import ClassScoresMixin, _as_tensor
from visroute.models.contrastive import ContrastiveModel

_VERB_STARTS = ("has ", "have ", "is ", "are ", "can ", "may ", "often ", "typically ", "usually ", "was ", "were ")
_NOUN_STARTS = ("a ", "an ", "the ", "used ", "made ", "found ")


def dclip_sentence(classname: str, descriptor: str) -> str:
    """"{c}, which is/has {d}": pick the verb that makes the descriptor read as a clause."""
    d = descriptor.strip()
    low = d.lower()
    if low.startswith(_VERB_STARTS):
        return f"{classname}, which {d}"
    if low.startswith(_NOUN_STARTS):
        return f"{classname}, which is {d}"
    return f"{classname}, which has {d}"


def photo_sentence(classname: str, descriptor: str) -> str:
    return f"A photo of a {classname}, {descriptor.strip()}."


def sentence_only(classname: str, descriptor: str) -> str:
    return descriptor.strip()


STYLES: dict[str, Callable[[str, str], str]] = {"dclip": dclip_sentence, "photo": photo_sentence, "sentence": sentence_only}


def segment_mean(sims: torch.Tensor, owner: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Mean of similarity columns per owning class: (n, texts) -> (n, classes)."""
    out = torch.zeros(sims.shape[0], n_classes, dtype=sims.dtype)
    out.index_add_(1, owner, sims)
    counts = torch.bincount(owner, minlength=n_classes).clamp(min=1).to(sims.dtype)
    return out / counts


class DescriptionEnsembleClassifier(ClassScoresMixin):
    """Each class is scored by the mean similarity to its descriptions, written as sentences.

    ``style``: "dclip" ("{c}, which is/has {d}"), "photo" ("A photo of a {c}, {d}.") or "sentence"
    (the description as is, CuPL). ``aggregate``: "score" averages per-sentence similarities (DCLIP),
    "embedding" averages normalised sentence embeddings first (CuPL). Classes without descriptions
    fall back to "A photo of a {c}." (counted in ``n_fallback_classes_``).
    """

    def __init__(self, model: ContrastiveModel, descriptions: DescriptionSet, style: str = "dclip",
                 aggregate: str = "score", batch_size: int = 1024):
        self.model = model
        self.descriptions = descriptions
        self.style = style
        self.aggregate = aggregate
        self.batch_size = batch_size

    def _sentences(self, classnames: Sequence[str]) -> tuple[list[str], list[int]]:
        fmt = STYLES[self.style]
        texts, owner = [], []
        self.n_fallback_classes_ = 0
        for k, (c, descs) in enumerate(zip(classnames, self.descriptions.descriptions)):
            if not descs:
                self.n_fallback_classes_ += 1
                texts.append(f"A photo of a {c}.")
                owner.append(k)
            for d in descs:
                texts.append(fmt(c, d))
                owner.append(k)
        return texts, owner

    def fit(self, classnames: Sequence[str], y=None):
        if self.style not in STYLES:
            raise ValueError(f"unknown style '{self.style}' ({', '.join(STYLES)})")
        dset = self.descriptions.aligned_to(list(classnames))
        self.descriptions = dset
        texts, owner = self._sentences(classnames)
        self.classes_ = np.array(list(classnames), dtype=object)
        self.texts_ = texts
        self.owner_ = torch.tensor(owner, dtype=torch.long)
        self.text_embeddings_ = self.model.encode_texts(texts, batch_size=self.batch_size)
        if self.aggregate == "embedding":
            mean = segment_mean(self.text_embeddings_.T, self.owner_, len(classnames)).T
            self.class_embeddings_ = torch.nn.functional.normalize(mean, dim=-1)
        return self

    def similarities(self, X) -> torch.Tensor:
        """Mean cosine similarity per class, (n_images, n_classes)."""
        X = _as_tensor(X).float()
        if self.aggregate == "embedding":
            return X @ self.class_embeddings_.T
        return segment_mean(X @ self.text_embeddings_.T, self.owner_, len(self.classes_))

    def decision_function(self, X) -> torch.Tensor:
        return self.model.logit_scale * self.similarities(X) + self.model.logit_bias

    def predict_proba(self, X) -> torch.Tensor:
        return self.model.probabilities(self.decision_function(X))


    def explain(self, x, k: int = 3) -> list[dict]:
        """Top-k classes for one image feature, each with its sentences' similarities and contributions."""
        X = _as_tensor(x).float().reshape(1, -1)
        probs = self.predict_proba(X)[0]
        sims = (X @ self.text_embeddings_.T)[0]
        out = []
        for c in probs.topk(min(k, len(self.classes_))).indices.tolist():
            rows = (self.owner_ == c).nonzero().squeeze(1).tolist()
            items = sorted(({"text": self.texts_[r], "similarity": float(sims[r]),
                             "contribution": float(sims[r]) / len(rows)} for r in rows),
                           key=lambda d: -d["similarity"])
            out.append({"class": str(self.classes_[c]), "class_index": c, "probability": float(probs[c]),
                        "score": float(sims[rows].mean()), "descriptions": items})
        return out


def random_descriptor_set(real: DescriptionSet, kind: str = "words", seed: int = 0, n_per_class: int | None = None,
                          words_per_descriptor: int = 2, vocabulary: Sequence[str] | None = None) -> DescriptionSet:
    """WaffleCLIP-style control: the same number of descriptors per class, made of random words or characters.

    Words are drawn from ``vocabulary`` (default: the words of the real set, so their statistics match but
    their assignment to classes carries no meaning); characters are random lowercase strings.
    """
    rng = random.Random(seed)
    if kind == "words":
        vocab = list(vocabulary) if vocabulary is not None else sorted(
            {w for ds in real.descriptions for d in ds for w in re.findall(r"[a-zA-Z]{3,}", d.lower())})
        if not vocab:
            raise ValueError("no vocabulary for random words")
        make = lambda: " ".join(rng.choice(vocab) for _ in range(words_per_descriptor))  # noqa: E731
    elif kind == "chars":
        make = lambda: " ".join("".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 9)))  # noqa: E731
                                for _ in range(words_per_descriptor))
    else:
        raise ValueError(f"unknown random descriptor kind '{kind}' (words or chars)")
    descs = []
    for ds in real.descriptions:
        n = n_per_class if n_per_class is not None else max(1, len(ds))
        descs.append([make() for _ in range(n)])
    return DescriptionSet(list(real.classnames), descs, "descriptor",
                          {"source": f"random-{kind}", "seed": seed, "control_for": real.provenance.get("source")})


def shuffled_assignment_set(real: DescriptionSet, seed: int = 0) -> DescriptionSet:
    """Control without semantics: each class gets as many descriptions as before, drawn at random from the pool."""
    rng = random.Random(seed)
    pool = real.pool()
    descs = [[pool[rng.randrange(len(pool))] for _ in ds] for ds in real.descriptions]
    return DescriptionSet(list(real.classnames), descs, real.kind,
                          {"source": "random-assignment", "seed": seed, "control_for": real.provenance.get("source")})


class ClassnameFreeClassifier(ClassScoresMixin):
    """Descriptions without the class name, plus the class-name prompt weighted by ``w_cls``.

    score(x, c) = w_cls * cos(x, "A photo of a {c}.") + mean_{d in D_c} cos(x, d). With w_cls = 0 the class
    name is not used at all, so accuracy measures what the descriptions' semantics alone carry.
    """

    def __init__(self, model: ContrastiveModel, descriptions: DescriptionSet, w_cls: float = 0.0,
                 caption: str = "A photo of a {c}.", batch_size: int = 1024):
        self.model = model
        self.descriptions = descriptions
        self.w_cls = w_cls
        self.caption = caption
        self.batch_size = batch_size

    def fit(self, classnames: Sequence[str], y=None):
        dset = self.descriptions.aligned_to(list(classnames))
        self.classes_ = np.array(list(classnames), dtype=object)
        self.pool_ = dset.pool()
        index = {d: i for i, d in enumerate(self.pool_)}
        rows, cols = [], []
        for k, ds in enumerate(dset.descriptions):
            for i in sorted({index[d] for d in ds}):
                rows.append(i)
                cols.append(k)
        self.pool_embeddings_ = self.model.encode_texts(self.pool_, batch_size=self.batch_size) if self.pool_ else torch.empty(0, 0)
        self.caption_embeddings_ = self.model.encode_texts([self.caption.replace("{c}", c) for c in classnames])
        self.owner_rows_ = torch.tensor(rows, dtype=torch.long)
        self.owner_ = torch.tensor(cols, dtype=torch.long)
        self.n_empty_classes_ = sum(1 for ds in dset.descriptions if not ds)
        return self

    def description_similarities(self, X) -> torch.Tensor:
        X = _as_tensor(X).float()
        if len(self.owner_) == 0:
            return torch.zeros(X.shape[0], len(self.classes_))
        sims = X @ self.pool_embeddings_[self.owner_rows_].T
        return segment_mean(sims, self.owner_, len(self.classes_))

    def similarities(self, X, w_cls: float | None = None) -> torch.Tensor:
        w = self.w_cls if w_cls is None else w_cls
        X = _as_tensor(X).float()
        out = self.description_similarities(X)
        return out + w * (X @ self.caption_embeddings_.T) if w else out

    def sweep(self, X, y, weights: Sequence[float]) -> list[dict]:
        """Top-1 accuracy for each class-name weight (computing the shared similarities once)."""
        X = _as_tensor(X).float()
        desc = self.description_similarities(X)
        cap = X @ self.caption_embeddings_.T
        y = np.asarray(y)
        return [{"w_cls": float(w), "acc1": float(((desc + w * cap).argmax(-1).numpy() == y).mean())} for w in weights]

    def decision_function(self, X) -> torch.Tensor:
        return self.model.logit_scale * self.similarities(X)

    def predict_proba(self, X) -> torch.Tensor:
        return torch.softmax(self.decision_function(X), dim=-1)

