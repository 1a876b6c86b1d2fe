"""One road from measurement to routing: the pipeline spec a grid measures is the one `route` calls.

- spec validation (unknown keys name the nearest valid key) and JSON / YAML round trips;
- a grid with non-default prices, reason prompt, max tokens and prompt variant against a local
  OpenAI-compatible server; the routed call sends exactly the request the grid sent, at the same cost;
- a text+image router on a CSV-manifest dataset uses real, per-image embeddings from the feature cache and
  refuses with a clear error where the cache cannot provide them;
- a contrastive model's per-image price reaches the records.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from tests.openai_stub import StubServer
from tests.test_tasks import SQA_ROWS
from visroute.cli import app
from visroute.pipeline import PipelineSpec, SpecError, build_pipeline


def test_spec_rejects_unknown_keys_with_the_nearest_valid_one(tmp_path):
    with pytest.raises(SpecError, match=r"unknown key 'max_token' \(did you mean 'max_tokens'\?\)"):
        PipelineSpec.from_dict({"head": "vlm", "vlm": "random-tiny:llava", "max_token": 8})
    with pytest.raises(SpecError, match="head 'vlm\\+llm' needs 'vlm' and 'llm'"):
        PipelineSpec.from_dict({"head": "vlm+llm"})
    with pytest.raises(SpecError, match="unknown head 'zeroshoot' \\(did you mean 'zeroshot'"):
        PipelineSpec(head="zeroshoot", model="random-tiny")
    with pytest.raises(SpecError, match="params key 'wcls' does not apply.*did you mean 'w_cls'"):
        PipelineSpec(head="classname-free", model="random-tiny", descriptions="d.json", params={"wcls": 1})
    bad = tmp_path / "bad.yaml"
    bad.write_text("head: zeroshot\nmodel: [unclosed\n")
    with pytest.raises(SpecError, match="bad.yaml is not valid YAML"):
        PipelineSpec.load(bad)


def test_spec_round_trips_through_json_and_yaml(tmp_path):
    spec = PipelineSpec(head="vlm+llm", name="p", vlm="random-tiny:llava", llm="random-tiny:llama", max_tokens=7,
                        reason_prompt="llm-reason", prices={"*": {"per_second": 0.5}}, device="cpu")
    (tmp_path / "s.json").write_text(spec.to_json())
    import yaml

    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec.to_dict()))
    assert PipelineSpec.load(tmp_path / "s.json") == spec == PipelineSpec.load(tmp_path / "s.yaml")
    assert PipelineSpec.from_json(spec.to_json()).fingerprint() == spec.fingerprint()
    assert spec.replace(max_tokens=8).fingerprint() != spec.fingerprint()


def _answer(prompt: str) -> str:
    return "Answer: A" if "Reason briefly" in prompt else "a photo of something round"


def _write_tasks(path, shared_data, rows=SQA_ROWS):
    path.write_text("\n".join(json.dumps({"id": f"q{i}", "image": str(shared_data / "imagenet-sample" / f"{img}.JPEG"),
                                          "question": q, "choices": c, "answer": a, "context": ctx})
                              for i, (img, q, c, a, ctx) in enumerate(rows)))


def test_routed_call_is_exactly_the_measured_pipeline(tmp_path, shared_data, monkeypatch):
    monkeypatch.setenv("VISROUTE_CACHE", str(tmp_path / "cache-grid"))
    tasks = tmp_path / "sqa.jsonl"
    _write_tasks(tasks, shared_data)
    (tmp_path / "reason.txt").write_text("# lettering: A.\nSeen: {description}\n{question}\n{options}\n"
                                         "Reason briefly, then 'Answer: <letter>'.")
    prices = {"openai-compatible:*#vlm-x": {"input_per_mtok": 1000.0, "output_per_mtok": 3000.0, "per_image": 0.01},
              "openai-compatible:*#llm-y": {"input_per_mtok": 500.0, "output_per_mtok": 800.0}, "*": {"per_second": 0.0}}
    (tmp_path / "prices.json").write_text(json.dumps(prices))
    with StubServer(default=_answer) as stub:
        url = stub.base_url
        monkeypatch.setenv("VISROUTE_ALLOW_ENDPOINTS", url)  # the user's own configuration names the endpoint
        (tmp_path / "grid.yaml").write_text(f"""
