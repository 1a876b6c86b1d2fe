"""What runs inside Ray workers. Plain Python (no Ray import), so it can be read and tested without a cluster.

Every model is built through ``visroute.pipeline.build`` from a ``PipelineSpec`` received as JSON: a worker has no
other way to get a model, so it runs exactly what the driver's spec says.
"""

from __future__ import annotations

import os

import numpy as np

from visroute.errors import VisrouteError

#: environment a worker needs to find what the driver finds: visroute's cache and limits, the user's endpoint
#: configuration, Hugging Face's offline switch and cache. API keys are not forwarded: a cluster has its own.
FORWARDED_ENV = ("HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM",
                 "XDG_CACHE_HOME", "XDG_CONFIG_HOME")


class WorkerMismatchError(VisrouteError):
    """A worker loaded other weights or preprocessing than the driver (a node sees different files)."""


def driver_env() -> dict[str, str]:
    """The variables of ``FORWARDED_ENV`` and every ``VISROUTE_*`` one, as set in the driver now."""
    return {k: v for k, v in os.environ.items() if k in FORWARDED_ENV or k.startswith("VISROUTE_")}


def apply_env(env: dict[str, str] | None) -> None:
    for k, v in (env or {}).items():
        os.environ[k] = v


class EncodeWorker:
    """A Ray Data actor: builds the contrastive model once, then encodes chunks of item indices.

    Each chunk goes through the same ``encode_batches`` as a local batch (one batch, decoded in this process), in
    the driver's ``decode`` mode, so a chunk gives the same embeddings as the same batch on the local engine.
    """

    def __init__(self, spec_json: str, source, decode: str, dim: int, expect: dict,
                 env: dict[str, str] | None = None, threads: int | None = None):
        apply_env(env)
        if threads:  # the driver's count: a CPU forward pass then gives the local engine's bits
            import torch

            torch.set_num_threads(threads)
        from visroute.data.batches import check_decode
        from visroute.pipeline.build import Runtime, load_contrastive
        from visroute.pipeline.spec import PipelineSpec

        self.model = load_contrastive(PipelineSpec.from_json(spec_json, "worker spec"), Runtime())
        got = {"weights": self.model.weights_fingerprint, "preprocess": self.model.preprocess_fingerprint}
        if got != expect:
            raise WorkerMismatchError(f"worker pid {os.getpid()} loaded {self.model.spec} with weights/preprocessing "
                                      f"{got['weights']} differing from the driver's {expect['weights']}; "
                                      "every node must see the same model files")
        self.source, self.decode, self.dim = source, check_decode(decode), dim

    def __call__(self, batch: dict) -> dict:
        from visroute.features.encode import encode_batches

        chunk_ids, index, emb, error = [], [], [], []
        for c, chunk in zip(batch["chunk"], batch["indices"]):
            chunk = [int(i) for i in chunk]
            rows: dict[int, tuple] = {}
            for idx, out, skipped in encode_batches(self.model, self.source, chunk, max(1, len(chunk)), 0, self.decode):
                for r, i in enumerate(idx):
                    rows[i] = (out[r].numpy(), "")
                for s in skipped:
                    rows[s.index] = (np.zeros(self.dim, np.float32), s.reason)
            for i in chunk:
                chunk_ids.append(int(c))
                index.append(i)
                emb.append(rows[i][0])
                error.append(rows[i][1])
        return {"chunk": np.asarray(chunk_ids, np.int64), "index": np.asarray(index, np.int64),
                "embedding": np.stack(emb).astype(np.float32), "error": np.asarray(error, dtype=object)}


def call(fn, item, concurrency: int, env: dict[str, str] | None):
    """Body of a Ray task: ``fn(item, concurrency)`` in a worker that sees the driver's configuration."""
    apply_env(env)
    return fn(item, concurrency)


def generate_chunk(item: tuple, concurrency: int) -> list:
    """Describe requests on a worker: the generator is built by the pipeline factory's ``load_generative``."""
    llm, spec_json, trusted, timeout, retries, requests = item
    from visroute.pipeline.build import Runtime, load_generative
    from visroute.pipeline.spec import PipelineSpec

    runtime = Runtime(tuple(trusted), timeout=timeout, retries=retries, concurrency=concurrency)
    return load_generative(llm, PipelineSpec.from_json(spec_json, "worker spec"), runtime).generate(list(requests))


def with_own_runtime(fn, item, concurrency: int):
    """Body of a grid cell on a worker: ``fn(item, runtime)``, the same function the local engine calls, with a
    runtime of the worker's own (the driver's holds loaded models and open caches, which do not travel)."""
    from visroute.pipeline.build import Runtime

    return fn(item, Runtime(concurrency=concurrency))
