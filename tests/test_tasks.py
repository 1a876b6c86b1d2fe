"""Tasks, answer parsing, the three pipeline kinds and cost accounting."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tests.openai_stub import StubServer
from visroute.cli import app
from visroute.heads.vlm import CLIPOptionsPipeline, VLMDirectPipeline, VLMThenLLMPipeline, accuracy
from visroute.llm import ResponseCache, load_generator
from visroute.tasks import load_tasks, parse_option
from visroute.tasks.costs import PriceTable
from visroute.tasks.prompts import load_prompt

SQA_ROWS = [
    ("n01440764_tench", "Which kind of living thing is shown?", ["a fish", "a bird", "a tree"], 0, ""),
    ("n01443537_goldfish", "Where does the animal in the picture usually live?", ["in water", "in a desert", "in a tree"], 0,
     "Goldfish are kept in ponds and bowls."),
    ("n02123045_tabby", "Which animal is this?", ["dog", "cat", "horse", "cow"], 1, ""),
    ("n03417042_garbage_truck", "What is this vehicle used for?", ["collecting waste", "racing", "flying"], 0, ""),
    ("n07753592_banana", "Which food group does this belong to?", ["fruit", "meat", "dairy"], "fruit", ""),
    ("n09472597_volcano", "What can come out of this landform?", ["lava", "snow only", "nothing"], "A", ""),
    ("n04254680_soccer_ball", "Which sport uses this object?", ["soccer", "golf", "tennis", "swimming"], 0, ""),
    ("n02096051_Airedale", "Which animal is this?", ["cat", "dog", "sheep"], 1, "The picture was taken in a park."),
]


@pytest.fixture()
def task_file(tmp_path, shared_data):
    f = tmp_path / "sqa.jsonl"
    rows = [{"id": f"q{i}", "image": str(shared_data / "imagenet-sample" / f"{img}.JPEG"), "question": q, "choices": c,
             "answer": a, "context": ctx} for i, (img, q, c, a, ctx) in enumerate(SQA_ROWS)]
    rows.append({"id": "bad1", "image": str(shared_data / "imagenet-sample" / "n01440764_tench.JPEG"),
                 "question": "Which?", "choices": ["x", "y"], "answer": "z"})
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n")
    return f


def test_load_tasks_resolves_answers_and_counts_bad_rows(task_file):
    tasks, skipped = load_tasks(str(task_file))
    assert len(tasks) == 8 and [t.answer for t in tasks] == [0, 0, 1, 0, 0, 0, 0, 1]
    assert tasks[1].context.startswith("Goldfish") and tasks[0].dataset == "sqa"
    assert [s["row"] for s in skipped] == [9, 10]
    assert "'z' is not one of the options" in skipped[0]["reason"] and "not valid JSON" in skipped[1]["reason"]


@pytest.mark.parametrize("answer, expected, rule", [
    ("B", 1, "letter"), ("(b) a cat", 1, "letter"), ("(a) a cat", None, "conflict"), ("The answer is cat.", 1, "contains"),
    ("none of these", None, "refusal"), ("", None, "empty"), ("cat", 1, "exact"), ("Answer: C", 2, "letter"),
    ("I think it is a horse or a dog", None, "ambiguous"), ("2", 1, "index"), ("hrose", 2, "fuzzy"),
    ("a small animal", None, "unparsable"), ("A", 0, "letter"), ("a dog", 0, "exact"),
])
def test_parse_real_looking_answers(answer, expected, rule):
    assert parse_option(answer, ["dog", "cat", "horse", "cow"]) == (expected, rule)


def test_prompt_variants(task_file, tmp_path):
    t = load_tasks(str(task_file))[0][1]
    mcq = load_prompt("mcq").render(t)
    assert "Context: Goldfish" in mcq and "A. in water\nB. in a desert" in mcq
    assert "A." not in load_prompt("mcq-text").render(t) and "in water, in a desert, in a tree" in load_prompt("mcq-text").render(t)
    assert "in water" not in load_prompt("open").render(t)
    custom = tmp_path / "p.txt"
    custom.write_text("# lettering: (a)\nQ: {question}\n{options}\n")
    p = load_prompt(str(custom))
    assert p.lettered and "(b) in a desert" in p.render(t) and "Context" not in p.render(t)


def test_clip_options_pipeline(task_file, tiny_clip_dir):
    from visroute.models import load_model

    tasks, _ = load_tasks(str(task_file))
    pipe = CLIPOptionsPipeline(load_model(f"hf:{tiny_clip_dir}", device="cpu"),
                               prices=PriceTable({"*": {"per_second": 1.0, "per_image": 0.5}}))
    preds = pipe.predict(tasks)
    assert len(preds) == 8 and all(p.predicted is not None and len(p.option_scores) == len(t.options)
                                   for p, t in zip(preds, tasks))
    assert all(abs(sum(p.option_scores) - 1) < 1e-5 for p in preds)
    assert all(p.cost == pytest.approx(0.5 + p.latency_s) for p in preds)


def test_vlm_pipeline_retries_then_counts_failure_without_losing_work(task_file, tmp_path):
    tasks, _ = load_tasks(str(task_file))
    tasks = tasks[:4]
    answers = iter(["B", "(a) a fish", "The answer is cat.", "x"])
    with StubServer(default=lambda p: next(answers)) as srv:
        # task 0: 500 then "B"; task 1: timeouts on all 3 attempts; tasks 2, 3 answered
        srv.script = [("status", 500), ("text", "A"), ("sleep", 1.2), ("sleep", 1.2), ("sleep", 1.2),
                      ("text", "cat"), ("text", "none of these")]
        gen = load_generator(f"openai-compatible:{srv.base_url}#vlm", cache=ResponseCache(tmp_path / "r.sqlite"),
                             timeout=0.4, max_retries=2, concurrency=1, backoff_s=0.01)
        prices = PriceTable({"*": {"input_per_mtok": 1e6, "output_per_mtok": 2e6}})
        preds = VLMDirectPipeline(gen, "mcq", prices, batch=4).predict(tasks)
        assert [p.predicted for p in preds] == [0, None, 1, None]
        assert [p.parse_rule for p in preds] == ["letter", "error", "exact", "refusal"]
        assert "gave up after 3 attempts" in preds[1].error and "Timeout" in preds[1].error
        assert preds[0].cost == pytest.approx(preds[0].input_tokens * 1 + preds[0].output_tokens * 2) and preds[0].cost > 0
        assert accuracy(tasks, preds) == 0.5
        n = len(srv.requests)
        srv.script = [("text", "A")]
        again = VLMDirectPipeline(gen, "mcq", prices, batch=4).predict(tasks)
        assert len(srv.requests) == n + 1  # only the failed task is asked again
        assert [p.cached for p in again] == [True, False, True, True] and again[0].cost == 0.0
        assert again[1].predicted == 0


def test_an_answer_no_parser_can_read_is_not_cached_and_is_asked_again(task_file, tmp_path):
    """A refusal is a real answer and stays cached; text the parser cannot read at all ("banana") is returned and
    counted as unparsable, but never served back from the cache: the next run asks again (VLM, and the LLM step
    of vlm+llm)."""
    tasks, _ = load_tasks(str(task_file))
    tasks = tasks[:2]
    with StubServer(default=lambda p: "A") as srv:
        srv.script = [("text", "banana"), ("text", "none of these")]
        gen = load_generator(f"openai-compatible:{srv.base_url}#vlm", cache=ResponseCache(tmp_path / "r.sqlite"),
                             concurrency=1)
        first = VLMDirectPipeline(gen, "mcq", batch=2).predict(tasks)
        assert [p.parse_rule for p in first] == ["unparsable", "refusal"]
        n = len(srv.requests)
        again = VLMDirectPipeline(gen, "mcq", batch=2).predict(tasks)
        assert len(srv.requests) == n + 1 and [p.cached for p in again] == [False, True]
        assert again[0].predicted == 0 and again[1].parse_rule == "refusal"

        srv.script = [("text", "A cat."), ("text", "Hmm.\nI would say banana")]
        vlm = load_generator(f"openai-compatible:{srv.base_url}#vlm2", cache=ResponseCache(tmp_path / "r2.sqlite"))
        llm = load_generator(f"openai-compatible:{srv.base_url}#llm", cache=ResponseCache(tmp_path / "r2.sqlite"))
        assert VLMThenLLMPipeline(vlm, llm).predict(tasks[:1])[0].parse_rule == "unparsable"
        n = len(srv.requests)
        redo = VLMThenLLMPipeline(vlm, llm).predict(tasks[:1])[0]
        assert len(srv.requests) == n + 1 and redo.predicted == 0  # the description came from the cache


def test_vlm_then_llm_pipeline_passes_the_description(task_file, tmp_path):
    tasks, _ = load_tasks(str(task_file))
    with StubServer(default=lambda p: "A striped cat on a sofa." if "Describe" in p else
                    "The description mentions a cat.\nAnswer: B") as srv:
        vlm = load_generator(f"openai-compatible:{srv.base_url}#vlm", cache=ResponseCache(tmp_path / "r.sqlite"))
        llm = load_generator(f"openai-compatible:{srv.base_url}#llm", cache=ResponseCache(tmp_path / "r.sqlite"))
        preds = VLMThenLLMPipeline(vlm, llm).predict(tasks[2:3])
        assert preds[0].predicted == 1 and preds[0].intermediate == "A striped cat on a sofa."
        reason_req = srv.requests[1]["messages"][-1]["content"]
        assert "A striped cat on a sofa." in reason_req and "B. cat" in reason_req
        assert srv.requests[0]["messages"][-1]["content"][0]["type"] == "image_url"  # the VLM saw the image
        assert isinstance(srv.requests[1]["messages"][-1]["content"], str)  # the LLM only text


def test_cli_eval_task_pipelines(task_file, tmp_path, tiny_clip_dir, monkeypatch):
    import pyarrow.parquet as pq

    monkeypatch.setenv("VISROUTE_CACHE", str(tmp_path / "cache"))
    with StubServer(default=lambda p: "A" if "Options" in p else "a thing") as srv:
        url = f"openai-compatible:{srv.base_url}#m"
        for args in (["--head", "clip-options", "-m", f"hf:{tiny_clip_dir}"], ["--head", "vlm", "--vlm", url],
                     ["--head", "vlm+llm", "--vlm", url, "--llm", url]):
            r = CliRunner().invoke(app, ["eval", "-d", str(task_file), *args, "--output", str(tmp_path / "out")])
            assert r.exit_code == 1, r.output  # all tasks ran, but two rows of the file were skipped: not "all done"
            assert "skipped task row 9" in r.stderr
    docs = [json.loads(p.read_text()) for p in sorted((tmp_path / "out").glob("*.json"))]
    assert sorted(d["visroute"]["head"] for d in docs) == ["clip-options", "vlm", "vlm+llm"]
    vlm_doc = next(d for d in docs if d["visroute"]["head"] == "vlm")
    assert vlm_doc["metrics"]["acc1"] == pytest.approx(6 / 8)  # "A" is right for 6 of the 8 tasks
    assert vlm_doc["visroute"]["parse_rules"] == {"letter": 8} and vlm_doc["visroute"]["input_tokens"] > 0
    table = pq.read_table(tmp_path / "out" / vlm_doc["visroute"]["predictions_file"]).to_pandas()
    assert {"cost", "latency_s", "input_tokens", "output_tokens", "images", "cached", "parse_rule"} <= set(table.columns)
    assert len(table) == 8 and table["correct"].sum() == 6


def test_vlm_pipelines_through_a_real_openai_compatible_server(task_file, tmp_path, llava_server, transformers_server):
    """vlm and vlm+llm against `transformers serve` (tiny random LLaVA and Llama): the openai client, image content,
    token usage and costs all real; the answers are noise, so they are mostly unparsable — and counted as such."""
    tasks, _ = load_tasks(str(task_file))
    (vlm_url, vlm_name), (llm_url, llm_name) = llava_server, transformers_server
    cache = ResponseCache(tmp_path / "r.sqlite")
    vlm = load_generator(f"openai-compatible:{vlm_url}#{vlm_name}", cache=cache, max_tokens=6, concurrency=2)
    llm = load_generator(f"openai-compatible:{llm_url}#{llm_name}", cache=cache, max_tokens=6, concurrency=2)
    prices = PriceTable({"*": {"per_second": 1.0}})
    direct = VLMDirectPipeline(vlm, "mcq", prices).predict(tasks)
    assert all(p.error is None and p.input_tokens > 16 and p.output_tokens > 0 and p.cost > 0 for p in direct)
    assert all(p.predicted is not None or p.parse_rule in ("unparsable", "ambiguous", "refusal", "conflict", "empty")
               for p in direct)
    two = VLMThenLLMPipeline(vlm, llm, prices=prices).predict(tasks[:3])
    assert all(p.error is None and p.intermediate and p.images == 1 for p in two)
    again = VLMDirectPipeline(vlm, "mcq", prices).predict(tasks)
    for first, second in zip(direct, again):  # what the parser could read comes back free; the rest is asked again
        kept = first.parse_rule != "unparsable"
        assert second.cached == kept and (second.cost == 0) == kept and second.call_cost > 0
    assert [p.raw_answer for p in again] == [p.raw_answer for p in direct]  # greedy decoding: the same answers


def test_unreadable_task_image_is_a_counted_failure(task_file, tmp_path):
    tasks, _ = load_tasks(str(task_file))
    tasks[1].image = str(tmp_path / "missing.jpg")
    with StubServer(default=lambda p: "A") as srv:
        gen = load_generator(f"openai-compatible:{srv.base_url}#vlm", cache=ResponseCache(tmp_path / "r.sqlite"))
        preds = VLMDirectPipeline(gen, "mcq").predict(tasks[:3])
    assert [p.predicted for p in preds] == [0, None, 0] and "missing.jpg" in preds[1].error
