"""Where the heavy stages run: ``local`` (this process, as always) or ``ray`` (a Ray cluster, or a local Ray).

Both engines have the same interface, so eval, classify, describe and the grid never ask which one they got:

- ``feature_cache(root)``: the feature cache whose ``encode`` encodes missing shards on this engine;
- ``map_images(model, source, batch_size, decode=, num_workers=, indices=)``: (item indices, embeddings,
  skipped) per batch, in input order: the one entry point every caller's images take to features
  (``visroute.features.encode.encode_batches`` runs under it, locally or on a Ray actor);
- ``map_calls(fn, items, endpoints)``: ``fn(item)`` for every item, in completion order, with at most
  ``endpoint_concurrency`` requests in flight to any one endpoint (VLM/LLM grid cells, describe);
- ``run_cells(jobs, run_contrastive, run_task, runtime)``: a grid's cells, handed back as each one finishes;
  ``run_task(job, runtime)`` is a module-level function (Ray ships it by reference to a worker, which gives it a
  runtime of its own), so the engine runs grid cells without knowing the grid.

Workers build every model through ``visroute.pipeline.build`` from a ``PipelineSpec`` sent as JSON, so a Ray
actor runs exactly the model the driver would have run. The engine sits above ``pipeline`` and ``features`` and
below what runs work on it (the grid, describe, the commands): those hand it down, nothing below reaches up for it.
"""

from __future__ import annotations

from visroute.engine.options import ENGINES, EngineOptions


def make_engine(options: EngineOptions | str | None = None, **kw):
    """The engine ``options`` name (``LocalEngine`` or ``RayEngine``; default local); Ray is imported only for
    ``ray``. The one constructor: the CLI's ``--engine`` options, grid files and reproduce all come here."""
    if options is None or isinstance(options, str):
        options = EngineOptions(engine=options or "local", **kw)
    options.checked()
    if options.engine == "ray":
        from visroute.engine.ray import RayEngine

        return RayEngine(options)
    from visroute.engine.local import LocalEngine

    return LocalEngine(options)


def default_engine():
    """The engine a caller that names none gets: the local one (an object like any other, never a ``None`` branch)."""
    return make_engine("local")


__all__ = ["ENGINES", "EngineOptions", "default_engine", "make_engine"]
