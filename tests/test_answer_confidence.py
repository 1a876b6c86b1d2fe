"""A generative answer's own confidence (issue 23: a cascade's signal for VLMs): the mean token log-probability the
backend reports, through the response cache, the task results, the routing records and the route-time cascade.

Local transformers models report it always (checked against transformers' own ``compute_transition_scores``);
OpenAI-compatible endpoints when the spec asks (``params: {logprobs: true}``), range-checked like every number.
"""

from __future__ import annotations

import json
import math
import sqlite3

import pytest

from tests.openai_stub import StubServer
from visroute.heads.vlm import VLMDirectPipeline
from visroute.llm import ResponseCache, load_generator
from visroute.llm.base import ChatRequest, mean_logprob
from visroute.pipeline.spec import PipelineSpec, SpecError
from visroute.router.decide.run import own_confidence
from visroute.tasks import load_tasks


def test_local_model_logprobs_equal_transformers_transition_scores():
    """Same weights, same prompts: the streamed per-token log-probabilities give the mean that transformers'
    ``compute_transition_scores(normalize_logits=True)`` gives over the answer's tokens (up to the first EOS/pad)."""
    import torch

    gen = load_generator("random-tiny:llama", max_tokens=8)
    reqs = [ChatRequest("Which is it? a) cat b) dog"), ChatRequest("answer with one letter, please")]
    got = [r.mean_logprob for r in gen.generate(reqs)]
    tok, model = gen.tokenizer, gen.model
    enc = tok([gen._render(r) for r in reqs], return_tensors="pt", padding=True)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id,
                             output_scores=True, return_dict_in_generate=True)
    scores = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
    new = out.sequences[:, enc["input_ids"].shape[1]:]
    stop = {tok.pad_token_id, tok.eos_token_id}
    want = []
    for row, ids in zip(scores.tolist(), new.tolist()):
        n = next((j + 1 for j, t in enumerate(ids) if t in stop), len(ids))
        want.append(sum(row[:n]) / n)
    assert got == pytest.approx(want, abs=1e-5)
    assert all(w < 0 for w in want)


def test_a_local_vlm_answer_carries_its_confidence(tmp_path, shared_data):
    rows = [{"id": "q0", "image": str(shared_data / "imagenet-sample" / "n01440764_tench.JPEG"),
             "question": "Which kind of living thing is shown?", "choices": ["a fish", "a bird"], "answer": 0}]
    (tmp_path / "t.jsonl").write_text(json.dumps(rows[0]) + "\n")
    tasks, _ = load_tasks(str(tmp_path / "t.jsonl"))
    gen = load_generator("random-tiny:llava", max_tokens=6, cache=ResponseCache(tmp_path / "r.sqlite"))
    first = VLMDirectPipeline(gen, "mcq").predict(tasks)[0]
    assert first.confidence is not None and 0 < first.confidence <= 1
    again = VLMDirectPipeline(gen, "mcq").predict(tasks)[0]  # from the cache: the same confidence, no call
    if first.parse_rule != "unparsable":  # an unreadable answer is never cached (asked again)
        assert again.cached and again.confidence == pytest.approx(first.confidence, rel=1e-6)


@pytest.mark.parametrize("reported, expected", [
    ([-0.1, -0.3], -0.2),
    ([0.0], 0.0),
    ([-0.1, float("nan")], None),
    ([-0.1, 0.5], None),          # a probability above 1: the server's figure is not believed
    ([-0.1, "x"], None),
    ([-0.1, True], None),
    ([], None),
])
def test_mean_logprob_is_range_checked(reported, expected):
    got = mean_logprob(reported)
    assert got == (pytest.approx(expected) if expected is not None else None)


def test_an_endpoint_is_asked_for_logprobs_only_when_the_spec_says(tmp_path):
    with StubServer(default=lambda p: "A") as srv:
        srv.logprobs = [-0.2, -0.4]
        url = f"openai-compatible:{srv.base_url}#vlm"
        plain = load_generator(url, cache=ResponseCache(tmp_path / "a.sqlite"))
        asked = load_generator(url, cache=ResponseCache(tmp_path / "b.sqlite"), logprobs=True)
        r0 = plain.generate([ChatRequest("q")])[0]
        r1 = asked.generate([ChatRequest("q")])[0]
        assert "logprobs" not in srv.requests[0] and srv.requests[1]["logprobs"] is True
        assert r0.mean_logprob is None and r1.mean_logprob == pytest.approx(-0.3)
        assert r1.confidence == pytest.approx(math.exp(-0.3))
        srv.logprobs = [-0.2, 3.0]  # out of range: no confidence rather than a wrong one
        bad = load_generator(url, cache=None, logprobs=True).generate([ChatRequest("q2")])[0]
        assert bad.ok and bad.mean_logprob is None
        hit = asked.generate([ChatRequest("q")])[0]  # the cached answer keeps its figure
        assert hit.cached and hit.mean_logprob == pytest.approx(-0.3) and len(srv.requests) == 3