output: grid
max_tokens: 5
prices: prices.json
device: cpu
datasets:
  - {{spec: {tasks}, name: sqa}}
models:
  - {{name: clip, head: clip-options, model: random-tiny}}
  - {{name: vlm, head: vlm, vlm: "openai-compatible:{url}#vlm-x", prompts: [mcq-text]}}
  - {{name: pipe, head: vlm+llm, vlm: "openai-compatible:{url}#vlm-x", llm: "openai-compatible:{url}#llm-y",
      reason_prompt: reason.txt, describe_prompt: open, max_tokens: 9}}
""")
        runner = CliRunner()
        r = runner.invoke(app, ["grid", "run", str(tmp_path / "grid.yaml"), "--no-progress"])
        assert r.exit_code == 0, r.output
        grid_requests = list(stub.requests)
        records = pq.read_table(tmp_path / "grid" / "records.parquet").to_pandas()
        spec = PipelineSpec.from_json(records.loc[records.model == "pipe", "pipeline"].iloc[0])
        assert (spec.max_tokens, spec.describe_prompt, spec.prices) == (9, "open", prices)
        assert spec.reason_prompt == str((tmp_path / "reason.txt").resolve())
        vlm_spec = PipelineSpec.from_json(records.loc[records.model == "vlm", "pipeline"].iloc[0])
        assert (vlm_spec.prompt, vlm_spec.max_tokens) == ("mcq-text", 5)
        assert set(records.loc[records.model == "vlm", "prompt_variant"]) == {"mcq-text"}

        for cmd in (["route", "build", str(tmp_path / "grid" / "records.parquet"), "--out", str(tmp_path / "table"),
                     "--val-fraction", "0", "--test-fraction", "0"],
                    ["route", "train", str(tmp_path / "table"), "--out", str(tmp_path / "router")]):
            r = runner.invoke(app, cmd)
            assert r.exit_code == 0, r.output

        # route the first grid task with a fresh response cache, forcing the dearest model (the vlm+llm pipeline)
        monkeypatch.setenv("VISROUTE_CACHE", str(tmp_path / "cache-route"))
        stub.requests.clear()
        img, q, opts = SQA_ROWS[0][0], SQA_ROWS[0][1], SQA_ROWS[0][2]
        from visroute import Router

        router = Router.load(tmp_path / "router")
        # lambda must be >= 0, so make the pipeline the cheapest in the router's eyes and let cost decide
        router.bundle.costs = np.where(np.array(router.bundle.models) == "pipe", 0.0, 1.0)
        out = router.route(shared_data / "imagenet-sample" / f"{img}.JPEG", q, opts, lam=1e6)
        assert out["chosen"] == "pipe" and out["answer"] == opts[0]
        row = records[(records.model == "pipe") & (records.task_id == "q0")].iloc[0]
        assert out["task_text"] == row["task_text"]
        measured = [b for b in grid_requests if b["messages"][-1]["content"] == stub.requests[0]["messages"][-1]["content"]]
        assert len(stub.requests) == 2 and measured, "the routed VLM request differs from every measured one"
        reason_measured = [b for b in grid_requests if b == stub.requests[1]]
        assert measured[0] == stub.requests[0] and reason_measured, "the routed LLM request was never measured"
        assert stub.requests[1]["max_tokens"] == 9 and stub.requests[1]["model"] == "llm-y"
        assert out["cost"] == pytest.approx(row["cost"], rel=1e-9) and out["cost"] > 0


def _manifest(tmp_path, shared_data, n=10):
    files = sorted((shared_data / "imagenet-sample").glob("*.JPEG"))[:n]
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    lines = ["path,label"]
    for i, f in enumerate(files):
        shutil.copy(f, img_dir / f.name)
        lines.append(f"imgs/{f.name},{i % 2}")
    (tmp_path / "classes.txt").write_text("fish\nbird\n")
    (tmp_path / "data.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "data.csv", img_dir


def test_text_image_router_uses_cached_embeddings_of_a_manifest_dataset(tmp_path, shared_data, monkeypatch):
    monkeypatch.setenv("VISROUTE_CACHE", str(tmp_path / "cache"))
    csv, img_dir = _manifest(tmp_path, shared_data)
    (tmp_path / "prices.json").write_text(json.dumps({"random-tiny:clip": {"per_image": 0.5}, "*": {"per_image": 0.125}}))
    (tmp_path / "grid.yaml").write_text(f"""
