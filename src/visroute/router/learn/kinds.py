"""The router-kind registry: every router ``route train --router`` can fit and a bundle can name.

Adding a kind is one module plus one call::

    register_router_kind(RouterKind("my-router", lambda: MyRouter, summary="..."))

The class follows the scikit-learn estimator contract of ``visroute.router.learn.routers`` (``fit(X, Y)``,
``predict_proba``) and saves through ``visroute.router.learn.persist``. ``inputs`` says what its ``X`` is: the
task-text embeddings (``"embedding"``), the task texts themselves (``"text"``), or both
(``"text+embedding"``: a ``TaskInputs``); ``features`` builds it, the same way in training and at route time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from visroute.registry import Registry

INPUTS = ("embedding", "text", "text+embedding")


@dataclass(frozen=True)
class RouterKind:
    """Everything about one router kind."""

    name: str
    load: Callable[[], type]            # returns the estimator class (imported on first use: the CLI starts fast)
    sample_weight: bool = True          # fit() takes per-task weights
    options: tuple[str, ...] = ()       # `route train` options it takes, passed as keyword arguments
    summary: str = ""
    inputs: str = "embedding"           # what X is: "embedding", "text" or "text+embedding" (see module docstring)

    def __post_init__(self):
        if self.inputs not in INPUTS:
            raise ValueError(f"router kind '{self.name}': inputs must be one of {', '.join(INPUTS)}")

    @property
    def needs_embedding(self) -> bool:
        return self.inputs != "text"

    def features(self, texts, X=None):
        """The router's X from the (rule-stripped) task texts and their numeric features."""
        if self.inputs == "text":
            return list(texts)
        if self.inputs == "embedding":
            return X
        from visroute.router.learn.lexical import TaskInputs

        return TaskInputs.of(texts, X)

    @property
    def cls(self) -> type:
        return self.load()

    def make(self, **kw):
        return self.cls(**kw)

    def fit(self, router, X, Y, weight=None):
        return router.fit(X, Y, sample_weight=weight) if self.sample_weight else router.fit(X, Y)


ROUTER_KINDS: Registry[RouterKind] = Registry("router kind")


def register_router_kind(kind: RouterKind, replace: bool = False) -> RouterKind:
    return ROUTER_KINDS.register(kind.name, kind, replace)


def make_router(name: str, **kw):
    return ROUTER_KINDS[name].make(**kw)


def _builtin(name: str) -> Callable[[], type]:
    def load() -> type:
        from visroute.router.learn import routers

        return getattr(routers, name)
    return load


def _lexical() -> type:
    from visroute.router.learn.lexical import LexicalRouter

    return LexicalRouter


for _kind in (
    RouterKind("knn", _builtin("KNNRouter"), summary="k nearest training tasks"),
    RouterKind("logistic", _builtin("LogisticRouter"), summary="one logistic regression per model"),
    RouterKind("mlp", _builtin("MLPRouter"), summary="a small multi-label network"),
    RouterKind("mf", _builtin("MatrixFactorizationRouter"), summary="matrix factorisation (tasks x models)"),
    RouterKind("slm", _builtin("SequenceClassifierRouter"), sample_weight=False, options=("checkpoint",),
               inputs="text", summary="a fine-tuned small language model on the raw task texts"),
    RouterKind("lexical", _lexical, inputs="text+embedding",
               summary="one logistic regression per model on words (TF-IDF) + embedding + length, C by inner CV"),
):
    register_router_kind(_kind)
