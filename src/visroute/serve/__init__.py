"""``visroute serve``: classification and routing over HTTP, and an OpenAI-compatible routing proxy for requests
that carry images (the ``visroute[serve]`` extra: FastAPI, uvicorn, prometheus-client, python-multipart).

The service builds every model through ``visroute.pipeline.build_pipeline``: it adds transport, not a second way
to build a model.
"""

from visroute.serve.config import ServeConfig, ServeConfigError, default_config, load_config


def create_app(*args, **kwargs):
    """See ``visroute.serve.app.create_app`` (imported lazily: FastAPI is an optional dependency)."""
    from visroute.serve.app import create_app as _create

    return _create(*args, **kwargs)


__all__ = ["ServeConfig", "ServeConfigError", "create_app", "default_config", "load_config"]
