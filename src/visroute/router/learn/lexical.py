"""The lexical router: words the sentence encoder smooths away, beside its embedding.

A MiniLM embedding says what a task is about; whether a given model gets it right often hangs on surface
features (a keyword, a format, the length). ``LexicalRouter`` fits one L2 logistic regression per model on

    [task embedding | TF-IDF of word 1-2-grams reduced by truncated SVD | log text length (standardised)]

and picks each model's regularisation ``C`` by inner cross-validation on its training rows only (weighted
log-loss; a model the text says little about is held near its base rate): one default configuration for every
dataset, nothing set by hand per table. The TF-IDF vocabulary and SVD are fitted on the training texts without
labels, once, and then reused by the inner folds.

Its input is ``TaskInputs`` (the task texts after the bundle's text rule, and their embeddings), which the
router kind declares (``RouterKind.inputs``), so training and every route-time entry point pass the same text.
Its fitted state is plain data (vocabulary as JSON; idf, SVD basis and coefficients as arrays), saved through
``visroute.router.learn.persist`` and range-checked when loaded (``_on_load``); prediction is numpy arithmetic.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.utils.validation import check_is_fitted

from visroute.errors import InputError
from visroute.router.learn.routers import SuccessRouter, check_sample_weight, check_success_matrix

MAX_VOCABULARY = 20000      # a bundle's vocabulary stays a few hundred kilobytes of JSON
MAX_TERM_CHARS = 200


@dataclass(frozen=True)
class TaskInputs:
    """Task texts and their numeric features (embeddings, image embeddings appended), row-aligned.

    Indexing with an integer array, a slice or a boolean mask selects rows of both, so cross-validation code
    that slices ``X[train]`` works unchanged."""

    texts: np.ndarray      # (n,) object array of str
    X: np.ndarray          # (n, d) float32

    @classmethod
    def of(cls, texts, X) -> "TaskInputs":
        t = np.empty(len(texts), dtype=object)
        t[:] = [str(s) for s in texts]
        X = np.asarray(X, np.float32)
        if X.ndim != 2 or len(X) != len(t):
            raise InputError(f"TaskInputs: {len(t)} texts but features of shape {X.shape}")
        return cls(t, X)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, idx) -> "TaskInputs":
        return TaskInputs(self.texts[idx], self.X[idx])


def _inputs(X, owner: str) -> TaskInputs:
    if not isinstance(X, TaskInputs):
        raise InputError(f"{owner} needs TaskInputs (task texts and their embeddings) as X, got {type(X).__name__}")
    if not np.isfinite(X.X).all():
        raise InputError(f"{owner}: the task features hold NaN or infinity")
    return X


def _analyzer(ngram_max: int):
    from sklearn.feature_extraction.text import CountVectorizer

    return CountVectorizer(ngram_range=(1, ngram_max), lowercase=True).build_analyzer()


def _counts(texts, vocabulary: dict[str, int], ngram_max: int):
    """(n, V) sparse term counts over a fixed vocabulary (no fitting: the same at train and route time)."""
    from sklearn.feature_extraction.text import CountVectorizer

    vec = CountVectorizer(ngram_range=(1, ngram_max), lowercase=True, vocabulary=vocabulary, dtype=np.float64)
    return vec.transform(list(texts))


def _tfidf(counts, idf: np.ndarray):
    """Sublinear TF (1 + log tf) times idf, each row scaled to unit length (scikit-learn's TfidfVectorizer)."""
    from sklearn.preprocessing import normalize

    m = counts.tocsr(copy=True)
    m.data = 1.0 + np.log(m.data)
    return normalize(m.multiply(idf[None, :]).tocsr(), norm="l2", copy=False)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # exact logistic, no overflow


class LexicalRouter(SuccessRouter):
    """Per-model L2 logistic regression on embedding + TF-IDF (SVD) + length, each ``C`` by inner cross-validation.

    ``c_low``..``c_high``: the log-spaced grid of ``n_c`` values searched with ``cv`` inner folds (log-loss);
    ``svd_components``: TF-IDF dimensions kept (0: no word features); ``min_df``: documents a term needs."""

    def __init__(self, c_low: float = 0.01, c_high: float = 10.0, n_c: int = 4, cv: int = 3, ngram_max: int = 2,
                 min_df: int = 2, svd_components: int = 128, max_iter: int = 500, seed: int = 0):
        self.c_low, self.c_high, self.n_c, self.cv = c_low, c_high, n_c, cv
        self.ngram_max, self.min_df, self.svd_components = ngram_max, min_df, svd_components
        self.max_iter, self.seed = max_iter, seed

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False  # X is TaskInputs: scikit-learn's generic array checks do not apply
        tags.input_tags.string = True
        return tags

    def _check_params(self) -> None:
        ok = (0 < self.c_low <= self.c_high and math.isfinite(self.c_high) and int(self.n_c) >= 1
              and int(self.cv) >= 2 and 1 <= int(self.ngram_max) <= 3 and int(self.min_df) >= 1
              and int(self.svd_components) >= 0 and int(self.max_iter) >= 1)
        if not ok:
            raise InputError("LexicalRouter: need 0 < c_low <= c_high (finite), n_c >= 1, cv >= 2, ngram_max in 1..3, "
                             "min_df >= 1, svd_components >= 0, max_iter >= 1")

    def grid(self) -> np.ndarray:
        """The values of C the inner cross-validation compares."""
        return np.geomspace(self.c_low, self.c_high, int(self.n_c))

    # -- features -------------------------------------------------------------------------------------------
    def _fit_words(self, texts: np.ndarray) -> None:
        """Vocabulary, idf and SVD basis from the training texts (no labels)."""
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import CountVectorizer

        n, vocab = len(texts), None
        for min_df in dict.fromkeys((min(int(self.min_df), max(n, 1)), 1)):  # a tiny table: every term counts
            try:
                cv = CountVectorizer(ngram_range=(1, int(self.ngram_max)), min_df=min_df, max_features=MAX_VOCABULARY,
                                     dtype=np.float64).fit(list(texts))
                vocab = sorted(cv.vocabulary_, key=cv.vocabulary_.get)
                break
            except ValueError:  # no term survives (empty texts, or min_df above every term's count)
                continue
        vocab = [t for t in (vocab or []) if len(t) <= MAX_TERM_CHARS]
        k = min(int(self.svd_components), len(vocab) - 1, n - 1)
        if k < 1:
            self.vocabulary_, self.idf_, self.components_ = [], np.zeros(0), np.zeros((0, 0), np.float32)
            return
        index = {t: i for i, t in enumerate(vocab)}
        counts = _counts(texts, index, int(self.ngram_max))
        df = np.asarray((counts > 0).sum(axis=0)).ravel()
        self.vocabulary_, self.idf_ = vocab, np.log((1.0 + n) / (1.0 + df)) + 1.0  # smooth idf, as scikit-learn
        svd = TruncatedSVD(k, algorithm="randomized", random_state=int(self.seed)).fit(_tfidf(counts, self.idf_))
        self.components_ = svd.components_.astype(np.float32)

    def _features(self, inputs: TaskInputs) -> np.ndarray:
        length = np.log1p(np.array([len(t) for t in inputs.texts], np.float64))
        parts = [inputs.X.astype(np.float64)]
        if len(self.vocabulary_):
            words = _tfidf(_counts(inputs.texts, {t: i for i, t in enumerate(self.vocabulary_)}, int(self.ngram_max)),
                           self.idf_)
            parts.append(np.asarray(words @ self.components_.T.astype(np.float64)))
        parts.append(((length - self.length_mean_) / self.length_scale_)[:, None])
        return np.hstack(parts)

    # -- fit / predict -----------------------------------------------------------------------------------------
    def fit(self, X, y, sample_weight=None):
        """X: ``TaskInputs``; y (n_tasks, n_models) successes in [0, 1] (NaN: not run)."""
        self._check_params()
        inputs = _inputs(X, "LexicalRouter")
        Y = check_success_matrix(y, len(inputs), "LexicalRouter").astype(np.float64)
        w = check_sample_weight(sample_weight, len(inputs), "LexicalRouter").astype(np.float64)
        keep = w > 0  # a zero-weight task carries no evidence, not even for the vocabulary
        inputs, Y, w = inputs[keep], Y[keep], w[keep]
        self._fit_words(inputs.texts)
        length = np.log1p(np.array([len(t) for t in inputs.texts], np.float64))
        self.length_mean_, self.length_scale_ = float(length.mean()), float(length.std() or 1.0)
        F = self._features(inputs)
        self.C_ = self._select_c(F, Y, w).astype(np.float64)
        coef, intercept = zip(*(self._fit_one(F, Y[:, j], w, self.C_[j]) for j in range(Y.shape[1])))
        self.coef_, self.intercept_ = np.stack(coef), np.array(intercept)
        self.n_features_in_, self.n_models_ = int(inputs.X.shape[1]), int(Y.shape[1])
        return self

    def _fit_one(self, F, y, w, C, model=None):
        """(coef, intercept) of one model's logistic regression on its observed rows; soft outcomes count as a
        success with weight y and a failure with weight 1 - y. One outcome only: the shrunk rate, no slope."""
        from sklearn.linear_model import LogisticRegression

        seen = ~np.isnan(y)
        F, y, w = F[seen], y[seen], w[seen]
        pos, neg = float((w * y).sum()), float((w * (1 - y)).sum())
        if pos <= 0 or neg <= 0:
            p = (pos + 1.0) / (pos + neg + 2.0)
            return np.zeros(F.shape[1]), float(np.log(p / (1 - p)))
        Fx = np.vstack([F, F])
        lab = np.r_[np.ones(len(F)), np.zeros(len(F))]
        wx = np.r_[w * y, w * (1 - y)]
        nz = wx > 0
        lr = model or LogisticRegression(max_iter=int(self.max_iter))
        lr.set_params(C=float(C))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning at max_iter: the inner CV still compares fairly
            lr.fit(Fx[nz], lab[nz], sample_weight=wx[nz])
        return lr.coef_[0].copy(), float(lr.intercept_[0])

    def _select_c(self, F, Y, w) -> np.ndarray:
        """Per model, the grid value with the least inner-cross-validated log-loss (ties: the smaller C)."""
        from sklearn.linear_model import LogisticRegression

        grid = self.grid()
        n, m = F.shape[0], Y.shape[1]
        if len(grid) == 1 or n < 2 * int(self.cv):
            return np.full(m, grid[len(grid) // 2])
        fold = np.random.default_rng(int(self.seed)).permutation(n) % int(self.cv)
        loss = np.zeros((m, len(grid)))
        for f in range(int(self.cv)):
            tr, va = fold != f, fold == f
            for j in range(m):
                yv, wv = Y[va, j], w[va]
                seen = ~np.isnan(yv)
                if not seen.any():
                    continue
                lr = LogisticRegression(max_iter=int(self.max_iter), warm_start=True)  # the path from small C up
                for i, C in enumerate(grid):
                    coef, b = self._fit_one(F[tr], Y[tr, j], w[tr], C, lr)
                    p = np.clip(_sigmoid(F[va][seen] @ coef + b), 1e-6, 1 - 1e-6)
                    t = yv[seen]
                    loss[j, i] -= float((wv[seen] * (t * np.log(p) + (1 - t) * np.log(1 - p))).sum())
        return grid[np.argmin(loss, axis=1)]

    def predict_proba(self, X) -> np.ndarray:
        """(n_tasks, n_models) float64 success probabilities."""
        check_is_fitted(self)
        inputs = _inputs(X, "LexicalRouter")
        if inputs.X.shape[1] != self.n_features_in_:
            raise InputError(f"LexicalRouter: X has {inputs.X.shape[1]} features, but the router is expecting "
                             f"{self.n_features_in_} features as input")
        if not len(inputs):
            return np.zeros((0, self.n_models_), np.float64)
        return _sigmoid(self._features(inputs) @ self.coef_.T + self.intercept_)

    def _on_load(self) -> None:
        """Range-check restored state: a tampered bundle is refused, never routed on."""
        from visroute.router.learn.persist import BundleError

        try:
            vocab, idf, comp = self.vocabulary_, np.asarray(self.idf_, np.float64), np.asarray(self.components_)
            coef, b = np.asarray(self.coef_, np.float64), np.asarray(self.intercept_, np.float64)
            d, m, k = int(self.n_features_in_), int(self.n_models_), comp.shape[0] if comp.size else 0
            ok = (isinstance(vocab, list) and len(vocab) <= MAX_VOCABULARY
                  and all(isinstance(t, str) and 0 < len(t) <= MAX_TERM_CHARS for t in vocab)
                  and len(set(vocab)) == len(vocab) and idf.shape == (len(vocab),)
                  and (not vocab or comp.shape == (k, len(vocab))) and 1 <= d <= 1_000_000 and 1 <= m <= 10_000
                  and coef.shape == (m, d + k + 1) and b.shape == (m,)
                  and all(np.isfinite(a).all() for a in (idf, comp, coef, b))
                  and (not len(idf) or idf.min() >= 1.0)
                  and math.isfinite(float(self.length_mean_)) and math.isfinite(float(self.length_scale_))
                  and float(self.length_scale_) > 0 and np.shape(self.C_) == (m,) and np.isfinite(self.C_).all()
                  and (np.asarray(self.C_) > 0).all())
        except (AttributeError, TypeError, ValueError, IndexError):
            ok = False
        if not ok:
            raise BundleError("lexical router state is inconsistent or out of range (vocabulary, idf, SVD basis, "
                              "coefficients or length scaling)")
        self.idf_, self.components_ = idf, comp.astype(np.float32).reshape(k, len(vocab))
        self.coef_, self.intercept_ = coef, b