def test_the_spec_param_reaches_the_endpoint_and_is_checked():
    spec = PipelineSpec.from_dict({"head": "vlm", "vlm": "openai:gpt-4o-mini", "params": {"logprobs": True}})
    assert spec.params == {"logprobs": True}
    assert "logprobs" not in PipelineSpec.from_dict({"head": "vlm", "vlm": "openai:x"}).to_json()  # old specs unchanged
    with pytest.raises(SpecError, match="logprobs"):
        PipelineSpec.from_dict({"head": "vlm", "vlm": "openai:x", "params": {"logprobs": "yes"}})
    with pytest.raises(SpecError, match="logprobs"):
        PipelineSpec.from_dict({"head": "zeroshot", "model": "random-tiny", "params": {"logprobs": True}})


def test_a_cache_written_before_the_column_existed_gains_it(tmp_path, monkeypatch):
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE responses (key TEXT PRIMARY KEY, model TEXT NOT NULL, text TEXT NOT NULL, "
                 "input_tokens INTEGER, output_tokens INTEGER, latency_s REAL, created REAL)")
    conn.execute("INSERT INTO responses (key, model, text) VALUES ('k0', 'm', 'old answer')")
    conn.commit()
    conn.close()
    connect = sqlite3.connect

    def read_only_disk(target, *a, **kw):  # what a read-only mount answers to a writer (root ignores chmod)
        if not str(target).startswith("file:"):
            raise sqlite3.OperationalError("attempt to write a readonly database")
        return connect(target, *a, **kw)

    with monkeypatch.context() as m:  # read-only: the old answers still serve, with no figure
        m.setattr("visroute.llm.cache.sqlite3.connect", read_only_disk)
        ro = ResponseCache(path)
        assert ro.read_only and ro.get("k0") == {"text": "old answer", "input_tokens": None, "output_tokens": None,
                                                 "latency_s": None, "mean_logprob": None}
        ro.close()
    cache = ResponseCache(path)
    assert cache.get("k0")["text"] == "old answer" and cache.get("k0")["mean_logprob"] is None
    assert cache.put("k1", "m", "new answer", 3, 1, 0.1, -0.25)
    assert cache.get("k1")["mean_logprob"] == -0.25


def test_records_and_the_route_time_cascade_read_the_confidence(tmp_path, shared_data):
    """A task result's ``confidence`` becomes the records' ``score`` (the cascade's calibration signal), and at
    route time the same figure is what the cascade compares with its threshold."""
    from visroute.eval.tasks_run import evaluate_tasks
    from visroute.router.data.records import records_from_result

    row = {"id": "q0", "image": str(shared_data / "imagenet-sample" / "n01440764_tench.JPEG"),
           "question": "Which kind of living thing is shown?", "choices": ["a fish", "a bird"], "answer": 0}
    (tmp_path / "t.jsonl").write_text(json.dumps(row) + "\n")
    tasks, _ = load_tasks(str(tmp_path / "t.jsonl"))
    spec = PipelineSpec.from_dict({"head": "vlm", "vlm": "random-tiny:llava", "max_tokens": 6})
    from visroute.pipeline.build import build_pipeline

    pipe = build_pipeline(spec)
    out = tmp_path / "res"
    out.mkdir()
    evaluate_tasks(pipe, tasks, "toy", out, "mcq")
    result = next(out.glob("*.json"))
    rec = records_from_result(result, "llava").to_pandas()
    pred = pipe.predict(tasks)[0]
    assert rec["score"][0] == pytest.approx(pred.confidence, rel=1e-5) and 0 < rec["score"][0] <= 1
    answer = rec["answer"][0]  # what two models may agree on: the chosen option, none when unparsable
    assert answer == str(pred.predicted) if pred.predicted is not None else answer is None or answer != answer
    assert own_confidence(pred) == pytest.approx(pred.confidence)
