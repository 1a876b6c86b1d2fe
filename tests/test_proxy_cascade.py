"""The chat proxy executes a cascade (issue 23): the cheaper model's answer is kept when its own confidence (token
log-probabilities its endpoint reports) reaches the calibrated threshold, else the next model is called; every
call is paid for and listed. Unit tests of the stage logic here; the served path in test_proxy_cascade_served.py.
"""

from __future__ import annotations

import asyncio
import json
import math
from types import SimpleNamespace

import pytest

from visroute.serve.proxy_cascade import (
    answer_confidence,
    answer_text,
    calls_header,
    cascade_stages,
    completion_events,
    run_cascade,
)


def _router(asks: dict[str, bool]):
    specs = {m: SimpleNamespace(params={"logprobs": True} if a else {}) for m, a in asks.items()}
    return SimpleNamespace(bundle=SimpleNamespace(pipeline_spec=lambda m: specs[m]))


def _decision(calls, threshold=0.6, predicted=None, kind="cascade", confidence="router"):
    return SimpleNamespace(plan={"kind": kind, "calls": calls, "threshold": threshold, "confidence": confidence},
                           predicted_accuracy=predicted or {m: 0.5 for m in calls})


def _completion(text: str, logprobs: list[float] | None):
    choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
    if logprobs is not None:
        choice["logprobs"] = {"content": [{"token": "t", "logprob": v} for v in logprobs]}
    return {"id": "c1", "object": "chat.completion", "created": 1, "model": "m", "choices": [choice],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


def _run(router, decision, answers: dict, payload=None):
    seen = []

    async def call(model, body):
        seen.append((model, body))
        return answers[model]

    payload = payload or {"model": "router-demo", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                          "stream_options": {"include_usage": True}}
    stages = cascade_stages(router, decision)
    assert stages is not None and [m for m, _ in stages] == decision.plan["calls"]
    kept, doc, calls = asyncio.run(run_cascade(decision, stages, payload, call))
    return kept, doc, calls, seen


def test_a_confident_cheap_answer_is_kept_and_the_dear_model_never_called():
    router = _router({"small": True, "large": False})
    kept, doc, calls, seen = _run(router, _decision(["small", "large"]),
                                  {"small": _completion("B", [-0.05, -0.1])})
    assert kept == "small" and doc["choices"][0]["message"]["content"] == "B"
    assert [m for m, _ in seen] == ["small"]
    body = seen[0][1]
    assert body["logprobs"] is True and "stream" not in body and "stream_options" not in body
    assert calls == [{"model": "small", "confidence": pytest.approx(math.exp(-0.075)), "own": True}]
    assert "logprobs" not in doc["choices"][0]  # the client did not ask for them


def test_an_unsure_cheap_answer_escalates_to_the_last_stage():
    router = _router({"small": True, "mid": True, "large": False})
    answers = {"small": _completion("A", [-2.0]), "mid": _completion("C", [-1.0, -0.9])}
    kept, doc, calls, seen = _run(router, _decision(["small", "mid", "large"]), answers)
    assert kept == "large" and doc is None  # the last stage is answered like any routed request
    assert [m for m, _ in seen] == ["small", "mid"] and [c["model"] for c in calls] == ["small", "mid"]
    assert all(c["confidence"] < 0.6 for c in calls)


def test_a_failed_or_silent_stage_falls_back():
    router = _router({"small": True, "large": False})
    kept, doc, calls, _ = _run(router, _decision(["small", "large"]), {"small": None})
    assert kept == "large" and doc is None and calls == [{"model": "small", "confidence": None, "failed": True}]
    # an endpoint that ignores logprobs: the router's predicted success stands in for the missing signal
    kept, doc, calls, _ = _run(router, _decision(["small", "large"], predicted={"small": 0.9, "large": 0.95}),
                               {"small": _completion("A", None)})
    assert kept == "small" and calls[0]["own"] is False and calls[0]["confidence"] == 0.9


def test_a_stage_without_a_signal_is_decided_before_any_call():
    router = _router({"small": False, "mid": True, "large": False})
    kept, doc, calls, seen = _run(router, _decision(["small", "mid", "large"], predicted={"small": 0.7, "mid": 0.1,
                                                                                           "large": 0.9}), {})
    assert kept == "small" and doc is None and seen == [] and calls == []


def test_which_plans_run_stages():
    router = _router({"small": True, "large": False})
    assert cascade_stages(router, _decision(["small", "large"])) == [("small", True), ("large", False)]
    assert cascade_stages(_router({"small": False, "mid": True, "large": False}), _decision(["small", "mid", "large"])) \
        == [("small", False), ("mid", True), ("large", False)]
    assert cascade_stages(router, _decision(["small", "large"], kind="ensemble")) is None
    assert cascade_stages(_router({"small": False, "large": False}), _decision(["small", "large"],
                                                                               confidence="agreement")) \
        == [("small", False), ("large", False)]  # every earlier stage is called: its answer is compared
    assert cascade_stages(_router({"small": False, "large": True}), _decision(["small", "large"])) is None
    assert cascade_stages(router, _decision(["large"])) is None
    # a prompt-variant vote rewrites the question; the proxy keeps the client's prompt: decided as without agreement
    assert cascade_stages(_router({"small": False, "large": False}), _decision(["small", "large"],
                                                                               confidence="variants")) is None
    assert cascade_stages(router, _decision(["small", "large"], confidence="variants")) == [("small", True),
                                                                                            ("large", False)]


def test_confidence_is_range_checked():
    assert answer_confidence(_completion("A", [-0.5])) == pytest.approx(math.exp(-0.5))
    assert answer_confidence(_completion("A", [0.7])) is None
    assert answer_confidence({"choices": "x"}) is None and answer_confidence({}) is None


def test_a_kept_answer_streams_as_the_client_asked():
    doc = {**_completion("It is a cat.", None), "model": "small"}
    events = list(completion_events(doc, include_usage=True))
    assert events[-1] == "data: [DONE]\n\n"
    first = json.loads(events[0][len("data: "):])
    assert first["object"] == "chat.completion.chunk" and first["model"] == "small"
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "It is a cat."}
    assert json.loads(events[1][len("data: "):])["usage"]["total_tokens"] == 4
    assert len(list(completion_events(doc, include_usage=False))) == 2
    assert json.loads(calls_header([{"model": "small", "confidence": 0.1234567891}])) == \
        [{"model": "small", "confidence": 0.123457}]


