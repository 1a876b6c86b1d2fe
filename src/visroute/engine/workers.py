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

    Each chunk is decoded and preprocessed item by item exactly as a local DataLoader batch is
    (``PreprocessedItems``), collated without the items that failed, and encoded in one forward pass, so a
    chunk gives the same embeddings as the same batch on the local engine.
    """

    def __init__(self, spec_json: str, source, draft_size: int | None, dim: int, expect: dict,
                 env: dict[str, str] | None = None, threads: int | None = None):
        apply_env(env)
        if threads:  # the driver's count: a CPU forward pass then gives the local engine's bits
            import torch

            torch.set_num_threads(threads)
        from visroute.pipeline.build import Runtime, load_contrastive
        from visroute.pipeline.spec import PipelineSpec

        self.model = load_contrastive(PipelineSpec.from_json(spec_json, "worker spec"), Runtime())
        got = {"weights": self.model.weights_fingerprint, "preprocess": self.model.preprocess_fingerprint}
        if got != expect:
            raise WorkerMismatchError(f"worker pid {os.getpid()} loaded {self.model.spec} with weights/preprocessing "
                                      f"{got['weights']} differing from the driver's {expect['weights']}; "
                                      "every node must see the same model files")
        self.source, self.draft_size, self.dim = source, draft_size, dim

    def __call__(self, batch: dict) -> dict:
        from visroute.data.images import PreprocessedItems

        chunk_ids, index, emb, error = [], [], [], []
        for c, chunk in zip(batch["chunk"], batch["indices"]):
            items = PreprocessedItems(self.source, self.model.preprocess, self.draft_size, [int(i) for i in chunk])
            rows = [items[k] for k in range(len(items))]
            ok = [x for _, x, err in rows if err is None]
            out = self.model.encode_images(self.model.collate(ok)).numpy() if ok else np.zeros((0, self.dim), np.float32)
            it = iter(out)
            for i, _, err in rows:
                chunk_ids.append(int(c))
                index.append(i)
                emb.append(next(it) if err is None else np.zeros(self.dim, np.float32))
                error.append("" if err is None else err)
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


def grid_task_cell(job, concurrency: int) -> dict:
    """A VLM / LLM grid cell on a worker: the same ``run_task_cell`` as the local engine, its own runtime."""
    from visroute.pipeline.build import Runtime
    from visroute.router.data.grid import run_task_cell

    return run_task_cell(job, Runtime(concurrency=concurrency))
