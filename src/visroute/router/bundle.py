"""A trained router, saved with everything needed to use it: features, model costs, lambda, and how to call
each model (the grid's model entries)."""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from visroute.errors import VisrouteError
from visroute.router.decide import calibrate, choose
from visroute.router.embed import TextEmbedder
from visroute.router.routers import make_router
from visroute.router.table import RoutingTable


@dataclass
class RouterBundle:
    router: Any
    kind: str
    models: list[str]
    costs: np.ndarray
    lam: float = 0.0
    features: str = "text"                 # "text" or "text+image"
    image_model: str | None = None
    model_configs: dict[str, dict] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    # -- features ---------------------------------------------------------------------------------
    def featurise(self, texts, image_paths=None, embedder: TextEmbedder | None = None) -> Any:
        if getattr(self.router, "takes_text", False):
            return list(texts)
        if embedder is None:  # one embedder per bundle: its memo keeps MiniLM and the cache loaded between calls
            embedder = self.__dict__.setdefault("_embedder", TextEmbedder())
        X = embedder.embed(list(texts))
        if self.features == "text+image":
            if image_paths is None:
                raise VisrouteError("this router also looks at the image: give image paths")
            X = np.hstack([X, image_embeddings(self.image_model, list(image_paths))])
        return X

    def predict_proba(self, texts, image_paths=None) -> np.ndarray:
        return self.router.predict_proba(self.featurise(texts, image_paths))

    def decide(self, texts, image_paths=None, lam: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        proba = self.predict_proba(texts, image_paths)
        return choose(proba, self.costs, self.lam if lam is None else lam), proba

    # -- persistence --------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        with open(d / ".tmp-router.pkl", "wb") as f:
            pickle.dump(self.router, f, protocol=5)
        (d / ".tmp-router.pkl").replace(d / "router.pkl")
        info = {"kind": self.kind, "models": self.models, "costs": [float(c) for c in self.costs], "lambda": self.lam,
                "features": self.features, "image_model": self.image_model, "model_configs": self.model_configs,
                "meta": self.meta}
        (d / "router.json").write_text(json.dumps(info, indent=1))
        return d

    @classmethod
    def load(cls, directory: str | Path) -> "RouterBundle":
        d = Path(directory)
        if not (d / "router.json").is_file():
            raise VisrouteError(f"{d} holds no trained router (run `visroute route train` first)")
        info = json.loads((d / "router.json").read_text())
        with open(d / "router.pkl", "rb") as f:
            router = pickle.load(f)
        return cls(router, info["kind"], info["models"], np.asarray(info["costs"]), info["lambda"], info["features"],
                   info.get("image_model"), info.get("model_configs", {}), info.get("meta", {}))


def image_embeddings(model_spec: str | None, paths: list[str]) -> np.ndarray:
    """CLIP embeddings of images (unique paths encoded once); unreadable images get a zero vector."""
    from visroute.features import encode_image_files
    from visroute.models import load_model

    if not model_spec:
        raise VisrouteError("a text+image router needs --image-model (a contrastive model spec)")
    model = load_model(model_spec, device="cpu")
    unique = list(dict.fromkeys(paths))
    enc = encode_image_files(model, unique, num_workers=0)
    dim = enc.embeddings.shape[1] if len(enc.paths) else 0
    lookup = {p: e.numpy() for p, e in zip(enc.paths, enc.embeddings)}
    zero = np.zeros(dim, np.float32)
    return np.stack([lookup.get(p, zero) for p in paths]).astype(np.float32)


def train_bundle(table: RoutingTable, kind: str = "knn", features: str = "text", image_model: str | None = None,
                 target_cost: float | None = None, target_share: float | None = None, heavy: str | None = None,
                 model_configs: dict | None = None, router_kw: dict | None = None) -> RouterBundle:
    """Fit a router on the table's train split and calibrate lambda on its validation split."""
    train, val = table.part("train"), table.part("val")
    if len(train) == 0:
        raise VisrouteError("the routing table has no training rows")
    bundle = RouterBundle(make_router(kind, **(router_kw or {})), kind, list(table.models), table.part("train").model_costs(),
                          0.0, features, image_model, model_configs or {}, {"table": table.meta})
    Xtr = bundle.featurise(train.text, train.image_path if features == "text+image" else None)
    bundle.router.fit(Xtr, train.success, sample_weight=train.weight) if kind != "slm" else bundle.router.fit(Xtr, train.success)
    if target_cost is not None or target_share is not None:
        cal = val if len(val) else train
        proba = bundle.predict_proba(cal.text, cal.image_path if features == "text+image" else None)
        idx = table.models.index(heavy) if heavy else int(np.argmax(bundle.costs))
        bundle.lam = calibrate(proba, bundle.costs, target_cost=target_cost, target_share=target_share, model_index=idx)
        bundle.meta["calibration"] = {"target_cost": target_cost, "target_share": target_share, "heavy": table.models[idx],
                                      "rows": len(cal)}
    return bundle
