"""Description heads: class scores from many texts per class, and the controls that test them.

All heads take image features (from the model or the feature cache) and are scikit-learn estimators
like the zero-shot head: ``fit(classnames)`` (or ``fit(X, y)``) then ``predict`` / ``predict_proba`` /
``score``. Scores are means of cosine similarities (DCLIP's rule) turned into probabilities by the
model family's rule (softmax of scale * score for CLIP, sigmoid of scale * score + bias for SigLIP).
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Callable, Sequence

import numpy as np
import torch

from visroute.heads.description_sets import DescriptionSet
from visroute.errors import InputError
from visroute.heads.zeroshot import ClassScoresMixin, ContrastiveHead
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


class DescriptionEnsembleClassifier(ClassScoresMixin, ContrastiveHead):
    """Each class is scored by the mean similarity to its descriptions, written as sentences.

    ``style``: "dclip" ("{c}, which is/has {d}"), "photo" ("A photo of a {c}, {d}.") or "sentence"
    (the description as is, CuPL). ``aggregate``: "score" averages per-sentence similarities (DCLIP),
    "embedding" averages normalised sentence embeddings first (CuPL). Classes without descriptions
    fall back to "A photo of a {c}." (counted in ``n_fallback_classes_``). Fitted with ``fit(classnames)``
    or ``fit(X, y)`` on image features (class names: ``classnames``, else the description set's).
    """

    def __init__(self, model: ContrastiveModel, descriptions: DescriptionSet, style: str = "dclip",
                 aggregate: str = "score", batch_size: int = 1024, classnames: Sequence[str] | None = None):
        self.model = model
        self.descriptions = descriptions
        self.style = style
        self.aggregate = aggregate
        self.batch_size = batch_size
        self.classnames = classnames

    def _sentences(self, dset: DescriptionSet) -> tuple[list[str], list[int], int]:
        """(sentences, owning class of each, number of classes that fell back to the class-name prompt)."""
        fmt = STYLES[self.style]
        texts, owner, n_fallback = [], [], 0
        for k, (c, descs) in enumerate(zip(dset.classnames, dset.descriptions)):
            if not descs:
                n_fallback += 1
                texts.append(f"A photo of a {c}.")
                owner.append(k)
            for d in descs:
                texts.append(fmt(c, d))
                owner.append(k)
        return texts, owner, n_fallback

    def fit(self, X, y=None):
        """``fit(classnames)``, or ``fit(X, y)`` with image features and class indices (checked, not learnt from)."""
        if self.style not in STYLES:
            raise InputError(f"unknown style '{self.style}' ({', '.join(STYLES)})")
        if self.aggregate not in ("score", "embedding"):
            raise InputError(f"unknown aggregate '{self.aggregate}' (score or embedding)")
        classnames, X_img, y_img = self._fit_inputs(X, y)
        dset = self.descriptions.aligned_to(classnames)
        texts, owner, n_fallback = self._sentences(dset)
        text_embeddings = self.model.encode_texts(texts, batch_size=self.batch_size)
        self._check_training_data(X_img, y_img, text_embeddings.shape[1], len(classnames))
        self.descriptions_ = dset
        self.n_fallback_classes_ = n_fallback
        self.classes_ = np.array(classnames, dtype=object)
        self.texts_ = texts
        self.owner_ = torch.tensor(owner, dtype=torch.long)
        self.text_embeddings_ = text_embeddings
        self.n_features_in_ = int(text_embeddings.shape[1])
        if self.aggregate == "embedding":
            mean = segment_mean(self.text_embeddings_.T, self.owner_, len(classnames)).T
            self.class_embeddings_ = torch.nn.functional.normalize(mean, dim=-1)
        return self

    def _similarities(self, X: torch.Tensor) -> torch.Tensor:
        if self.aggregate == "embedding":
            return X @ self.class_embeddings_.T
        return segment_mean(X @ self.text_embeddings_.T, self.owner_, len(self.classes_))

    def similarities(self, X) -> torch.Tensor:
        """Mean cosine similarity per class, (n_images, n_classes)."""
        return self._similarities(self._features(X))

    def _logits(self, X: torch.Tensor) -> torch.Tensor:
        return self.model.logit_scale * self._similarities(X) + self.model.logit_bias

    def explain(self, x, k: int = 3) -> list[dict]:
        """Top-k classes for one image feature, each with its sentences' similarities and contributions."""
        X = self._features(_one_row(x))
        probs = self._proba(X)[0]
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


def _one_row(x):
    """One image feature vector (1-D or (1, dim)) as a (1, dim) array."""
    return x.reshape(1, -1) if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32).reshape(1, -1)


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


