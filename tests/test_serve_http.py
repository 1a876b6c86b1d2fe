"""``visroute serve`` as a real uvicorn process on 127.0.0.1: classify equals the CLI, auth, bad input, the
OpenAI-compatible routing proxy through the official ``openai`` client (images, streaming), /v1/route, metrics."""

from __future__ import annotations

import base64
import io
import json
import re
import time

import httpx2
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.serve_fixtures import API_KEY, ENDPOINT_KEY, OPENAI_KEY, ROUTER_TEXT
from visroute.cli import app as cli

pytest_plugins = ["tests.serve_fixtures"]
IMAGES = ["n02123045_tabby", "n01443537_goldfish", "n02096051_Airedale"]  # the Airedale JPEG is grayscale


def img(shared, name: str):
    return shared / "imagenet-sample" / f"{name}.JPEG"


def data_url(path) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()


def post(served, path, **kw):
    return httpx2.post(served.url + path, headers={**served.headers(), **kw.pop("headers", {})}, timeout=60, **kw)


def cli_predictions(args: list[str]) -> dict:
    # the service and the CLI both default to decode 'exact' (the model's own preprocessing)
    r = CliRunner().invoke(cli, ["classify", *args, "--model", "random-tiny", "--device", "cpu", "--json",
                                 "--workers", "0", "--top-k", "5"])
    assert r.exit_code == 0, r.output
    return {p["path"].rsplit("/", 1)[-1]: p for p in json.loads(r.stdout)["predictions"]}


def test_classify_equals_the_cli_for_uploads_and_base64(served, shared_data):
    paths = [img(shared_data, n) for n in IMAGES]
    expected = cli_predictions([str(p) for p in paths] + ["--labels-file", str(served.labels_file)])
    for p in paths:
        up = post(served, "/v1/classify", files={"image": (p.name, p.read_bytes(), "image/jpeg")},
                  data={"label_set": "animals", "top_k": "5"})
        js = post(served, "/v1/classify", json={"image": base64.b64encode(p.read_bytes()).decode(),
                                                "label_set": "animals"})
        for r in (up, js):
            assert r.status_code == 200, r.text
            doc = r.json()
            assert doc["labels"] == expected[p.name]["labels"]
            np.testing.assert_allclose(doc["scores"], expected[p.name]["scores"], atol=1e-5)
            assert doc["model"] == "tiny" and doc["random_weights"] and doc["timings"]["total_ms"] > 0


def test_request_labels_and_templates_equal_the_cli(served, shared_data, tmp_path):
    p = img(shared_data, "n01440764_tench")
    (tmp_path / "t.txt").write_text("a photo of a {c}.\nan origami {c}.\n")
    expected = cli_predictions([str(p), "--labels", "tench,goldfish,tabby cat", "--templates", str(tmp_path / "t.txt")])
    r = post(served, "/v1/classify", json={"image": data_url(p), "labels": ["tench", "goldfish", "tabby cat"],
                                           "templates": ["a photo of a {c}.", "an origami {c}."], "top_k": 5})
    assert r.status_code == 200, r.text
    assert r.json()["labels"] == expected[p.name]["labels"]
    np.testing.assert_allclose(r.json()["scores"], expected[p.name]["scores"], atol=1e-5)
    form = post(served, "/v1/classify", files={"image": ("x.jpg", p.read_bytes())},
                data={"labels": "tench,goldfish,tabby cat", "templates": ["a photo of a {c}.", "an origami {c}."]})
    assert form.json()["labels"] == r.json()["labels"]


def test_explanation_of_a_description_label_set(served, shared_data):
    r = post(served, "/v1/classify", json={"image": data_url(img(shared_data, "n02123045_tabby")),
                                           "label_set": "explained", "explain": True, "top_k": 2})
    assert r.status_code == 200, r.text
    exp = r.json()["explanation"]
    assert [c["label"] for c in exp] == r.json()["labels"]
    texts = {d["text"] for c in exp for d in c["descriptions"]}
    assert any("striped fur" in t or "orange scales" in t or "green fish" in t for t in texts)
    r = post(served, "/v1/classify", json={"image": data_url(img(shared_data, "n02123045_tabby")),
                                           "label_set": "animals", "explain": True})
    assert r.status_code == 400 and "description head" in r.json()["error"]["message"]


