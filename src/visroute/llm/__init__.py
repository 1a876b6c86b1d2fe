"""Text (and image+text) generation backends behind one spec string, with a response cache."""

from visroute.llm.client import ChatRequest, GenerationResult, load_generator
from visroute.llm.cache import ResponseCache

__all__ = ["ChatRequest", "GenerationResult", "ResponseCache", "load_generator"]