class ClassnameFreeClassifier(ClassScoresMixin, ContrastiveHead):
    """Descriptions without the class name, plus the class-name prompt weighted by ``w_cls``.

    score(x, c) = w_cls * cos(x, "A photo of a {c}.") + mean_{d in D_c} cos(x, d). With w_cls = 0 the class
    name is not used at all, so accuracy measures what the descriptions' semantics alone carry.
    Probabilities follow the model family's rule on ``scale * score (+ bias)``: softmax for CLIP,
    per-class sigmoid with the learnt bias for SigLIP.
    """

    def __init__(self, model: ContrastiveModel, descriptions: DescriptionSet, w_cls: float = 0.0,
                 caption: str = "A photo of a {c}.", batch_size: int = 1024, classnames: Sequence[str] | None = None):
        self.model = model
        self.descriptions = descriptions
        self.w_cls = w_cls
        self.caption = caption
        self.batch_size = batch_size
        self.classnames = classnames

    def fit(self, X, y=None):
        """``fit(classnames)``, or ``fit(X, y)`` with image features and class indices (checked, not learnt from)."""
        classnames, X_img, y_img = self._fit_inputs(X, y)
        dset = self.descriptions.aligned_to(classnames)
        pool = dset.pool()
        index = {d: i for i, d in enumerate(pool)}
        rows, cols = [], []
        for k, ds in enumerate(dset.descriptions):
            for i in sorted({index[d] for d in ds}):
                rows.append(i)
                cols.append(k)
        captions = self.model.encode_texts([self.caption.replace("{c}", c) for c in classnames])
        self._check_training_data(X_img, y_img, captions.shape[1], len(classnames))
        self.classes_ = np.array(classnames, dtype=object)
        self.pool_ = pool
        self.pool_embeddings_ = (self.model.encode_texts(pool, batch_size=self.batch_size) if pool
                                 else torch.empty(0, captions.shape[1]))
        self.caption_embeddings_ = captions
        self.owner_rows_ = torch.tensor(rows, dtype=torch.long)
        self.owner_ = torch.tensor(cols, dtype=torch.long)
        self.n_empty_classes_ = sum(1 for ds in dset.descriptions if not ds)
        self.n_features_in_ = int(captions.shape[1])
        return self

    def _description_similarities(self, X: torch.Tensor) -> torch.Tensor:
        if len(self.owner_) == 0:
            return torch.zeros(X.shape[0], len(self.classes_))
        sims = X @ self.pool_embeddings_[self.owner_rows_].T
        return segment_mean(sims, self.owner_, len(self.classes_))

    def description_similarities(self, X) -> torch.Tensor:
        """Mean cosine similarity to each class's descriptions, (n_images, n_classes)."""
        return self._description_similarities(self._features(X))

    def _similarities(self, X: torch.Tensor, w_cls: float | None = None) -> torch.Tensor:
        w = self.w_cls if w_cls is None else w_cls
        out = self._description_similarities(X)
        return out + w * (X @ self.caption_embeddings_.T) if w else out

    def similarities(self, X, w_cls: float | None = None) -> torch.Tensor:
        """The score above per class, (n_images, n_classes); ``w_cls`` overrides the fitted weight."""
        return self._similarities(self._features(X), w_cls)

    def sweep(self, X, y, weights: Sequence[float]) -> list[dict]:
        """Top-1 accuracy for each class-name weight (computing the shared similarities once)."""
        X = self._features(X)
        desc = self._description_similarities(X)
        cap = X @ self.caption_embeddings_.T
        y = np.asarray(y)
        return [{"w_cls": float(w), "acc1": float(((desc + w * cap).argmax(-1).numpy() == y).mean())} for w in weights]

    def _logits(self, X: torch.Tensor) -> torch.Tensor:
        return self.model.logit_scale * self._similarities(X) + self.model.logit_bias
