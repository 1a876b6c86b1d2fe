"""Training-free discriminative description selection (the method of DisCLIP, AAAI-25).

For each test image, the class-name prompt gives a neighbourhood of its top-k candidate classes.
For each candidate, keep the descriptions (from one global pool) that the labelled selection set
says separate it best from the other neighbours: a description qualifies if its mean similarity to
the candidate's selection images is >= its mean similarity to every neighbour's, and qualifying
descriptions are ranked by the mean of those differences (over the whole neighbourhood, the zero
self-difference included). The best m are kept; if none qualifies, the candidate's own first m
descriptions (in pool order) are used. Candidates are then scored within the neighbourhood.

The functions are pure and vectorised over images (chunked, so memory stays bounded).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np
import torch

from visroute.heads.description_sets import DescriptionSet
from visroute.errors import InputError
from visroute.heads.zeroshot import ContrastiveHead, is_text_list
from visroute.models.contrastive import ContrastiveModel


def disclip_pool(descriptions: Sequence[Sequence[str]]) -> list[str]:
    """Global pool: class lists sorted (as lists of strings), flattened, duplicates dropped (first kept)."""
    return list(dict.fromkeys(d for ds in sorted(list(x) for x in descriptions) for d in ds))


def class_mean_similarities(pool_emb: torch.Tensor, sel_X: torch.Tensor, sel_y: np.ndarray, n_classes: int,
                            n_per_class: int) -> torch.Tensor:
    """(P, C): mean similarity of each description to the first ``n_per_class`` selection images of each class."""
    sel_y = np.asarray(sel_y)
    rows = []
    for c in range(n_classes):
        idx = np.flatnonzero(sel_y == c)[:n_per_class]
        if len(idx) < n_per_class:
            raise ValueError(f"class {c} has {len(idx)} selection images, fewer than n_per_class={n_per_class}")
        rows.append(idx)
    order = torch.as_tensor(np.concatenate(rows))
    sims = pool_emb.float() @ sel_X.float()[order].T  # (P, C*n)
    return sims.reshape(pool_emb.shape[0], n_classes, n_per_class).mean(dim=2)


def neighbourhoods(X: torch.Tensor, caption_emb: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k classes per image by similarity to the class-name prompt, best first: (N, k)."""
    return torch.topk(X.float() @ caption_emb.float().T, k, dim=1).indices


@contextmanager
def one_thread():
    """torch on one thread for a loop of small tensor operations: per-op thread wake-ups cost more than they
    save there (measured 5-25x the CPU time on 2 busy cores), and chunks small enough to stay in cache are fastest."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def select_descriptions(class_sims: torch.Tensor, topk: torch.Tensor, m: int, own: Sequence[Sequence[int]],
                        chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Selected pool indices (N, k, m), -1 where fewer than m qualify, and a fallback flag (N, k).

    ``class_sims`` (P, C) from ``class_mean_similarities``; ``own[c]`` are class c's pool indices.
    The selection depends only on the (ordered) neighbourhood, and many images share one, so each
    distinct neighbourhood is computed once and the result copied to its images; the work is linear in them.
    """
    uniq, inverse = torch.unique(topk, dim=0, return_inverse=True)
    sel, fb = _select_unique(class_sims, uniq, m, own, chunk)
    return sel[inverse.reshape(-1)], fb[inverse.reshape(-1)]