def test_api_keys(served, shared_data):
    body = {"image": data_url(img(shared_data, "n07753592_banana")), "labels": ["banana", "volcano"]}
    r = httpx2.post(served.url + "/v1/classify", json=body)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert "missing API key" in r.json()["error"]["message"]
    r = httpx2.post(served.url + "/v1/classify", json=body, headers={"Authorization": "Bearer " + "x" * 24})
    assert r.status_code == 401 and "invalid API key" in r.json()["error"]["message"]
    assert httpx2.post(served.url + "/v1/classify", json=body, headers={"X-API-Key": API_KEY}).status_code == 200
    assert httpx2.get(served.url + "/metrics").status_code == 401
    assert httpx2.get(served.url + "/healthz").json() == {"status": "ok", "detail": None}
    assert httpx2.get(served.url + "/readyz").json()["status"] == "ready"


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("kw, status, text", [
    ({"files": {"image": ("notes.txt", b"plain words, not pixels")}, "data": {"label_set": "animals"}}, 400,
     "not an image"),
    ({"json": {"image": "%%% not base64", "label_set": "animals"}}, 400, "not valid base64"),
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
    ({"content": b"image=abc", "headers": {"content-type": "text/plain"}}, 415, "unsupported content type"),
    ({"json": {"label_set": "animals"}}, 422, "image"),
    ({"json": {"image": "aGVsbG8=", "top_k": 0}}, 422, "top_k"),
    ({"json": {"image": "aGVsbG8=", "label_set": "nope"}}, 404, "no label set 'nope'"),
    ({"files": {"image": ("big.png", _png(2100, 2000))}, "data": {"label_set": "animals"}}, 400, "over the limit"),
    ({"content": b"x" * (9 * 1024 * 1024), "headers": {"content-type": "application/json"}}, 413, "over the limit"),
])
def test_bad_input_is_a_clear_4xx(served, kw, status, text):
    r = post(served, "/v1/classify", **kw)
    assert r.status_code == status, r.text
    assert text in r.json()["error"]["message"] and r.json()["error"]["request_id"]


def _chat(client, image_path=None, model="router-demo", **kw):
    content = [{"type": "text", "text": ROUTER_TEXT}]
    if image_path is not None:
        content.append({"type": "image_url", "image_url": {"url": data_url(image_path)}})
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}], **kw)


@pytest.fixture()
def client(served):
    import openai

    return openai.OpenAI(base_url=served.url + "/v1", api_key=API_KEY, max_retries=0)


def test_openai_client_is_routed_by_the_image(served, client, shared_data):
    r = _chat(client, img(shared_data, "n02123045_tabby"))
    assert r.model == "large" and r.choices[0].message.content == "B"
    sent, sent_headers = served.stub.requests[-1], served.stub.headers[-1]
    assert sent["model"] == "tiny-large" and sent["messages"][0]["content"][1]["image_url"]["url"].startswith("data:")
    assert "authorization" not in sent_headers  # no key is bound to 'large', and the client's is never passed on
    r = _chat(client, img(shared_data, "n07753592_banana"))
    assert r.model == "small" and served.stub.requests[-1]["model"] == "tiny-small"
    assert served.stub.headers[-1]["authorization"] == f"Bearer {ENDPOINT_KEY}"
    assert _chat(client, img(shared_data, "n02123045_tabby"), model="router-demo-1000").model == "small"  # lambda
    raw = client.chat.completions.with_raw_response.create(
        model="router-demo", messages=[{"role": "user", "content": [
            {"type": "text", "text": ROUTER_TEXT},
            {"type": "image_url", "image_url": {"url": data_url(img(shared_data, "n02123045_tabby"))}}]}])
    assert raw.headers["x-visroute-router"] == "demo" and raw.headers["x-visroute-model"] == "large"
    assert set(json.loads(raw.headers["x-visroute-predicted-accuracy"])) == {"small", "large"}
    sent_keys = json.dumps(served.stub.headers)
    assert API_KEY not in sent_keys and OPENAI_KEY not in sent_keys  # only the key bound to 'small' ever left


def test_openai_client_streams_through_the_proxy(served, client, shared_data):
    served.stub.script.append(("text", "the answer is B"))
    chunks = list(_chat(client, img(shared_data, "n02123045_tabby"), stream=True,
                        stream_options={"include_usage": True}))
    assert {c.model for c in chunks} == {"large"}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "the answer is B"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


def test_direct_endpoint_unknown_model_and_remote_images(served, client, shared_data):
    import openai

    assert _chat(client, model="large").model == "large"
    with pytest.raises(openai.NotFoundError, match="unknown model"):
        _chat(client, model="gpt-nope")
    msg = [{"role": "user", "content": [{"type": "text", "text": "hi"},
                                        {"type": "image_url", "image_url": {"url": served.image_host.url + "/x.jpg"}}]}]
    with pytest.raises(openai.BadRequestError, match="allow_image_urls"):
        client.chat.completions.create(model="large", messages=msg)
    msg[0]["content"][1]["image_url"]["url"] = served.image_host.url + "/allowed/tabby.jpg"
    assert client.chat.completions.create(model="router-demo", messages=msg).model == "large"  # fetched, then routed
    forwarded = served.stub.requests[-1]["messages"][0]["content"][1]["image_url"]["url"]
    assert forwarded.startswith("data:") and base64.b64decode(forwarded.split(",", 1)[1]) == \
        img(shared_data, "n02123045_tabby").read_bytes()


