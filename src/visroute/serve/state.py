"""What a running service holds: models, label-set heads, routers and endpoints, all built through
``build_pipeline`` from pipeline specs, so the service adds transport and never a second way to build a model."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from visroute.errors import VisrouteError
from visroute.pipeline import PipelineSpec, Runtime, build_pipeline
from visroute.serve.batching import MicroBatcher
from visroute.serve.config import LabelSetEntry, ServeConfig
from visroute.serve.metrics import Metrics

AD_HOC_HEADS = 64  # fitted heads for request-given label lists kept in memory (least recently used dropped)


class NotFound(VisrouteError):
    """A request names a model, label set or router the service does not have (HTTP 404)."""


@dataclass
class ServedModel:
    name: str
    spec: PipelineSpec
    pipeline: Any                 # ContrastivePipeline
    batcher: MicroBatcher


@dataclass
class LabelSet:
    name: str
    model: str
    classnames: list[str]
    head: Any

    @property
    def explainable(self) -> bool:
        return hasattr(self.head, "explain") and hasattr(self.head, "texts_")


@dataclass
class Target:
    """Where a chat request for one model goes: an OpenAI-compatible base URL, its model name and key (the key
    only from the user's endpoints configuration, see ``visroute.llm.endpoints``)."""

    name: str
    base_url: str
    model: str
    key: str | None
    spec_url: str = ""           # as the config wrote it (a URL or @name): what routed pipeline specs use


@dataclass
class ServeState:
    config: ServeConfig
    metrics: Metrics = field(default_factory=Metrics)
    runtime: Runtime = field(default_factory=Runtime)
    models: dict[str, ServedModel] = field(default_factory=dict)
    label_sets: dict[str, LabelSet] = field(default_factory=dict)
    routers: dict[str, Any] = field(default_factory=dict)        # name -> visroute.api.Router
    targets: dict[str, Target] = field(default_factory=dict)     # endpoint name -> Target
    ready: bool = False
    load_error: str | None = None
    decode_pool: Any = None                                      # threads that decode and preprocess images
    http: Any = None                                             # httpx2.AsyncClient for the backends
    admission: Any = None                                        # bounds /v1/route and the proxy
    remote_forward: dict | None = None                           # --engine ray: model name -> Forward deployment
    _ad_hoc: OrderedDict = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- loading (blocking; runs in a thread after the server is up) ---------------------------------------
    def check(self) -> None:
        """Everything that can be checked without loading a model: endpoints and their keys, model specs,
        label files. Run before the server binds, so a broken config is one error line."""
        from visroute.llm.endpoints import resolve_endpoint
        from visroute.pipeline import check_buildable

        urls = tuple(e.base_url for e in self.config.endpoints if not e.base_url.startswith("@"))
        self.runtime.trusted_endpoints = urls  # the operator's own config: contacted, but keyed only by their file
        for e in self.config.endpoints:
            base, key = resolve_endpoint(e.base_url, urls)
            self.targets[e.name] = Target(e.name, base, e.model, None if key == "EMPTY" else key, e.base_url)
        for m in self.config.models:
            check_buildable(self.model_spec(m.name))
        for s in self.config.label_sets:
            self._classnames(s)

    def load(self) -> None:
        try:
            for m in self.config.models:
                spec = self.model_spec(m.name)
                pipe = build_pipeline(spec, self.runtime)
                b = self.config.batching
                encode = self._encoder(pipe.model) if self.remote_forward is None else \
                    self._remote_encoder(self.remote_forward[m.name])
                batcher = MicroBatcher(m.name, encode, b.max_batch_size, b.max_wait_ms, b.max_queue,
                                       on_batch=self._on_batch(m.name),
                                       on_drop=self.metrics.batch_dropped.labels(model=m.name).inc)
                self.models[m.name] = ServedModel(m.name, spec, pipe, batcher)
            for s in self.config.label_sets:
                self.label_sets[s.name] = self._label_set(s)
            for r in self.config.routers:
                self.routers[r.name] = self._router(r)
            from visroute.serve.decode import make_pool

            b = self.config.batching
            from visroute.data.batches import ImageInputs

            self.decode_pool = make_pool({n: ImageInputs(m.pipeline.model.preprocess, m.spec.decode)
                                          for n, m in self.models.items()}, b.decode_workers, b.decode_processes)
            self.ready = True
        except VisrouteError as e:
            self.load_error = str(e)
            raise

    def _on_batch(self, model: str):
        size, forward = self.metrics.batch_size.labels(model=model), self.metrics.forward_seconds.labels(model=model)

        def observe(n: int, seconds: float) -> None:
            size.observe(n)
            forward.observe(seconds)

        return observe

    def model_spec(self, name: str) -> PipelineSpec:
        m = self.config.model(name)
        templates = tuple(m.templates) if isinstance(m.templates, list) else m.templates
        return PipelineSpec(head="zeroshot", name=m.name, model=m.model, templates=templates, device=m.device,
                            dtype=m.dtype, decode=m.decode)

    @staticmethod
    def _encoder(model):
        """The micro-batcher's encode step: the one encoder for prepared inputs (``encode_inputs``)."""
        from functools import partial

        from visroute.features.encode import encode_inputs

        return partial(encode_inputs, model)

    @staticmethod
    def _remote_encoder(handle):
        """A micro-batch's forward pass on a Ray Serve model deployment (awaited on the event loop)."""
        import torch

        async def encode(items: list) -> Any:
            try:
                return torch.from_numpy(await handle.remote(items))
            except Exception as e:  # a replica that died or was stopped: the client may retry
                from visroute.serve.service import ServiceError

                raise ServiceError(503, f"the model replica failed ({type(e).__name__}); retry shortly",
                                   {"Retry-After": "1"}) from None

        return encode

    def _classnames(self, s: LabelSetEntry) -> list[str]:
        from visroute.data.text import parse_labels, validate_classnames

        if isinstance(s.labels, list):
            names = validate_classnames([str(x).strip() for x in s.labels], allow_duplicates=True)
            return list(dict.fromkeys(names))
        if not isinstance(s.labels, str):
            raise VisrouteError(f"label set '{s.name}': 'labels' must be a list or a file (FILE, FILE.json:KEY)")
        return parse_labels(None, s.labels)[0]

    def _label_set(self, s: LabelSetEntry) -> LabelSet:
        model = s.model or self.config.models[0].name
        base = self.model_spec(model)
        templates = tuple(s.templates) if isinstance(s.templates, list) else (s.templates or base.templates)
        spec = base.replace(head=s.head, name=f"{model}/{s.name}", templates=templates, descriptions=s.descriptions,
                            params=dict(s.params or {}))
        classnames = self._classnames(s)
        return LabelSet(s.name, model, classnames, build_pipeline(spec, self.runtime).classifier(classnames))

    def _router(self, r) -> Any:
        from visroute.api import Router
        from visroute.router.decide.bundle import RouterBundle

        bundle = RouterBundle.load(r.path)
        if r.lam is not None:
            bundle.lam = r.lam
        self._point_at_endpoints(bundle)
        return Router(bundle, self.runtime)

    def _point_at_endpoints(self, bundle) -> None:
        """A routed model with a configured endpoint of the same name answers there (its measured pipeline, with
        the URL swapped); URLs only the bundle names are contacted only if the user's configuration allows them."""
        for m, variants in bundle.pipelines.items():
            t = self.targets.get(m)
            for v, d in variants.items():
                if t is not None and d.get("head") == "vlm":
                    variants[v] = {**d, "vlm": f"openai-compatible:{t.spec_url}#{t.model}"}

    # -- lookups ---------------------------------------------------------------------------------------------
    def served(self, name: str | None) -> ServedModel:
        name = name or self.config.models[0].name
        if name not in self.models:
            raise NotFound(f"no contrastive model '{name}' is served (models: {', '.join(self.models)})")
        return self.models[name]

    def label_set(self, name: str) -> LabelSet:
        if name not in self.label_sets:
            raise NotFound(f"no label set '{name}' (label sets: {', '.join(self.label_sets) or 'none'})")
        return self.label_sets[name]

    def router(self, name: str | None):
        if not self.routers:
            raise NotFound("this service has no router configured (add 'routers' to the config)")
        name = name or next(iter(self.routers))
        if name not in self.routers:
            raise NotFound(f"no router '{name}' (routers: {', '.join(self.routers)})")
        return self.routers[name]

    def ad_hoc_head(self, model: str, labels: list[str], templates: list[str] | None):
        """A fitted zero-shot head for request-given labels (blocking: text encoding), cached by content."""
        from visroute.data.text import load_templates, validate_classnames, validate_templates

        names = list(dict.fromkeys(validate_classnames([x.strip() for x in labels], allow_duplicates=True)))
        tmpl = tuple(validate_templates(list(templates)) if templates else load_templates(None))
        key = (model, tuple(names), tmpl)
        with self._lock:
            if key in self._ad_hoc:
                self._ad_hoc.move_to_end(key)
                return self._ad_hoc[key]
        served = self.served(model)
        head = build_pipeline(served.spec.replace(templates=tmpl), self.runtime).classifier(names)
        with self._lock:
            self._ad_hoc[key] = head
            while len(self._ad_hoc) > AD_HOC_HEADS:
                self._ad_hoc.popitem(last=False)
        return head

    def target(self, name: str) -> Target:
        """Where chat requests for ``name`` go: a configured endpoint, else the routed pipeline's own endpoint if the
        user's configuration allows it (``EndpointNotAllowed`` otherwise)."""
        if name in self.targets:
            return self.targets[name]
        from visroute.llm.endpoints import resolve_endpoint
        from visroute.models.spec import parse_model_spec

        for r in self.routers.values():
            if name in r.bundle.models and r.bundle.pipelines.get(name):
                spec = r.bundle.pipeline_spec(name)
                parsed = parse_model_spec(spec.vlm) if spec.head == "vlm" else None
                if parsed is not None and parsed.backend == "openai-compatible":
                    base, key = resolve_endpoint(parsed.location, self.runtime.trusted_endpoints)
                    return Target(name, base, parsed.model, None if key == "EMPTY" else key, parsed.location)
        raise NotFound(f"'{name}' has no OpenAI-compatible endpoint: add it under 'endpoints' in the config")

    def endpoint_names(self) -> list[str]:
        return list(self.targets)