def _own_first(own: Sequence[Sequence[int]], n_classes: int, m: int) -> torch.Tensor:
    out = torch.full((n_classes, m), -1, dtype=torch.long)
    for c, ids in enumerate(own):
        ids = sorted(set(int(i) for i in ids))[:m]
        out[c, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


def _select_unique(class_sims: torch.Tensor, topk: torch.Tensor, m: int, own: Sequence[Sequence[int]],
                   chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A description qualifies for candidate j when j is its best class in the neighbourhood (>=, so ties qualify
    for each tied class); its score, the mean of its differences to the neighbourhood, is then the same for every
    class it qualifies for, so it is computed once per neighbourhood, with the reference's arithmetic
    (((top - s0) + (top - s1)) + ...) / k, where top equals the candidate's own similarity bit for bit."""
    sims_t = class_sims.float().T.contiguous()  # (C, P): a neighbourhood's rows are contiguous
    P = sims_t.shape[1]
    N, k = topk.shape
    m_eff = min(m, P)
    selected = torch.full((N, k, m), -1, dtype=torch.long)
    fallback = torch.zeros((N, k), dtype=torch.bool)
    own_first = _own_first(own, sims_t.shape[0], m)
    ninf = torch.tensor(float("-inf"))

    def run(start: int) -> None:
        t = topk[start : start + chunk]
        G = sims_t[t]  # (n, k, P)
        top = G.amax(dim=1)
        acc = top - G[:, 0]
        for j in range(1, k):
            acc += top - G[:, j]
        score = acc / k
        for j in range(k):
            vals, idx = torch.topk(score.masked_fill(G[:, j] < top, ninf), m_eff, dim=1)  # best first
            idx[vals == ninf] = -1
            none = vals[:, 0] == ninf  # not one description qualifies
            if none.any():
                idx[none] = own_first[t[none, j]][:, :m_eff]
            selected[start : start + chunk, j, :m_eff] = idx
            fallback[start : start + chunk, j] = none

    starts = range(0, N, chunk)
    with one_thread():  # chunks in parallel threads instead (torch releases the GIL), each writing its own rows
        if len(starts) > 1 and _cores() > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=min(_cores(), 8)) as pool:
                list(pool.map(run, starts))
        else:
            for start in starts:
                run(start)
    return selected, fallback


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def masked_mean_similarity(X: torch.Tensor, pool_emb: torch.Tensor, selected: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """Mean similarity of each image to the selected descriptions of each candidate: (N, k)."""
    out = torch.zeros(selected.shape[:2])
    for s in range(0, X.shape[0], chunk):
        sel = selected[s : s + chunk]
        valid = sel >= 0
        emb = pool_emb[sel.clamp(min=0)]  # (n, k, m, D)
        sims = torch.einsum("nd,nkmd->nkm", X[s : s + chunk].float(), emb.float())
        out[s : s + chunk] = (sims * valid).sum(-1) / valid.sum(-1).clamp(min=1)
    return out


class _TextLookup:
    """Precomputed text embeddings handed to ``fit``; the model encodes only the texts it lacks."""

    def __init__(self, table=None):
        self.table = {} if table is None else dict(table)

    def encode(self, model, texts: list[str], batch_size: int) -> torch.Tensor:
        missing = list(dict.fromkeys(t for t in texts if t not in self.table))
        if len(missing) == len(texts):
            return model.encode_texts(texts, batch_size=batch_size)
        if missing:
            self.table.update(zip(missing, model.encode_texts(missing, batch_size=batch_size)))
        return torch.stack([torch.as_tensor(np.asarray(self.table[t], dtype=np.float32)) for t in texts])


class _SelectionMemo:
    """Memo of the selection per ordered neighbourhood, filled at predict time and kept for the fit.

    Selection depends only on the neighbourhood (and the fit), so every later ``predict``, ``predict_topk`` or
    ``sweep`` over images with a neighbourhood seen before reuses it; like the pair cache it stays the same object.
    """

    def __init__(self):
        self.rows: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}


class _PairEmbeddingCache:
    """Memo of "A photo of a {c}, {d}." embeddings, filled lazily at predict time.

    A fitted attribute that holds this object stays the same object while it fills, so predicting leaves
    the estimator's ``__dict__`` unchanged; the memo never changes a prediction.
    """

    def __init__(self):
        self.embeddings: dict[tuple[int, int], torch.Tensor] = {}


class DiscriminativeSelectionClassifier(ContrastiveHead):
    """DisCLIP-style head: per-image neighbourhood, per-candidate selected descriptions, argmax within.

    ``fit(classnames, X_sel, y_sel)`` needs a small labelled selection set (image features and class
    indices; ``n_per_class`` images per class, default: clipped to the smallest class). The scikit-learn
    form ``fit(X_sel, y_sel)`` takes the class names from ``classnames`` (else the description set's).
    ``mode``: "classname-free" scores w_cls * cos(x, caption) + mean cos(x, selected d); "classname-containing"
    scores the mean (or ``reduce="max"``) of cos(x, "A photo of a {c}, {d}.") over the selected d.
    Probabilities apply the model family's rule to ``scale * score (+ bias)`` within each image's
    neighbourhood (softmax for CLIP, sigmoid with the learnt bias for SigLIP); classes outside it get 0.
    """

    def __init__(self, model: ContrastiveModel, descriptions: DescriptionSet, k: int = 3, m: int = 5,
                 n_per_class: int | None = None, mode: str = "classname-free", w_cls: float = 0.0,
                 reduce: str = "mean", caption: str = "A photo of a {c}.", pair: str = "A photo of a {c}, {d}.",
                 batch_size: int = 1024, classnames: Sequence[str] | None = None):
        self.model = model
        self.descriptions = descriptions
        self.k, self.m, self.n_per_class = k, m, n_per_class
        self.mode, self.w_cls, self.reduce = mode, w_cls, reduce
        self.caption, self.pair, self.batch_size = caption, pair, batch_size
        self.classnames = classnames

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True  # the selection set's labels
        return tags

    def fit(self, X, y=None, y_sel=None, text_embeddings=None):
        """``fit(X_sel, y_sel)`` (image features, class indices) or ``fit(classnames, X_sel, y_sel)``.

        ``text_embeddings``: precomputed embeddings, a mapping text -> vector (the pool descriptions, the captions
        and, for classname-containing mode, the "A photo of a {c}, {d}." texts); texts it holds are not encoded.
        """
        if is_text_list(X):
            classnames, X_sel, y_sel = list(X), y, y_sel
        else:
            classnames, X_sel, y_sel = self._fit_inputs(X, y)
        if X_sel is None or y_sel is None:
            missing = "; it requires y to be passed, but the target y is None" if X_sel is not None else ""
            raise InputError(f"DiscriminativeSelectionClassifier.fit needs a labelled selection set (X_sel, y_sel){missing}")
        if self.mode not in ("classname-free", "classname-containing"):
            raise InputError(f"unknown mode '{self.mode}' (classname-free or classname-containing)")
        if self.reduce not in ("mean", "max"):
            raise InputError(f"unknown reduce '{self.reduce}' (mean or max)")
        dset = self.descriptions.aligned_to(classnames)
        pool = disclip_pool(dset.descriptions)
        self.text_lookup_ = _TextLookup(text_embeddings)
        pool_emb = self._encode(pool)
        X_sel, y_sel = self._check_training_data(X_sel, y_sel, pool_emb.shape[1], len(classnames), require_y=True)
        counts = np.bincount(y_sel, minlength=len(classnames))
        if counts.min() == 0:
            missing = [classnames[i] for i in np.flatnonzero(counts == 0)]
            raise InputError(f"selection set has no images of {len(missing)} class(es): {missing[:5]}")
        self.n_per_class_ = int(min(self.n_per_class or counts.min(), counts.min()))
        self.classes_ = np.array(classnames, dtype=object)
        self.class_descriptions_ = dset.descriptions
        self.pool_ = pool
        index = {d: i for i, d in enumerate(pool)}
        self.own_ = [[index[d] for d in ds] for ds in dset.descriptions]
        self.pool_embeddings_ = pool_emb
        self.caption_embeddings_ = self._encode([self.caption.replace("{c}", c) for c in classnames])
        self.class_sims_ = class_mean_similarities(pool_emb, X_sel, y_sel, len(classnames), self.n_per_class_)
        self.pair_cache_ = _PairEmbeddingCache()
        self.selection_memo_ = _SelectionMemo()
        self.n_features_in_ = int(pool_emb.shape[1])
        return self

    def _encode(self, texts: list[str]) -> torch.Tensor:
        return self.text_lookup_.encode(self.model, texts, self.batch_size)

    def _select(self, X: torch.Tensor, topk: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        k = min(self.k, len(self.classes_))
        topk = neighbourhoods(X, self.caption_embeddings_, k) if topk is None else topk
        uniq, inverse = torch.unique(topk, dim=0, return_inverse=True)
        memo = self.selection_memo_.rows
        keys = [tuple(r) for r in uniq.tolist()]
        todo = [i for i, key in enumerate(keys) if key not in memo]
        if todo:
            sel, fb = select_descriptions(self.class_sims_, uniq[todo], self.m, self.own_)
            memo.update({keys[i]: (sel[r], fb[r]) for r, i in enumerate(todo)})
        rows = [memo[key] for key in keys]
        inverse = inverse.reshape(-1)
        selected = torch.stack([r[0] for r in rows])[inverse] if rows else torch.empty((0, k, self.m), dtype=torch.long)
        fallback = torch.stack([r[1] for r in rows])[inverse] if rows else torch.empty((0, k), dtype=torch.bool)
        return topk, selected, fallback

    def select(self, X) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(neighbourhoods (N,k), selected pool indices (N,k,m), fallback flags (N,k))."""
        return self._select(self._features(X))

    def _pair_embeddings(self, topk: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
        """Embeddings of "A photo of a {c}, {d}." for every (candidate, selected d), encoding each pair once."""
        cache = self.pair_cache_.embeddings
        cls = topk.unsqueeze(-1).expand_as(selected)
        pairs = sorted({(int(c), int(d)) for c, d in zip(cls.reshape(-1).tolist(), selected.reshape(-1).tolist()) if d >= 0}
                       - set(cache))
        if pairs:
            texts = [self.pair.replace("{c}", str(self.classes_[c])).replace("{d}", self.pool_[d]) for c, d in pairs]
            emb = self._encode(texts)
            cache.update({p: emb[i] for i, p in enumerate(pairs)})
        dim = self.pool_embeddings_.shape[1]
        zero = torch.zeros(dim)
        flat = [cache.get((int(c), int(d)), zero) if d >= 0 else zero
                for c, d in zip(cls.reshape(-1).tolist(), selected.reshape(-1).tolist())]
        return torch.stack(flat).reshape(*selected.shape, dim)

    @staticmethod
    def cycled(selected: torch.Tensor) -> torch.Tensor:
        """Selected indices in ascending pool order, padded to m by cycling ([s0, s1, s0, s1, s0] for two):
        the classname-containing texts the reference builds, so repeated descriptions weigh more in the mean."""
        big = torch.iinfo(torch.long).max
        srt = torch.where(selected >= 0, selected, torch.full_like(selected, big)).sort(dim=-1).values
        count = (selected >= 0).sum(-1, keepdim=True).clamp(min=1)
        pos = torch.arange(selected.shape[-1]).expand_as(selected) % count
        out = torch.gather(srt, -1, pos)
        return torch.where(out == big, torch.full_like(out, -1), out)

    def _caption_scores(self, X: torch.Tensor, topk: torch.Tensor) -> torch.Tensor:
        return torch.gather(X @ self.caption_embeddings_.T, 1, topk)

    def sweep(self, X, y, weights: Sequence[float]) -> list[dict]:
        """Top-1 accuracy for each class-name weight (classname-free mode): the selection and both similarity
        terms are computed once, each weight costs one weighted sum and an argmax."""
        if self.mode != "classname-free":
            raise InputError("the w_cls sweep applies to mode 'classname-free' (classname-containing has no weight)")
        X = self._features(X)
        sims = X @ self.caption_embeddings_.T  # once: the neighbourhoods and the class-name term both read it
        topk, selected, _ = self._select(X, torch.topk(sims, min(self.k, len(self.classes_)), dim=1).indices)
        desc, cap = masked_mean_similarity(X, self.pool_embeddings_, selected), torch.gather(sims, 1, topk)
        y = y.cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
        out = []
        for w in weights:
            scores = desc + float(w) * cap if w else desc
            pred = torch.gather(topk, 1, scores.argmax(1, keepdim=True)).squeeze(1).numpy()
            out.append({"w_cls": float(w), "acc1": float((pred == y).mean()) if len(y) else float("nan")})
        return out

    def _neighbourhood_scores(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        topk, selected, _ = self._select(X)
        if self.mode == "classname-free":
            scores = masked_mean_similarity(X, self.pool_embeddings_, selected)
            if self.w_cls:
                scores = scores + self.w_cls * self._caption_scores(X, topk)
        else:
            padded = self.cycled(selected)
            emb = self._pair_embeddings(topk, padded)
            sims = torch.einsum("nd,nkmd->nkm", X, emb)
            valid = padded >= 0
            if self.reduce == "max":
                scores = torch.where(valid, sims, torch.tensor(float("-inf"))).max(-1).values
            else:
                scores = (sims * valid).sum(-1) / valid.sum(-1).clamp(min=1)
        return scores, topk, selected

    def neighbourhood_scores(self, X) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(scores (N,k), neighbourhoods (N,k), selected (N,k,m))."""
        return self._neighbourhood_scores(self._features(X))

    def _ranked(self, X) -> tuple[torch.Tensor, torch.Tensor]:
        """Neighbourhood classes ranked by score (N,k) and their probabilities by the model family's rule."""
        scores, topk, _ = self._neighbourhood_scores(self._features(X))
        order = scores.argsort(dim=1, descending=True)
        logits = self.model.logit_scale * torch.gather(scores, 1, order) + self.model.logit_bias
        return torch.gather(topk, 1, order), self.model.probabilities(logits)

    def predict(self, X) -> np.ndarray:
        """Best candidate of each image's neighbourhood (class indices)."""
        scores, topk, _ = self._neighbourhood_scores(self._features(X))
        return torch.gather(topk, 1, scores.argmax(1, keepdim=True)).squeeze(1).numpy()

    def predict_proba(self, X) -> np.ndarray:
        """(n_images, n_classes) float32: the neighbourhood's probabilities, 0 for classes outside it."""
        classes, probs = self._ranked(X)
        out = torch.zeros(classes.shape[0], len(self.classes_), dtype=probs.dtype)
        return out.scatter_(1, classes, probs).numpy()

    def predict_topk(self, X, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """Candidates ranked by their neighbourhood score (at most ``self.k`` columns) and their probabilities."""
        classes, probs = self._ranked(X)
        kk = min(k, classes.shape[1])
        return classes[:, :kk].numpy(), probs[:, :kk].numpy()

    def explain(self, x) -> list[dict]:
        """For one image feature: candidates, best first, with the descriptions that decided and their share."""
        X = self._features(x.reshape(1, -1) if isinstance(x, torch.Tensor) else np.asarray(x, np.float32).reshape(1, -1))
        scores, topk, selected = self._neighbourhood_scores(X)
        out = []
        for j in scores[0].argsort(descending=True).tolist():
            ids = [d for d in selected[0, j].tolist() if d >= 0]
            sims = (X @ self.pool_embeddings_[ids].T)[0] if ids else torch.empty(0)
            out.append({
                "class": str(self.classes_[int(topk[0, j])]), "class_index": int(topk[0, j]), "score": float(scores[0, j]),
                "descriptions": [{"text": self.pool_[d], "similarity": float(s), "contribution": float(s) / len(ids)}
                                 for d, s in zip(ids, sims.tolist())],
            })
        return out
