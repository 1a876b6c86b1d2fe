"""One road from a spec to answers: ``PipelineSpec`` (what to run) and ``build_pipeline`` (the one factory)."""

from visroute.pipeline.build import ContrastivePipeline, Runtime, build_pipeline, check_buildable, price_table
from visroute.pipeline.spec import CONTRASTIVE_HEADS, HEADS, TASK_HEADS, PipelineSpec, SpecError

__all__ = ["CONTRASTIVE_HEADS", "ContrastivePipeline", "HEADS", "PipelineSpec", "Runtime", "SpecError", "TASK_HEADS",
           "build_pipeline", "check_buildable", "price_table"]
