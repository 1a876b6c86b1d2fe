"""The chat proxy running a cascade whose cheaper models report their own confidence.

A cascade bundle calls models cheapest first and keeps the first answer whose confidence reaches the threshold
calibrated on validation records. For a chat answer that confidence is the answer's geometric-mean token
probability, which an OpenAI-compatible upstream reports when asked (``logprobs: true``): the figure the records'
``score`` carries for a pipeline whose spec says ``"params": {"logprobs": true}``, so the proxy compares what the
threshold was calibrated on. A stage whose spec does not ask has no signal of its own: the router's predicted
success decides it before any call, so no call is made whose answer the plan would not keep (as
``answer_without_signal``). An early stage that fails is passed over to the next model, and counted.

A cascade trained to stop when answers agree (``"confidence": "agreement"``, on records that carry each model's
answer, such as RouterBench's) calls every earlier stage: from the second on, a stage's confidence is the share of
the earlier answers equal to its own, compared on ``answer_key`` (the first line of the reply, stripped and upper
case: the key the records were compared on). The first stage, and a stage whose reply has no text, falls back to
its own or its predicted confidence, as ``plan.run_plan`` does for local models.

A cascade trained to stop when one model's prompt variants agree (``"confidence": "variants"``) rewrites the
question once per measured prompt; a chat request's prompt is the client's own, so the proxy does not rewrite it:
such a plan's stages are decided as above, on their own confidence where their spec asks for it, else on the
router's predicted success. ``visroute route``, ``Router.route`` and ``/v1/route`` call every variant.

The last stage is answered like any routed request (streamed when asked); an earlier stage's answer is returned as
it came, or as server-sent events for a streaming client. Every call is paid for and listed in the
``x-visroute-calls`` header.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable

#: ``call(model, payload)`` -> the upstream's chat completion (a dict), or None when the call failed
StageCall = Callable[[str, dict], Awaitable[dict | None]]


def reports_confidence(router, model: str) -> bool:
    """Whether the routed pipeline for ``model`` asks its endpoint for token log-probabilities."""
    from visroute.errors import VisrouteError

    try:
        return bool(router.bundle.pipeline_spec(model).params.get("logprobs"))
    except VisrouteError:  # no spec recorded for it: no signal of its own
        return False


def cascade_stages(router, decision) -> list[tuple[str, bool]] | None:
    """The models of a cascade plan in calling order, each with whether its answer reports its own confidence (the
    last one's is never needed), when an earlier stage does or the plan stops on agreement; else None: the kept
    model is then known before any call. Each pipeline spec is read once here."""
    p = decision.plan
    if p.get("kind") != "cascade" or len(p.get("calls", ())) < 2:
        return None
    stages = [(m, reports_confidence(router, m)) for m in p["calls"][:-1]]
    if p.get("confidence") == "agreement" or any(asks for _, asks in stages):
        return stages + [(p["calls"][-1], False)]
    return None


def answer_confidence(doc: dict) -> float | None:
    """exp(mean token log-probability) of a chat completion's first choice, range-checked; None when not reported."""
    from visroute.llm.http import answer_logprob

    choices = doc.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    lp = answer_logprob(choices[0])
    return None if lp is None else math.exp(lp)


def answer_text(doc: dict) -> str | None:
    """The text of a chat completion's first choice (string content, or its text parts joined); None without one."""
    from visroute.llm.http import content_text

    choices = doc.get("choices")
    msg = choices[0].get("message") if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None
    content = content_text(msg.get("content")) if isinstance(msg, dict) else None
    return content if isinstance(content, str) else None


async def run_cascade(decision, stages: list[tuple[str, bool]], payload: dict,
                      call: StageCall) -> tuple[str, dict | None, list[dict]]:
    """Call the earlier stages in turn. Returns (the model whose answer is kept, its completion when an earlier
    stage already answered, else None: the last stage remains to be called; the calls made, with confidences)."""
    from visroute.router.data.routerbench import answer_key
    from visroute.router.decide.strategies import agreement_share

    threshold = float(decision.plan["threshold"])
    agreement = decision.plan.get("confidence") == "agreement"
    calls: list[dict] = []
    keys: list[str] = []  # the answers so far (agreement plans)
    for model, reports in stages[:-1]:
        predicted = float(decision.predicted_accuracy.get(model, 0.0))
        if not reports and not (agreement and keys):
            if predicted >= threshold:
                return model, None, calls  # known before calling it: answered like any routed request
            if not agreement:
                continue
        early = {k: v for k, v in payload.items() if k not in ("stream", "stream_options")}
        doc = await call(model, {**early, "logprobs": True} if reports else early)
        if doc is None:
            calls.append({"model": model, "confidence": None, "failed": True})
            continue
        own = answer_confidence(doc) if reports else None
        conf = own if own is not None else predicted
        entry = {"model": model, "confidence": conf, "own": own is not None}
        if agreement and (key := answer_key(answer_text(doc))) is not None:
            if (share := agreement_share(key, keys)) is not None:
                conf = share
                entry.update(confidence=conf, agreement=True)
            keys.append(key)
        calls.append(entry)
        if conf >= threshold:
            if not payload.get("logprobs"):  # the client did not ask for them
                for c in doc.get("choices") or []:
                    if isinstance(c, dict):
                        c.pop("logprobs", None)
            return model, doc, calls
    return stages[-1][0], None, calls


def calls_header(calls: list[dict]) -> str:
    return json.dumps([{k: (round(v, 6) if isinstance(v, float) else v) for k, v in c.items()} for c in calls],
                      separators=(",", ":"))


def completion_events(doc: dict, include_usage: bool):
    """A finished chat completion as the server-sent events a streaming client expects: one chunk with the whole
    message, the usage chunk when asked (``stream_options.include_usage``), then ``[DONE]``."""
    base = {"id": doc.get("id", "chatcmpl-visroute"), "object": "chat.completion.chunk",
            "created": doc.get("created", 0), "model": doc.get("model", "")}
    choices = []
    for i, c in enumerate(c for c in doc.get("choices") or [] if isinstance(c, dict)):
        msg = c.get("message") if isinstance(c.get("message"), dict) else {}
        choices.append({"index": c.get("index", i), "finish_reason": c.get("finish_reason", "stop"),
                        "delta": {"role": msg.get("role", "assistant"), "content": msg.get("content") or ""}})
    yield "data: " + json.dumps({**base, "choices": choices}, separators=(",", ":")) + "\n\n"
    if include_usage and isinstance(doc.get("usage"), dict):
        yield "data: " + json.dumps({**base, "choices": [], "usage": doc["usage"]}, separators=(",", ":")) + "\n\n"
    yield "data: [DONE]\n\n"
