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
from visroute.router.decide.rules import calibrate, choose
from visroute.router.learn.persist import BundleError, load_state, save_state
from visroute.router.learn.kinds import ROUTER_KINDS
from visroute.router.data.table import RoutingTable

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

    # -- features ---------------------------------------------------------------------------------
    def _embedder(self):
        from visroute.router.data.embed import TextEmbedder

        return self.__dict__.setdefault("_text_embedder", TextEmbedder())

    def featurise(self, texts, images: np.ndarray | None = None) -> Any:
        """Router input: task texts (slm) or their embeddings, with image embeddings appended (text+image)."""
        if getattr(self.router, "takes_text", False):
            return list(texts)
        X = self._embedder().embed(list(texts))
        if self.features == "text+image":
            if images is None:
                raise VisrouteError("this router also looks at the image: give image embeddings")
            X = np.hstack([X, np.asarray(images, np.float32)])
        return X

    def predict_proba(self, texts, images: np.ndarray | None = None) -> np.ndarray:
        return np.asarray(self.router.predict_proba(self.featurise(texts, images)))

    def decide(self, texts, images: np.ndarray | None = None, lam: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        proba = self.predict_proba(texts, images)
        return choose(proba, self.costs, self.lam if lam is None else lam), proba

    def table_images(self, part: RoutingTable) -> np.ndarray | None:
        """Image embeddings for table rows from the feature cache (None for text-only routers)."""
        if self.features != "text+image":
            return None
        from visroute.router.data.images import table_image_embeddings

        return table_image_embeddings(self.image_model, part)

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
        info = {"schema": SCHEMA, "kind": self.kind, "models": self.models, "costs": [float(c) for c in self.costs],
                "lambda": self.lam, "features": self.features, "image_model": self.image_model,
                "pipelines": self.pipelines, "default_variant": self.default_variant, "meta": self.meta, "router": state}
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
                     dict(info.get("pipelines") or {}), dict(info.get("default_variant") or {}), dict(info.get("meta") or {}))
        bundle.validate(path)
        return bundle

    def validate(self, where) -> None:
        """Refuse a bundle whose router cannot answer: one probe through ``predict_proba`` on a zero input of the
        fitted width must give one finite probability in [0, 1] per model (a bundle with wrong state types would
        otherwise load, report ready, and fail every request)."""
        width = getattr(self.router, "n_features_in_", None)
        if getattr(self.router, "takes_text", False) or width is None:
            return
        try:
            p = np.asarray(self.router.predict_proba(np.zeros((1, int(width)), np.float32)), dtype=np.float64)
        except Exception as e:  # noqa: BLE001 - any failure here means the state is unusable
            raise BundleError(f"{where}: the router cannot predict with its saved state "
                              f"({type(e).__name__}: {' '.join(str(e).split())[:120]})") from None
        if p.shape != (1, len(self.models)) or not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
            raise BundleError(f"{where}: the router's probe answer has shape {p.shape} or values outside [0, 1]; "
                              f"expected one probability per model ({len(self.models)})")


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
                 router_kw: dict | None = None) -> RouterBundle:
    """Fit a router on the table's train split and calibrate lambda on its validation split."""
    train, val = table.part("train"), table.part("val")
    if len(train) == 0:
        raise VisrouteError("the routing table has no training rows")
    if features not in ("text", "text+image"):
        raise VisrouteError("features must be 'text' or 'text+image'")
    if features == "text+image" and not image_model:
        raise VisrouteError("a text+image router needs --image-model (a contrastive model spec)")
    from visroute.router.decide import check_targets

    check_targets(target_cost, target_share)
    if heavy is not None and heavy not in table.models:
        raise VisrouteError(f"--heavy '{heavy}' is not a model of the table ({', '.join(table.models)})")
    pipelines = dict(table.meta.get("pipelines") or {})
    entry = ROUTER_KINDS[kind]
    bundle = RouterBundle(entry.make(**(router_kw or {})), kind, list(table.models), train.model_costs(),
                          0.0, features, image_model, pipelines, _default_variants(table, pipelines), {"table": table.meta})
    Xtr = bundle.featurise(train.text, bundle.table_images(train))
    entry.fit(bundle.router, Xtr, train.success, train.weight)
    if target_cost is not None or target_share is not None:
        cal = val if len(val) else train
        proba = bundle.predict_proba(cal.text, bundle.table_images(cal))
        idx = table.models.index(heavy) if heavy else int(np.argmax(bundle.costs))
        bundle.lam = calibrate(proba, bundle.costs, target_cost=target_cost, target_share=target_share, model_index=idx)
        bundle.meta["calibration"] = {"target_cost": target_cost, "target_share": target_share, "heavy": table.models[idx],
                                      "rows": len(cal)}
    return bundle
