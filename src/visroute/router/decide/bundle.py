"""A trained router, saved with everything needed to use it: the exact pipeline specs it routes between
(as measured), model costs, lambda and its features. Saved as data only (``router.json`` + safetensors, see
``visroute.router.learn.persist``): loading a bundle runs no code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from visroute.errors import VisrouteError
from visroute.router.decide.rules import apply_rule, calibrate, choose, decision_rule, unreachable
from visroute.router.learn.persist import BundleError, load_state, save_state
from visroute.router.learn.kinds import ROUTER_KINDS
from visroute.router.data.table import RoutingTable
from visroute.router.data.texts import TextRule

SCHEMA = "visroute.router/2"


def check_lambda(value, where: str = "lambda", error=VisrouteError) -> float:
    """λ (the price of one unit of cost in accuracy) must be a finite number >= 0: a negative or NaN λ rewards cost."""
    try:
        lam = float(value)
    except (TypeError, ValueError):
        raise error(f"{where} must be a number, found {value!r:.40}") from None
    if not np.isfinite(lam) or lam < 0:
        raise error(f"{where} must be finite and >= 0, found {value!r:.40}")
    return lam


@dataclass
class Decision:
    """Which model a task goes to, and what the router expected of each."""

    chosen: str
    lam: float
    predicted_accuracy: dict[str, float]
    expected_cost: dict[str, float]
    plan: dict = field(default_factory=dict)   # models to call in order (``visroute.router.decide.plan``); chosen = first


@dataclass
class RouterBundle:
    router: Any
    kind: str
    models: list[str]
    costs: np.ndarray
    lam: float = 0.0
    features: str = "text"                 # "text" or "text+image"
    image_model: str | None = None
    pipelines: dict[str, dict[str, dict]] = field(default_factory=dict)   # model -> prompt variant -> spec dict
    default_variant: dict[str, str] = field(default_factory=dict)         # model -> variant used at route time
    meta: dict = field(default_factory=dict)
    text_rule: TextRule = field(default_factory=TextRule)                 # shared affixes the features strip
    strategy: dict = field(default_factory=lambda: {"kind": "router"})    # router, cascade or ensemble (router.plan)
    decision: dict | None = None          # shrink + chain cap (rules.decision_rule); None: the raw predictions
    family_router: Any = None             # a hierarchy's stage one: P(any model of each family succeeds)

    # -- features ---------------------------------------------------------------------------------
    def _runtime(self, runtime=None):
        """The caller's runtime (a service's, a ``Router``'s) or, for training and evaluation, this bundle's own."""
        if runtime is not None:
            return runtime
        from visroute.pipeline.build import Runtime

        return self.__dict__.setdefault("_own_runtime", Runtime())

    def _embedder(self, runtime=None):
        from visroute.router.data.embed import text_embedder

        return text_embedder(self._runtime(runtime))

    def featurise(self, texts, images: np.ndarray | None = None, *, runtime=None) -> Any:
        """Router input as its kind declares (``RouterKind.inputs``): the task texts (slm), their embeddings with
        image embeddings appended (text+image), or both (lexical). The bundle's text rule removes the shared
        affixes first, exactly as in training."""
        texts = self.text_rule.apply_all(texts)
        entry = ROUTER_KINDS[self.kind]
        if not entry.needs_embedding:
            return entry.features(texts)
        X = self._embedder(runtime).embed(list(texts))
        if self.features == "text+image":
            if images is None:
                raise VisrouteError("this router also looks at the image: give image embeddings")
            X = np.hstack([X, np.asarray(images, np.float32)])
        return entry.features(texts, X)

    def predict_proba(self, texts, images: np.ndarray | None = None, runtime=None) -> np.ndarray:
        """Predicted success per task and model as the decision uses it (the bundle's ``decision`` rule applied)."""
        X = self.featurise(texts, images) if runtime is None else self.featurise(texts, images, runtime=runtime)
        return apply_rule(self.router.predict_proba(X), self.decision, self.costs)

    def family_proba(self, texts, images: np.ndarray | None = None, runtime=None) -> np.ndarray | None:
        """A hierarchy's stage-one predictions (tasks x families, sorted names); None for other strategies."""
        if self.family_router is None:
            return None
        X = self.featurise(texts, images) if runtime is None else self.featurise(texts, images, runtime=runtime)
        return np.asarray(self.family_router.predict_proba(X), np.float64)

    def decide(self, texts, images: np.ndarray | None = None, lam: float | None = None,
               runtime=None) -> tuple[np.ndarray, np.ndarray]:
        """Batch decision on precomputed image embeddings: (model index per task, predicted success)."""
        proba = self.predict_proba(texts, images, runtime)
        return choose(proba, self.costs, self.lam if lam is None else lam), proba

    def choose(self, text: str, image=None, lam: float | None = None, runtime=None) -> "Decision":
        """The one routing decision every entry point makes (``visroute route``, ``Router.route``, ``/v1/route``,
        the chat proxy): ``image`` is a file path, a decoded PIL image or None (text-only). Models load through
        ``runtime``'s memo, so a service that passes its runtime holds one copy of each."""
        images = None
        if self.features == "text+image":
            from visroute.router.data.images import encode_paths, encode_pils

            rt = self._runtime(runtime)
            if image is None or isinstance(image, (str, Path)):
                images = encode_paths(self.image_model, [str(image) if image is not None else ""], rt)
            else:
                images = encode_pils(self.image_model, [image], rt)
        from visroute.router.decide.plan import plan

        lam = self.lam if lam is None else float(lam)
        X = self.featurise([text], images) if runtime is None else self.featurise([text], images, runtime=runtime)
        proba = apply_rule(self.router.predict_proba(X), self.decision, self.costs)
        fam = None if self.family_router is None else np.asarray(self.family_router.predict_proba(X))[0]
        p = plan(self.strategy, proba[0], self.costs, lam, fam)
        p["calls"] = [self.models[j] for j in p["calls"]]
        return Decision(p["calls"][0], lam, {m: float(v) for m, v in zip(self.models, proba[0])},
                        {m: float(c) for m, c in zip(self.models, self.costs)}, p)

    def table_images(self, part: RoutingTable) -> np.ndarray | None:
        """Image embeddings for table rows from the feature cache (None for text-only routers)."""
        if self.features != "text+image":
            return None
        from visroute.router.data.images import table_image_embeddings

        return table_image_embeddings(self.image_model, part, self._runtime())

    def pipeline_spec(self, model: str, variant: str | None = None):
        """The exact pipeline spec that was measured for ``model`` (and prompt variant)."""
        from visroute.pipeline.spec import PipelineSpec

        per = self.pipelines.get(model)
        if not per:
            raise VisrouteError(f"the router has no pipeline spec for '{model}': its records were written without one")
        v = variant or self.default_variant.get(model) or next(iter(per))
        if v not in per:
            raise VisrouteError(f"'{model}' was measured with prompt variant(s) {sorted(per)}, not '{v}'")
        return PipelineSpec.from_dict(per[v], f"router pipeline '{model}'")

    # -- persistence --------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        from visroute.io import atomic_write_json

        d = Path(directory)
        state = save_state(self.router, d / "state")
        family = save_state(self.family_router, d / "family_state") if self.family_router is not None else None
        info = {"schema": SCHEMA, "kind": self.kind, "models": self.models, "costs": [float(c) for c in self.costs],
                "lambda": self.lam, "features": self.features, "image_model": self.image_model,
                "pipelines": self.pipelines, "default_variant": self.default_variant, "meta": self.meta, "router": state,
                "text_rule": self.text_rule.to_dict(), "strategy": self.strategy, "decision": self.decision,
                "family_router": family}
        atomic_write_json(d / "router.json", info, indent=1)
        return d

    @classmethod
    def load(cls, directory: str | Path) -> "RouterBundle":
        d = Path(directory)
        path = d / "router.json"
        if not path.is_file():
            raise VisrouteError(f"{d} holds no trained router (run `visroute route train` first)")
        from visroute.safe_load import SafeLoadError, read_json

        try:
            info = read_json(path, "router file")
        except SafeLoadError as e:
            raise BundleError(str(e)) from None
        if not isinstance(info, dict) or info.get("schema") != SCHEMA:
            found = info.get("schema") if isinstance(info, dict) else None
            raise BundleError(f"{path}: expected a router of schema {SCHEMA}, found {found!r} (retrain it with "
                              "`visroute route train`; older bundles held pickles and are not loaded)")
        kind = info.get("kind")
        if kind not in ROUTER_KINDS:
            raise BundleError(f"{path}: unknown router kind {kind!r} ({', '.join(ROUTER_KINDS)})")
        try:
            models, costs = [str(m) for m in info["models"]], np.asarray(info["costs"], dtype=np.float64)
            features = info["features"]
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"{path}: missing or malformed key {e}") from None
        if features not in ("text", "text+image") or len(costs) != len(models) or not models:
            raise BundleError(f"{path}: 'features' must be text or text+image and 'costs' match 'models'")
        if costs.ndim != 1 or not np.all(np.isfinite(costs)) or np.any(costs < 0):
            raise BundleError(f"{path}: 'costs' must be finite numbers >= 0, found {costs.tolist()!r:.80}")
        lam = check_lambda(info.get("lambda", 0.0), f"{path}: 'lambda'", BundleError)
        for key in ("pipelines", "default_variant", "meta", "router"):
            if not isinstance(info.get(key) or {}, dict):
                raise BundleError(f"{path}: '{key}' must be a JSON object")
        try:
            router = load_state(ROUTER_KINDS[kind].cls, info.get("router") or {}, d / "state")
        except BundleError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError) as e:  # wrong state types: one line, not a traceback
            raise BundleError(f"{path}: router state does not fit a {kind} router ({' '.join(str(e).split())[:120]})") \
                from None
        bundle = cls(router, kind, models, costs, lam, features, info.get("image_model"),
                     dict(info.get("pipelines") or {}), dict(info.get("default_variant") or {}), dict(info.get("meta") or {}),
                     TextRule.from_dict(info.get("text_rule")), _strategy(info.get("strategy"), len(models), path),
                     _decision(info.get("decision"), len(models), path))
        if bundle.strategy["kind"] == "hierarchy":
            if not isinstance(info.get("family_router"), dict):
                raise BundleError(f"{path}: a hierarchy bundle needs its 'family_router' state")
            try:
                bundle.family_router = load_state(ROUTER_KINDS[kind].cls, info["family_router"], d / "family_state")
            except BundleError:
                raise
            except (TypeError, ValueError, KeyError, AttributeError) as e:
                raise BundleError(f"{path}: family router state does not fit a {kind} router "
                                  f"({' '.join(str(e).split())[:120]})") from None
        bundle.validate(path)
        return bundle

    def validate(self, where) -> None:
        """Refuse a bundle whose router cannot answer: one probe through ``predict_proba`` on a zero input of the
        fitted width must give one finite probability in [0, 1] per model (a bundle with wrong state types would
        otherwise load, report ready, and fail every request)."""
        outputs = [(self.router, len(self.models), "model")]
        if self.family_router is not None:
            from visroute.router.decide.hierarchy import family_names

            outputs.append((self.family_router, len(family_names(self.strategy["families"])), "family"))
        entry = ROUTER_KINDS[self.kind]
        for router, n_out, what in outputs:
            width = getattr(router, "n_features_in_", None)
            if not entry.needs_embedding or width is None:
                continue
            try:
                p = np.asarray(router.predict_proba(entry.features(["probe"], np.zeros((1, int(width)), np.float32))),
                               dtype=np.float64)
            except Exception as e:  # noqa: BLE001 - any failure here means the state is unusable
                raise BundleError(f"{where}: the router cannot predict with its saved state "
                                  f"({type(e).__name__}: {' '.join(str(e).split())[:120]})") from None
            if p.shape != (1, n_out) or not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
                raise BundleError(f"{where}: the router's probe answer has shape {p.shape} or values outside [0, 1]; "
                                  f"expected one probability per {what} ({n_out})")


