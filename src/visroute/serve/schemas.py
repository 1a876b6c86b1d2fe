"""Request and response models of the HTTP API (they are what ``/openapi.json`` and ``/docs`` show)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(protected_namespaces=(), extra="forbid")


class ErrorBody(_Model):
    message: str
    type: str
    code: str | None = None
    request_id: str | None = None


class ErrorResponse(_Model):
    """Every error, in the shape the ``openai`` client reads."""

    error: ErrorBody


class ClassifyRequest(_Model):
    image: str = Field(..., min_length=1, description="The image: base64 of the file bytes, or a data: URL.")
    labels: list[str] | None = Field(None, description="Class names (else `label_set`, else the first configured set).")
    label_set: str | None = Field(None, description="A configured label set's name.")
    model: str | None = Field(None, description="A configured contrastive model's name (default: the first).")
    templates: list[str] | None = Field(None, description="Prompt templates with {c}, for `labels` only.")
    top_k: int = Field(5, ge=1, description="How many classes to return.")
    explain: bool = Field(False, description="Add the description-level explanation (description label sets).")


class Timings(_Model):
    parse_ms: float = Field(..., description="Reading and parsing the request body (JSON or multipart).")
    decode_ms: float = Field(..., description="Decoding and preprocessing the image (off the event loop).")
    queue_ms: float = Field(..., description="Waiting for a forward pass (micro-batching).")
    forward_ms: float = Field(..., description="The forward pass the image was part of.")
    head_ms: float = Field(..., description="Scoring the class names.")
    total_ms: float = Field(..., description="From the first byte of the body to the response, inside the handler.")


class ExplainedDescription(_Model):
    text: str
    similarity: float
    contribution: float


class ExplainedClass(_Model):
    label: str
    probability: float
    score: float
    descriptions: list[ExplainedDescription]


class ClassifyResponse(_Model):
    model: str = Field(..., description="The served model's name.")
    model_spec: str = Field(..., description="Its canonical model spec.")
    decode: str = Field("exact", description="How the image became the model's input: exact (the model's own "
                                             "preprocessing), fast or gpu.")
    random_weights: bool = Field(..., description="True for random-weight smoke-test models (chance-level predictions); the same name as in result files and `visroute classify --json`.")
    label_set: str | None
    labels: list[str] = Field(..., description="Top-k class names, best first.")
    scores: list[float] = Field(..., description="Their probabilities.")
    batch_size: int = Field(..., description="Images in the forward pass this one was part of.")
    timings: Timings
    explanation: list[ExplainedClass] | None = None


class RouteRequest(_Model):
    task: str = Field(..., min_length=1, description="The question or instruction.")
    options: list[str] = Field(..., min_length=2, description="The answer options.")
    image: str | None = Field(None, description="The image (base64 or data: URL); omit for a text-only task.")
    router: str | None = Field(None, description="A configured router's name (default: the first).")
    lam: float | None = Field(None, alias="lambda", ge=0, description="Cost weight (default: the router's).")
    run: bool = Field(True, description="Also call the chosen model and return its answer.")
    model_config = ConfigDict(protected_namespaces=(), extra="forbid", populate_by_name=True)


class RouteResponse(_Model):
    router: str
    chosen: str = Field(..., description="The model the router picked.")
    predicted_accuracy: dict[str, float]
    expected_cost: dict[str, float | None]
    lam: float = Field(..., alias="lambda")
    task_text: str
    answer: str | None = None
    raw_answer: str | None = None
    parse_rule: str | None = None
    cost: float | None = Field(None, description="What the call cost (None: not run, or the price is unknown).")
    latency_s: float | None = None
    pipeline: dict[str, Any] | None = None
    strategy: str = Field("router", description="router, cascade, ensemble or hierarchy: how the bundle calls models.")
    calls: list[dict[str, Any]] | None = Field(None, description="Every model called, in order, with its cost and "
                                               "confidence; cost is their sum.")
    total_ms: float
    model_config = ConfigDict(protected_namespaces=(), extra="forbid", populate_by_name=True)


class ModelCard(_Model):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "visroute"
    kind: Literal["contrastive", "router", "endpoint"]
    spec: str | None = None
    decode: str | None = None               # contrastive models: how images become inputs (exact | fast | gpu)
    label_sets: list[str] | None = None
    explainable_label_sets: list[str] | None = None
    routes_to: list[str] | None = None


class ModelList(_Model):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(_Model):
    status: str
    detail: str | None = None


class ChatMessage(BaseModel):
    role: str
    content: str | list[dict[str, Any]] | None = None
    model_config = ConfigDict(extra="allow")


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat request; fields other than these are passed through to the backend unchanged."""

    model: str = Field(..., description="`router-<name>[-<lambda>]`, or a configured endpoint's name.")
    messages: list[ChatMessage] = Field(..., min_length=1)
    stream: bool = False
    model_config = ConfigDict(extra="allow")


class ChatCompletionResponse(BaseModel):
    id: str
    object: str
    created: int
    model: str = Field(..., description="The model that answered (the routed model's name).")
    choices: list[dict[str, Any]]
    usage: dict[str, Any] | None = None
    model_config = ConfigDict(extra="allow")


ERRORS = {code: {"model": ErrorResponse, "description": text} for code, text in {
    400: "Bad input (not an image, bad base64, unknown label set, ...)", 401: "Missing or wrong API key",
    404: "Unknown model or router", 413: "Body or image too large", 415: "Wrong content type",
    422: "The body does not match the schema", 502: "A backend endpoint failed", 503: "At capacity or not ready",
    504: "The request's deadline passed"}.items()}
