"""LLM generation through the openai client against loopback servers: retries, timeouts, cache, resume, parsing."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tests.openai_stub import StubServer
from visroute.cli import app
from visroute.descriptions import load_descriptions
from visroute.descriptions.generate import (build_requests, confusion_neighbours, generate_descriptions,
                                            parse_list_answer, parse_sentence_answer, text_neighbours)
from visroute.llm import ChatRequest, ResponseCache, load_generator


def _feature_answer(prompt: str) -> str:
    name = prompt.split("recognise a ")[1].split(" in a")[0] if "recognise a " in prompt else "thing"
    return f"Here are features:\n- {name} shape\n- typical {name} colour\n1. a {name} texture"


@pytest.mark.parametrize("answer, items", [
    ("- red crest\n- long legs", ["red crest", "long legs"]),
    ("Sure! Here you go:\n* striped fur\n2) a bushy tail.", ["striped fur", "a bushy tail"]),
    ("A cat is a small animal with whiskers.", []),
    ("", []),
    ("- " + "word " * 40, []),
    ("- same\n- same", ["same"]),
])
def test_parse_list_answer(answer, items):
    assert parse_list_answer(answer) == items


def test_parse_sentence_answer():
    assert parse_sentence_answer("A tench is a freshwater fish. It is green.") == ["A tench is a freshwater fish."]
    assert parse_sentence_answer("  ") == [] and parse_sentence_answer("ok") == []


def test_neighbours():
    import numpy as np

    emb = np.eye(3)[[0, 0, 1, 2]] + np.array([[0, 0, 0], [0.1, 0, 0], [0, 0, 0], [0, 0.1, 0]])
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    assert text_neighbours(emb, 1)[:2] == [[1], [0]]
    assert confusion_neighbours([[5, 1, 3], [0, 4, 0], [2, 2, 1]], 1) == [[2], [0], [0]]
    reqs = build_requests(["cat", "dog", "fox"], "contrastive", [[1, 2], [0, 2], [1, 0]])
    assert "distinguish a cat from a dog, or a fox" in reqs[0][1].prompt


def test_generation_with_retries_failures_cache_and_resume(tmp_path):
    classes = ["cat", "dog", "fox", "owl"]
    with StubServer(default=_feature_answer) as srv:
        # cat: two HTTP 500s then success; dog: unparsable prose; fox: times out on every attempt; owl: fine
        srv.script = [("status", 500), ("status", 500), ("text", _feature_answer("recognise a cat in a")),
                      ("text", "I would rather not answer in a list."),
                      ("sleep", 1.5), ("sleep", 1.5), ("sleep", 1.5)]
        cache = ResponseCache(tmp_path / "r.sqlite")
        gen = load_generator(f"openai-compatible:{srv.base_url}#tiny", cache=cache, timeout=0.5, max_retries=2,
                             concurrency=1, backoff_s=0.01)
        dset, report = generate_descriptions(gen, classes, "dclip")
        assert dset.descriptions[0] == ["cat shape", "typical cat colour", "a cat texture"]
        assert [u["class"] for u in report.unparsable] == ["dog"] and "rather not" in report.unparsable[0]["answer"]
        assert [f["class"] for f in report.failed] == ["fox"] and "gave up after 3 attempts" in report.failed[0]["error"]
        assert report.empty_classes == ["dog", "fox"] and dset.descriptions[3][0] == "owl shape"
        n_requests = len(srv.requests)
        assert n_requests == 3 + 1 + 3 + 1
        # re-run: answered requests come from the cache (cost nothing); only the failed one is retried
        dset2, report2 = generate_descriptions(gen, classes, "dclip")
        assert report2.cached == 3 and len(srv.requests) == n_requests + 1
        assert dset2.descriptions[2] == ["fox shape", "typical fox colour", "a fox texture"]
        assert dset2.descriptions[1] == [] and len(report2.unparsable) == 1  # still reported, from the cache


def test_images_reach_the_server_and_change_the_cache_key(tmp_path, imagenet_images):
    with StubServer() as srv:
        gen = load_generator(f"openai-compatible:{srv.base_url}#vlm", cache=ResponseCache(tmp_path / "r.sqlite"))
        a = gen.generate([ChatRequest("what is this?", images=[imagenet_images[0]])])[0]
        b = gen.generate([ChatRequest("what is this?", images=[imagenet_images[1]])])[0]
        c = gen.generate([ChatRequest("what is this?", images=[imagenet_images[0]])])[0]
        assert not a.cached and not b.cached and c.cached and len(srv.requests) == 2
        part = srv.requests[0]["messages"][0]["content"][0]
        assert part["type"] == "image_url" and part["image_url"]["url"].startswith("data:image/png;base64,")
        assert a.input_tokens == 3 and a.output_tokens == 4


def test_describe_cli_contrastive_with_confusion_matrix(tmp_path, monkeypatch):
    monkeypatch.setenv("VISROUTE_CACHE", str(tmp_path / "cache"))
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\nfox\n")
    result = tmp_path / "zs.json"
    result.write_text(json.dumps({"visroute": {"confusion_matrix": [[5, 1, 4], [2, 6, 0], [3, 1, 5]]}}))
    with StubServer(default=lambda p: "- pointed ears\n- bushy tail") as srv:
        out = tmp_path / "desc.json"
        r = CliRunner().invoke(app, ["describe", "--classes", str(classes), "--llm", f"openai-compatible:{srv.base_url}#m",
                                     "--style", "contrastive", "--neighbours", "1", "--confusion", str(result),
                                     "--output", str(out), "--no-progress"])
        assert r.exit_code == 0, r.output
        prompts = " | ".join(q["messages"][-1]["content"] for q in srv.requests)  # concurrent: any order
        assert "distinguish a cat from a fox" in prompts and "distinguish a dog from a cat" in prompts
        assert "distinguish a fox from a cat" in prompts
    d = load_descriptions(out, allow_empty=True)
    assert d.descriptions == [["pointed ears", "bushy tail"]] * 3 and d.provenance["style"] == "contrastive"
    assert d.provenance["generator"].endswith("#m") and d.provenance["report"]["requests"] == 3


def test_bad_llm_spec_is_a_usage_error(tmp_path):
    classes = tmp_path / "c.txt"
    classes.write_text("cat\n")
    r = CliRunner().invoke(app, ["describe", "--classes", str(classes), "--llm", "openai-compatible:http://x",
                                 "--output", str(tmp_path / "o.json")])
    assert r.exit_code == 2 and "#<model>" in r.stderr


def test_describe_against_transformers_serve(transformers_server, tmp_path, monkeypatch):
    """A real OpenAI-compatible server (transformers serve) with a tiny random LLM: its answers are noise, so every
    one must be reported as unparsable (none silently dropped), and a re-run is answered from the cache."""
    base_url, model_path = transformers_server
    monkeypatch.setenv("VISROUTE_CACHE", str(tmp_path / "cache"))
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\n")
    out = tmp_path / "desc.json"
    args = ["describe", "--classes", str(classes), "--llm", f"openai-compatible:{base_url}#{model_path}",
            "--style", "cupl", "--max-tokens", "12", "--output", str(out), "--no-progress", "--concurrency", "2"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code in (0, 1), r.output
    report = load_descriptions(out, allow_empty=True).provenance["report"]
    assert report["requests"] == 6 and report["n_failed"] == 0 and report["cached"] == 0
    n_described = sum(len(d) for d in load_descriptions(out, allow_empty=True).descriptions)
    assert report["n_unparsable"] + n_described == 6  # every answer is either a description or reported
    assert all(u["answer"] is not None and u["class"] in ("cat", "dog") for u in report["unparsable"])
    r2 = CliRunner().invoke(app, args)
    assert load_descriptions(out, allow_empty=True).provenance["report"]["cached"] == 6, r2.output


def test_describe_with_a_local_causal_lm(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("VISROUTE_CACHE", str(tmp_path / "cache"))
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\n")
    out = tmp_path / "d.json"
    r = CliRunner().invoke(app, ["describe", "--classes", str(classes), "--llm", f"hf:{tiny_llama_dir}", "--max-tokens", "8",
                                 "--output", str(out), "--no-progress"])
    assert r.exit_code in (0, 1), r.output
    report = load_descriptions(out, allow_empty=True).provenance["report"]
    assert report["requests"] == 2 and report["n_failed"] == 0
    assert report["n_unparsable"] + sum(1 for d in load_descriptions(out, allow_empty=True).descriptions if d) == 2