output: grid
prices: prices.json
device: cpu
datasets: [{{spec: "{csv}#classnames={tmp_path / 'classes.txt'}", name: pets}}]
models:
  - {{name: a, head: zeroshot, model: random-tiny}}
  - {{name: b, head: zeroshot, model: "random-tiny:siglip"}}
""")
    runner = CliRunner()
    assert runner.invoke(app, ["grid", "run", str(tmp_path / "grid.yaml"), "--no-progress"]).exit_code == 0
    rec = pq.read_table(tmp_path / "grid" / "records.parquet").to_pandas()
    # the per-image price counts (per_second is 0 in this table): exactly 0.5 and 0.125 per image
    assert np.allclose(rec.loc[rec.model == "a", "cost"], 0.5) and np.allclose(rec.loc[rec.model == "b", "cost"], 0.125)
    r = runner.invoke(app, ["route", "build", str(tmp_path / "grid" / "records.parquet"), "--out", str(tmp_path / "t"),
                            "--val-fraction", "0", "--test-fraction", "0"])
    assert r.exit_code == 0, r.output
    from visroute.router.decide.bundle import train_bundle
    from visroute.router.data.table import RoutingTable

    table = RoutingTable.load(tmp_path / "t")
    bundle = train_bundle(table, "knn", "text+image", "random-tiny")
    emb = bundle.table_images(table)
    assert emb.shape == (len(table), 32) and np.all(np.abs(emb).sum(1) > 0)
    assert len(np.unique(emb.round(5), axis=0)) == len(table)  # one real embedding per image, not a filler
    from visroute.models import load_model
    from visroute.router.data.images import encode_paths

    direct = encode_paths("random-tiny", [str(tmp_path / "imgs" / i.split("/")[-1]) for i in table.image_id])
    np.testing.assert_allclose(emb, direct, atol=1e-5)  # cache path == direct encoding (same model, same pixels)
    assert load_model("random-tiny").spec == "random-tiny:clip"

    bundle.save(tmp_path / "router")
    (img_dir / table.image_id[0].split("/")[-1]).write_bytes(b"not a jpeg")
    r = runner.invoke(app, ["route", "eval", str(tmp_path / "t"), "--router", str(tmp_path / "router"), "--part", "train",
                            "--out", str(tmp_path / "rep")])
    assert r.exit_code == 2 and "cannot be embedded" in r.output and "Traceback" not in r.output


def test_build_pipeline_serves_classify_and_tasks_from_one_spec(shared_data):
    spec = PipelineSpec(head="zeroshot", model="random-tiny", templates=("a photo of a {c}.",), device="cpu")
    pipe = build_pipeline(spec)
    head = pipe.classifier(["fish", "cat"])
    from visroute.tasks.model import Task

    img = str(shared_data / "imagenet-sample" / "n01440764_tench.JPEG")
    pred = pipe.predict([Task("t", img, "What is shown?", ["fish", "cat"])])[0]
    emb = pipe.model.encode_images(pipe.model.collate([pipe.model.preprocess(__import__("PIL.Image").Image.open(img)
                                                                                     .convert("RGB"))]))
    np.testing.assert_allclose(pred.option_scores, np.asarray(head.predict_proba(emb))[0], atol=1e-5)
    text_only = pipe.predict([Task("t2", None, "Pick one", ["fish", "cat"])])[0]
    assert text_only.predicted is None and "text-only" in text_only.error


def test_api_functions_are_not_shadowed_by_modules():
    import visroute
    import visroute.batch_classify  # noqa: F401  (importing the CLI's module must not replace the API function)

    assert callable(visroute.classify) and callable(visroute.evaluate) and hasattr(visroute.Router, "load")
