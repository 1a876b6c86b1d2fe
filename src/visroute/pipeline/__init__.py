"""One road from a spec to answers: ``PipelineSpec`` (what to run) and ``build_pipeline`` (the one factory)."""

from visroute.pipeline.build import ContrastivePipeline, Runtime, build_pipeline, check_buildable, price_table
from visroute.pipeline.heads import HEADS, HeadEntry, Param, classify_heads, register_head, task_heads
from visroute.pipeline.spec import PipelineSpec, SpecError

__all__ = ["ContrastivePipeline", "HEADS", "HeadEntry", "Param", "PipelineSpec", "Runtime", "SpecError", "build_pipeline",
           "check_buildable", "classify_heads", "price_table", "register_head", "task_heads"]