def _strategy(d, n_models: int, path) -> dict:
    """A saved strategy, range-checked (it decides which models are called)."""
    from visroute.router.decide.plan import CASCADE_CONFIDENCES, STRATEGIES

    d = d if d is not None else {"kind": "router"}
    ok = isinstance(d, dict) and d.get("kind") in STRATEGIES
    if ok and d["kind"] == "cascade":
        ch = d.get("chain")
        ok = isinstance(ch, list) and bool(ch) and all(isinstance(j, int) and 0 <= j < n_models for j in ch) \
            and isinstance(d.get("threshold"), (int, float)) and d.get("confidence", "router") in CASCADE_CONFIDENCES
    if ok and d["kind"] == "ensemble":
        ok = isinstance(d.get("margin"), (int, float)) and 0 <= d["margin"] <= 1
    if ok and d["kind"] == "hierarchy":
        fam = d.get("families")
        ok = isinstance(fam, list) and len(fam) == n_models and all(isinstance(f, str) and 0 < len(f) <= 64 for f in fam)
    if not ok:
        raise BundleError(f"{path}: malformed 'strategy' {str(d)[:120]}")
    return dict(d)


def _decision(d, n_models: int, path) -> dict | None:
    """A saved decision rule, range-checked (None: a bundle from before it, routed on the raw predictions)."""
    if d is None:
        return None
    try:
        shrink, prior = float(d["shrink"]), [float(v) for v in d["prior"]]
        chain = list(d["chain"])
        ok = (0.0 <= shrink <= 1.0 and len(prior) == n_models and all(0.0 <= v <= 1.0 for v in prior) and chain
              and all(isinstance(j, int) and 0 <= j < n_models for j in chain))
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise BundleError(f"{path}: malformed 'decision' {str(d)[:120]}")
    return {"shrink": shrink, "prior": prior, "chain": chain}


