"""The router-kind registry: every router ``route train --router`` can fit and a bundle can name.

Adding a kind is one module plus one call::

    register_router_kind(RouterKind("my-router", lambda: MyRouter, summary="..."))

The class follows the scikit-learn estimator contract of ``visroute.router.learn.routers`` (``fit(X, Y)``,
``predict_proba``) and saves through ``visroute.router.learn.persist``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from visroute.registry import Registry


@dataclass(frozen=True)
class RouterKind:
    """Everything about one router kind."""

    name: str
    load: Callable[[], type]            # returns the estimator class (imported on first use: the CLI starts fast)
    sample_weight: bool = True          # fit() takes per-task weights
    options: tuple[str, ...] = ()       # `route train` options it takes, passed as keyword arguments
    summary: str = ""

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


for _kind in (
    RouterKind("knn", _builtin("KNNRouter"), summary="k nearest training tasks"),
    RouterKind("logistic", _builtin("LogisticRouter"), summary="one logistic regression per model"),
    RouterKind("mlp", _builtin("MLPRouter"), summary="a small multi-label network"),
    RouterKind("mf", _builtin("MatrixFactorizationRouter"), summary="matrix factorisation (tasks x models)"),
    RouterKind("slm", _builtin("SequenceClassifierRouter"), sample_weight=False, options=("checkpoint",),
               summary="a fine-tuned small language model on the raw task texts"),
):
    register_router_kind(_kind)