def test_route_endpoint_answers_with_the_routed_pipeline(served, shared_data):
    p = img(shared_data, "n02123045_tabby")
    r = post(served, "/v1/route", files={"image": (p.name, p.read_bytes())},
             data={"task": ROUTER_TEXT, "options": "dog,cat,horse"})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["chosen"] == "large" and doc["answer"] == "cat" and doc["raw_answer"] == "B"
    assert doc["predicted_accuracy"]["large"] > doc["predicted_accuracy"]["small"]
    def text(req):
        return " ".join(x["text"] for x in req["messages"][-1]["content"] if x["type"] == "text")

    # the routed request (an earlier test may have sent the identical one, whose cached answer is then reused)
    sent = [q for q in served.stub.requests if q["model"] == "tiny-large" and "horse" in text(q)][-1]
    assert sent["model"] == "tiny-large"  # the config's endpoint, not the dead URL the bundle measured
    prompt = text(sent)
    assert doc["cost"] == pytest.approx((len(prompt.split()) * 1000 + 1 * 4000) / 1e6)
    r = post(served, "/v1/route", json={"task": ROUTER_TEXT, "options": ["a"]})
    assert r.status_code == 422


def _metric(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{name}(?:{{(.*)}})? (\S+)$", line)
        if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            total += float(m.group(2))
    return total


def test_metrics_count_what_was_sent(served, client, shared_data):
    before = httpx2.get(served.url + "/metrics", headers=served.headers()).text
    for name in IMAGES:
        assert post(served, "/v1/classify", json={"image": data_url(img(shared_data, name))}).status_code == 200
    _chat(client, img(shared_data, "n07753592_banana"))
    prompt_tokens = len(ROUTER_TEXT.split())
    after = httpx2.get(served.url + "/metrics", headers=served.headers()).text

    def delta(name, **lab):
        return _metric(after, name, **lab) - _metric(before, name, **lab)

    assert delta("visroute_requests_total", path="/v1/classify", status="200") == 3
    assert delta("visroute_images_classified_total", model="tiny") == 3
    assert delta("visroute_batch_size_sum", model="tiny") == 3
    assert delta("visroute_routed_total", router="demo", model="small", endpoint="chat") == 1
    assert delta("visroute_cost_total", model="small") == pytest.approx((prompt_tokens * 1000 + 4000) / 1e6)
    assert delta("visroute_request_seconds_count", path="/v1/chat/completions") == 1


def test_request_ids_structured_logs_models_and_docs(served):
    r = httpx2.get(served.url + "/v1/models", headers={**served.headers(), "X-Request-ID": "req-abc.123"})
    assert r.headers["x-request-id"] == "req-abc.123"
    cards = {c["id"]: c for c in r.json()["data"]}
    assert cards["tiny"]["label_sets"] == ["animals", "explained"]
    assert cards["tiny"]["explainable_label_sets"] == ["explained"]
    assert cards["router-demo"]["routes_to"] == ["small", "large"] and cards["small"]["kind"] == "endpoint"
    line = None
    for _ in range(40):  # the line is written just after the response is sent
        logged = [json.loads(x) for x in served.server.log_lines() if x.startswith("{")]
        line = next((x for x in logged if x.get("request_id") == "req-abc.123"), None)
        if line:
            break
        time.sleep(0.05)
    assert line["path"] == "/v1/models" and line["status"] == 200 and line["ms"] >= 0
    spec = httpx2.get(served.url + "/openapi.json").json()
    for path, ok in (("/v1/classify", "ClassifyResponse"), ("/v1/route", "RouteResponse"),
                     ("/v1/chat/completions", "ChatCompletionResponse"), ("/v1/models", "ModelList")):
        op = next(iter(spec["paths"][path].values()))
        assert ok in json.dumps(op["responses"]["200"]) and ("requestBody" in op or path == "/v1/models")
    assert set(spec["paths"]["/v1/classify"]["post"]["requestBody"]["content"]) == {"application/json",
                                                                                    "multipart/form-data"}
    docs = httpx2.get(served.url + "/docs").text
    assets = re.findall(r'(?:src|href)="([^"]+)"', docs)
    assert assets and all(a.startswith("/") for a in assets)  # no CDN: everything from this server
    for a in assets:
        assert httpx2.get(served.url + a).status_code == 200
    page = httpx2.get(served.url + "/").text
    assert "<title>visroute</title>" in page and not re.search(r'(?:src|href)="https?://', page)
