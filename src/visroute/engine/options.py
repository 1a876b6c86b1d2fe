"""Execution settings: which engine, and how it spreads work (never what the work computes)."""

from __future__ import annotations

from dataclasses import dataclass

from visroute.errors import VisrouteError

ENGINES = ("local", "ray")


@dataclass
class EngineOptions:
    """Execution settings that change where work runs, never what it computes."""

    engine: str = "local"
    address: str | None = None          # Ray cluster to join (else $RAY_ADDRESS, else a local Ray)
    actors: int | None = None            # actors in the encoding pool (default: one per GPU, else one per 2 CPUs)
    num_gpus: float = 0.0               # GPUs per encoding actor (0.25: four actors share a GPU)
    num_cpus: float = 1.0               # CPUs per encoding actor
    threads: int | None = None           # torch threads per actor (default: see RayEngine.default_threads)
    batch_size: int | None = None        # images per actor call (default: the command's --batch-size)
    endpoint_concurrency: int = 8       # requests in flight to one VLM/LLM endpoint, over the whole cluster
    concurrency: int = 4                # requests in flight from one worker (the HTTP client's pool)
    cell_num_cpus: float = 1.0          # CPUs reserved by a VLM/LLM grid cell run as a Ray task
    cell_num_gpus: float = 0.0          # GPUs reserved by such a cell (local hf: VLMs)

    @classmethod
    def from_dict(cls, raw, where: str = "engine") -> "EngineOptions":
        """From the grid YAML: ``engine: ray`` or ``engine: {name: ray, address: ..., actors: 4, num_gpus: 0.5}``."""
        import dataclasses

        from visroute.registry import nearest_key

        if isinstance(raw, str):
            raw = {"name": raw}
        if not isinstance(raw, dict):
            raise VisrouteError(f"{where}: expected 'local', 'ray' or a mapping with 'name: ray' and options")
        valid = ["name"] + [f.name for f in dataclasses.fields(cls) if f.name != "engine"]
        for k in raw:
            if k not in valid:
                raise VisrouteError(f"{where}: unknown key '{k}'{nearest_key(str(k), valid)} (valid: {', '.join(valid)})")
        kw = {k: v for k, v in raw.items() if k != "name"}
        return cls(engine=str(raw.get("name", "local")), **kw).checked()

    def checked(self) -> "EngineOptions":
        if self.engine not in ENGINES:
            raise VisrouteError(f"unknown engine '{self.engine}' (one of: {', '.join(ENGINES)})")
        for name in ("actors", "threads", "batch_size", "endpoint_concurrency", "concurrency"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise VisrouteError(f"engine option '{name}' must be a positive integer, got {v!r}")
        for name in ("num_gpus", "num_cpus", "cell_num_cpus", "cell_num_gpus"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                raise VisrouteError(f"engine option '{name}' must be a number >= 0, got {v!r}")
        return self