def test_an_agreement_cascade_compares_the_answers():
    router = _router({"small": False, "mid": True, "large": False})
    decision = _decision(["small", "mid", "large"], threshold=1.0, confidence="agreement")
    answers = {"small": _completion("['B\\n']", None), "mid": _completion("b", [-3.0])}
    kept, doc, calls, seen = _run(router, decision, answers)
    assert kept == "mid" and doc["choices"][0]["message"]["content"] == "b"  # low token probability, yet agreed
    assert [m for m, _ in seen] == ["small", "mid"] and "logprobs" not in seen[0][1] and seen[1][1]["logprobs"]
    assert calls[0] == {"model": "small", "confidence": 0.5, "own": False}
    assert calls[1]["confidence"] == 1.0 and calls[1]["agreement"] is True
    kept, doc, calls, seen = _run(router, decision, {"small": _completion("A", None), "mid": _completion("C", None)})
    assert kept == "large" and doc is None and [c["confidence"] for c in calls] == [0.5, 0.0]


def test_an_agreement_cascade_skips_what_it_knows_and_what_failed():
    router = _router({"small": False, "mid": False, "large": False})
    sure = _decision(["small", "mid", "large"], threshold=0.6, confidence="agreement",
                     predicted={"small": 0.8, "mid": 0.5, "large": 0.9})
    kept, doc, calls, seen = _run(router, sure, {})
    assert kept == "small" and doc is None and seen == []  # known before any call
    unsure = _decision(["small", "mid", "large"], threshold=1.0, confidence="agreement")
    kept, doc, calls, seen = _run(router, unsure, {"small": None, "mid": _completion("A", None)})
    assert kept == "large" and calls[0]["failed"] and calls[1] == {"model": "mid", "confidence": 0.5, "own": False}
    kept, doc, calls, _ = _run(router, unsure, {"small": _completion("", None), "mid": _completion("A", None)})
    assert kept == "large" and "agreement" not in calls[1]  # an empty reply is not an answer to agree with


def test_answer_text_reads_string_and_part_content():
    assert answer_text(_completion("cat", None)) == "cat"
    doc = _completion("", None)
    doc["choices"][0]["message"]["content"] = [{"type": "text", "text": "ca"}, {"type": "text", "text": "t"}, 3]
    assert answer_text(doc) == "cat"
    assert answer_text({"choices": []}) is None and answer_text({"choices": [{"message": {"content": None}}]}) is None