def _default_variants(table: RoutingTable, pipelines: dict) -> dict[str, str]:
    """Per model, the measured prompt variant with the best training accuracy: the one used at route time."""
    train = table.part("train")
    out = {}
    for j, m in enumerate(table.models):
        variants = sorted(pipelines.get(m, {}))
        if len(variants) <= 1:
            out.update({m: variants[0]} if variants else {})
            continue
        acc = {v: float(np.nanmean(train.success[train.prompt == v, j])) if (train.prompt == v).any() else -1.0
               for v in variants}
        out[m] = max(variants, key=lambda v: (np.nan_to_num(acc[v], nan=-1.0), v == "mcq"))
    return out


def train_bundle(table: RoutingTable, kind: str = "knn", features: str = "text", image_model: str | None = None,
                 target_cost: float | None = None, target_share: float | None = None, heavy: str | None = None,
                 router_kw: dict | None = None, strategy: str = "router") -> RouterBundle:
    """Fit a router on the table's train split and calibrate lambda on its validation split."""
    train, val = table.part("train"), table.part("val")
    if len(train) == 0:
        raise VisrouteError("the routing table has no training rows")
    if features not in ("text", "text+image"):
        raise VisrouteError("features must be 'text' or 'text+image'")
    if features == "text+image" and not image_model:
        raise VisrouteError("a text+image router needs --image-model (a contrastive model spec)")
    from visroute.router.decide.rules import check_targets

    check_targets(target_cost, target_share)
    if heavy is not None and heavy not in table.models:
        raise VisrouteError(f"--heavy '{heavy}' is not a model of the table ({', '.join(table.models)})")
    pipelines = dict(table.meta.get("pipelines") or {})
    entry = ROUTER_KINDS[kind]
    bundle = RouterBundle(entry.make(**(router_kw or {})), kind, list(table.models), train.model_costs(),
                          0.0, features, image_model, pipelines, _default_variants(table, pipelines), {"table": table.meta},
                          TextRule.from_dict(table.meta.get("text_rule")))
    Xtr = bundle.featurise(train.text, bundle.table_images(train))
    entry.fit(bundle.router, Xtr, train.success, train.weight)
    bundle.decision = decision_rule(train.success, bundle.costs)
    if target_cost is not None or target_share is not None:
        cal = val if len(val) else train
        proba = bundle.predict_proba(cal.text, bundle.table_images(cal))
        idx = table.models.index(heavy) if heavy else int(np.argmax(bundle.costs))
        bundle.lam = calibrate(proba, bundle.costs, target_cost=target_cost, target_share=target_share, model_index=idx)
        picks = choose(proba, bundle.costs, bundle.lam)
        realised_share = float(np.mean(picks == idx))
        realised_cost = float(np.nanmean(np.nan_to_num(cal.cost[np.arange(len(cal)), picks]))) if len(cal) else 0.0
        bundle.meta["calibration"] = {"target_cost": target_cost, "target_share": target_share, "heavy": table.models[idx],
                                      "rows": len(cal), "realised_share": realised_share, "realised_cost": realised_cost,
                                      "unreachable": unreachable(target_cost, target_share, realised_cost,
                                                                 realised_share, table.models[idx], len(cal))}
    if strategy == "hierarchy":
        from visroute.router.decide.plan import fit_hierarchy

        fit_hierarchy(bundle, table, Xtr, kind, router_kw, target_cost)
    elif strategy != "router":
        from visroute.router.decide.plan import calibration_record, fit_strategy, outcomes

        from visroute.router.decide.variants import part_consensus

        cal = val if len(val) else train
        votes = part_consensus(table, "val" if len(val) else "train")
        proba = bundle.predict_proba(cal.text, bundle.table_images(cal))
        bundle.strategy = fit_strategy(strategy, proba, cal.success, cal.cost, bundle.costs, train.success, bundle.lam,
                                       target_cost, cal.score, cal.answer, votes)
        out = outcomes(bundle.strategy, proba, cal.success, cal.cost, bundle.costs, bundle.lam, cal.score,
                       answers=cal.answer, consensus=votes)
        bundle.meta["strategy_calibration"] = calibration_record(out, len(cal), target_cost)
    return bundle
