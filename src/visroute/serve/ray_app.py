"""``visroute serve --engine ray``: the same FastAPI app as a Ray Serve application (the ``ray`` extra with Ray
Serve: ``pip install 'visroute[ray]' 'ray[serve]'``).

Two deployments: ``Ingress`` wraps the service's own app through ``serve.ingress`` (HTTP, keys, limits, label-set
heads, routing and the proxy, exactly as ``visroute serve``), and one ``Forward`` deployment per served model runs
image forward passes with ``@serve.batch``, so the batches of every ingress replica are merged into one pass. The
model deployment scales by ``num_replicas`` (or autoscaling) and may take a fraction of a GPU (``num_gpus``)."""

from __future__ import annotations

import json
import os
from typing import Any

from visroute.errors import MissingExtraError

OPTIONS_ENV = "VISROUTE_SERVE_RAY_OPTIONS"


def require_serve():
    """Ray Serve, or one line naming the extra."""
    try:
        from ray import serve
    except ImportError as e:
        raise MissingExtraError("ray", "ray[serve]", "visroute serve --engine ray") from e
    return serve


def _deployments():
    serve = require_serve()

    @serve.deployment(name="Forward")
    class Forward:
        """One served model's image tower; calls from every ingress replica are batched together."""

        def __init__(self, spec: dict, max_batch_size: int, wait_s: float):
            from visroute.pipeline import PipelineSpec, build_pipeline

            self.model = build_pipeline(PipelineSpec.from_dict(spec)).model
            self.forward.set_max_batch_size(max_batch_size)
            self.forward.set_batch_wait_timeout_s(wait_s)

        @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
        async def forward(self, batches: list[list[Any]]) -> list[Any]:
            import torch

            items = [x for b in batches for x in b]
            with torch.inference_mode():
                emb = self.model.encode_images(self.model.collate(items)).numpy()
            out, i = [], 0
            for b in batches:
                out.append(emb[i : i + len(b)])
                i += len(b)
            return out

        async def __call__(self, items: list[Any]) -> Any:
            return await self.forward(items)

    @serve.deployment(name="Ingress")
    @serve.ingress()
    class Ingress:
        """The service's FastAPI app; its micro-batches go to the model deployments."""

        def __init__(self, options: dict, forward: dict):
            self.options, self.forward = options, forward

        def __serve_build_asgi_app__(self):
            from visroute.serve.app import create_app
            from visroute.serve.config import load_config, serve_api_keys

            o = self.options
            app = create_app(load_config(o["config"]), serve_api_keys(o["api_keys_file"]), bool(o["open"]))
            app.state.serve.remote_forward = self.forward
            app.state.serve.check()
            return app

    return Forward, Ingress


def build_application(config_path: str | None, api_keys_file: str | None, open_mode: bool, replicas: int = 1,
                      ingress_replicas: int = 1, num_gpus: float = 0.0, autoscale_max: int = 0):
    """The Ray Serve application for a serve config (``serve.run`` it, or name it in a RayService)."""
    from visroute.serve.config import load_config
    from visroute.serve.state import ServeState

    cfg = load_config(config_path)
    Forward, Ingress = _deployments()
    scale: dict = ({"autoscaling_config": {"min_replicas": 1, "max_replicas": autoscale_max}} if autoscale_max
                   else {"num_replicas": replicas})
    state = ServeState(cfg)
    b = cfg.batching  # Ray Serve admits 5 requests per replica by default: too few to form a batch
    forward = {m.name: Forward.options(name=f"Forward-{m.name}", ray_actor_options={"num_cpus": 1,
                                                                                    "num_gpus": num_gpus},
                                       max_ongoing_requests=4 * b.max_batch_size, **scale).bind(state.model_spec(m.name).to_dict(),
                                                     cfg.batching.max_batch_size, cfg.batching.max_wait_ms / 1000)
               for m in cfg.models}
    options = {"config": config_path, "api_keys_file": api_keys_file, "open": open_mode}
    return Ingress.options(num_replicas=ingress_replicas, ray_actor_options={"num_cpus": 0},
                           max_ongoing_requests=b.max_queue + 1).bind(options, forward)


def app_from_env(args: dict | None = None):
    """An import path for ``serve run`` / a KubeRay RayService: the options as JSON in $VISROUTE_SERVE_RAY_OPTIONS
    (``{"config": "serve.yaml", "replicas": 2, "num_gpus": 0.25}``)."""
    o = {**json.loads(os.environ.get(OPTIONS_ENV) or "{}"), **(args or {})}
    return build_application(o.get("config"), o.get("api_keys_file"), bool(o.get("open")), int(o.get("replicas", 1)),
                             int(o.get("ingress_replicas", 1)), float(o.get("num_gpus", 0.0)),
                             int(o.get("autoscale_max", 0)))


def run_ray(config, api_keys_file, open_mode: bool, host: str, port: int, replicas: int, num_gpus: float,
            address: str | None) -> None:
    """``visroute serve --engine ray``: start (or join) Ray, run the application on host:port until SIGTERM/Ctrl-C."""
    import signal
    import time

    serve = require_serve()
    import ray

    ray.init(address=address or os.environ.get("RAY_ADDRESS") or None, include_dashboard=False,
             log_to_driver=False)

    def stop(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_application(str(config.resolve()) if config else None,
                                    str(api_keys_file.resolve()) if api_keys_file else None, open_mode, replicas,
                                    num_gpus=num_gpus), name="visroute", route_prefix="/")
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
