"""--engine ray on a local Ray (2 CPUs) gives what the local engine gives.

- eval: the same feature shards (byte for byte, so within 1e-6), metrics, result JSON and per-sample Parquet; every
  image evaluated or skipped exactly once (checked by id), a corrupt file skipped the same way;
- an encoding actor killed with SIGKILL mid-run: Ray restarts it, the shards are the same;
- the driver killed mid-run (a second driver joined to the same cluster): the next run resumes from its shards;
- a grid with contrastive, VLM and VLM+LLM cells against an OpenAI-compatible stub: the same records row for row
  (``latency_s`` is a measurement and is left out), at most ``--endpoint-concurrency`` requests in flight to the
  endpoint, a lost records file re-run alone; a call whose worker dies is retried;
- describe through Ray writes the same description set;
- without the ``ray`` extra: one line naming ``visroute[ray]``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from tests.openai_stub import StubServer
from tests.test_tasks import SQA_ROWS
from visroute.cli import app

ray = pytest.importorskip("ray", reason="the ray extra (visroute[ray]) is not installed")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


MODELS = {}


def _cache(monkeypatch, tmp_path: Path, name: str) -> Path:
    """A fresh VISROUTE_CACHE (no features) whose random-tiny models are the session's, built once."""
    if "dir" not in MODELS:
        MODELS["dir"] = Path(os.environ["VISROUTE_CACHE"]) / "models"
        MODELS["dir"].mkdir(parents=True, exist_ok=True)
    root = tmp_path / f"cache-{name}"
    root.mkdir()
    (root / "models").symlink_to(MODELS["dir"], target_is_directory=True)
    monkeypatch.setenv("VISROUTE_CACHE", str(root))
    return root


def _manifest(tmp_path: Path, shared_data: Path, n: int) -> Path:
    """A CSV manifest of ``n`` CIFAR-10 test JPEGs spread over the classes, plus one corrupt file."""
    root = shared_data / "cifar10-test"
    classes = sorted(p.name for p in root.iterdir())
    lines = ["path,label"]
    for i in range(n):
        c = classes[i % len(classes)]
        lines.append(f"{root / c / f'{i // len(classes):04d}.jpg'},{c}")
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    lines.insert(n // 2, f"{bad},{classes[0]}")
    (tmp_path / "data.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "data.csv"


def _shards(cache: Path) -> dict[str, bytes]:
    return {f"{p.parent.name}/{p.name}": p.read_bytes() for p in sorted(cache.glob("features/*/shard-*.safetensors"))}


def _eval(runner, monkeypatch, tmp_path, csv, name, *extra):
    _cache(monkeypatch, tmp_path, name)
    r = runner.invoke(app, ["eval", "-m", "random-tiny", "-d", str(csv), "--output", str(tmp_path / name),
                            "--batch-size", "16", "--shard-size", "40", "--no-progress", *extra])
    assert r.exit_code == 1, r.output  # 1: the corrupt file was skipped
    (doc_path,) = (tmp_path / name).glob("*.json")
    return json.loads(doc_path.read_text()), pq.read_table(doc_path.with_suffix(".parquet")).to_pandas()


def test_eval_on_ray_equals_local(tmp_path, shared_data, monkeypatch):
    csv = _manifest(tmp_path, shared_data, 100)
    runner = CliRunner()
    local, local_rows = _eval(runner, monkeypatch, tmp_path, csv, "local")
    remote, remote_rows = _eval(runner, monkeypatch, tmp_path, csv, "ray", "--engine", "ray", "--actors", "2")

    a, b = _shards(tmp_path / "cache-local"), _shards(tmp_path / "cache-ray")
    assert list(a) == list(b) and len(a) == 3  # 101 items in shards of 40
    from safetensors.numpy import load

    for k in a:
        x, y = load(a[k]), load(b[k])
        assert np.array_equal(x["indices"], y["indices"])
        assert np.abs(x["embeddings"] - y["embeddings"]).max(initial=0.0) <= 1e-6
    assert a == b  # in fact byte for byte here: the same batches, the same forward passes

    assert remote["metrics"] == local["metrics"]
    skip = lambda d: {k: v for k, v in d["visroute"].items() if k not in ("wall_time_s", "feature_time_s",  # noqa: E731
                                                                           "seconds_per_image", "images_per_s")}
    assert skip(remote) == skip(local)
    assert remote["visroute"]["n_evaluated"] == 100 and remote["visroute"]["n_skipped"] == 1
    assert remote["visroute"]["skipped"][0]["id"].endswith("broken.jpg")
    measured = ["latency_s", "cost"]  # seconds per image, and a price per second of it
    assert remote_rows.drop(columns=measured).equals(local_rows.drop(columns=measured))
    ids = remote_rows["image_id"].tolist()
    assert len(set(ids)) == len(ids) == 100 and not any(i.endswith("broken.jpg") for i in ids)


def _ray_workers(name: str) -> list:
    import psutil

    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if name in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:
            pass
    return out


def test_actor_killed_mid_run_gives_the_same_features(tmp_path, shared_data, monkeypatch):
    from visroute.data.datasets import load_dataset
    from visroute.engine import make_engine
    from visroute.features.cache import FeatureCache
    from visroute.models import load_model

    _cache(monkeypatch, tmp_path, "run")
    ds = load_dataset(str(_manifest(tmp_path, shared_data, 96)))
    model = load_model("random-tiny", device="cpu")
    local = FeatureCache(tmp_path / "local").encode(model, ds, shard_size=8, batch_size=4, num_workers=0)

    root = tmp_path / "ray"
    killed: list = []

    def kill_one_actor_after_the_first_shard():
        deadline = time.time() + 60
        while time.time() < deadline and not list(root.glob("*/shard-*.safetensors")):
            time.sleep(0.005)
        actors = _ray_workers("MapWorker")
        if actors:
            os.kill(actors[0].pid, signal.SIGKILL)
            killed.append((actors[0].pid, len(list(root.glob("*/shard-*.safetensors")))))

    t = threading.Thread(target=kill_one_actor_after_the_first_shard)
    t.start()
    fs = make_engine("ray", actors=2).feature_cache(root).encode(model, ds, shard_size=8, batch_size=4)
    t.join()
    assert killed and killed[0][1] < fs.n_shards, "the actor was not killed while shards were still missing"
    assert fs.images_encoded == len(ds) - 1 and len(fs.skipped) == 1 and fs.shards_reused == 0
    for k in range(fs.n_shards):
        assert fs.shard_path(k).read_bytes() == local.shard_path(k).read_bytes()
    idx = fs.load()[0]
    assert sorted(idx.tolist() + [s.index for s in fs.skipped]) == list(range(len(ds)))


DRIVER = """
import sys, ray
from visroute.data.datasets import load_dataset
from visroute.engine import make_engine
from visroute.models import load_model
ray.init(address=sys.argv[1], log_to_driver=False)
model, ds = load_model("random-tiny", device="cpu"), load_dataset(sys.argv[2])
make_engine("ray", actors=1).feature_cache(sys.argv[3]).encode(model, ds, shard_size=8, batch_size=4)
"""


def test_driver_lost_mid_run_resumes_from_its_shards(tmp_path, shared_data, monkeypatch):
    from visroute.data.datasets import load_dataset
    from visroute.engine import make_engine
    from visroute.features.cache import FeatureCache
    from visroute.models import load_model

    _cache(monkeypatch, tmp_path, "run")
    csv = _manifest(tmp_path, shared_data, 80)
    ds, model = load_dataset(str(csv)), load_model("random-tiny", device="cpu")
    root = tmp_path / "ray"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, ray.get_runtime_context().gcs_address, str(csv), str(root)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 90
    while time.time() < deadline and len(list(root.glob("*/shard-*.safetensors"))) < 2 and driver.poll() is None:
        time.sleep(0.005)
    driver.kill()
    driver.wait()
    done = len(list(root.glob("*/shard-*.safetensors")))
    fs = make_engine("ray", actors=2).feature_cache(root).encode(model, ds, shard_size=8, batch_size=4)
    assert 2 <= done < fs.n_shards and fs.shards_reused == done
    local = FeatureCache(tmp_path / "local").encode(model, ds, shard_size=8, batch_size=4, num_workers=0)
    for k in range(fs.n_shards):
        assert fs.shard_path(k).read_bytes() == local.shard_path(k).read_bytes()


class CountingStub(StubServer):
    """The stub server, also counting requests in flight (each answer takes 20 ms)."""

    def __init__(self):
        self.in_flight = self.peak = 0
        self._count = threading.Lock()

        def answer(prompt: str) -> str:
            with self._count:
                self.in_flight += 1
                self.peak = max(self.peak, self.in_flight)
            time.sleep(0.02)
            with self._count:
                self.in_flight -= 1
            return "Answer: A" if "Answer" in prompt or "letter" in prompt else "a photo of something round"

        super().__init__(default=answer)


def _grid(runner, monkeypatch, tmp_path, grid_file, name, *extra):
    if not (tmp_path / f"cache-{name}").is_dir():
        _cache(monkeypatch, tmp_path, name)
    monkeypatch.setenv("VISROUTE_CACHE", str(tmp_path / f"cache-{name}"))
    r = runner.invoke(app, ["grid", "run", str(grid_file), "--no-progress", *extra])
    assert r.exit_code == 0, r.output
    return r


def test_grid_on_ray_equals_local_and_keeps_the_endpoint_limit(tmp_path, shared_data, monkeypatch):
    csv = _manifest(tmp_path, shared_data, 40)
    tasks = tmp_path / "sqa.jsonl"
    tasks.write_text("\n".join(json.dumps({"id": f"q{i}", "image": str(shared_data / "imagenet-sample" / f"{img}.JPEG"),
                                           "question": q, "choices": c, "answer": a, "context": ctx})
                               for i, (img, q, c, a, ctx) in enumerate(SQA_ROWS)))
    (tmp_path / "prices.json").write_text(json.dumps({"*": {"input_per_mtok": 2.0, "output_per_mtok": 8.0,
                                                            "per_image": 0.001, "per_second": 0.0}}))
    runner = CliRunner()
    with CountingStub() as stub:
        monkeypatch.setenv("VISROUTE_ALLOW_ENDPOINTS", stub.base_url)
        url = stub.base_url
        for name in ("local", "ray"):
            (tmp_path / f"{name}.yaml").write_text(f"""
output: {tmp_path / name}
prices: prices.json
max_tokens: 6
device: cpu
datasets:
  - {{spec: "{csv}", name: cifar}}
  - {{spec: {tasks}, name: sqa}}
models:
  - {{name: clip, head: zeroshot, model: random-tiny}}
  - {{name: clip-options, head: clip-options, model: "random-tiny:siglip"}}
  - {{name: vlm, head: vlm, vlm: "openai-compatible:{url}#vlm-x", prompts: [mcq, mcq-text]}}
  - {{name: pipe, head: vlm+llm, vlm: "openai-compatible:{url}#vlm-x", llm: "openai-compatible:{url}#llm-y"}}
""" + ("engine: {name: ray, actors: 2}\n" if name == "ray" else ""))
        _grid(runner, monkeypatch, tmp_path, tmp_path / "local.yaml", "local")
        stub.peak = 0
        _grid(runner, monkeypatch, tmp_path, tmp_path / "ray.yaml", "ray", "--endpoint-concurrency", "2")
        assert 1 <= stub.peak <= 2, f"{stub.peak} requests in flight to one endpoint, limit 2"

        local = pq.read_table(tmp_path / "local" / "records.parquet").to_pandas()
        remote = pq.read_table(tmp_path / "ray" / "records.parquet").to_pandas()
        assert len(local) > 5 * len(SQA_ROWS) and set(local["model"]) == {"clip", "clip-options", "vlm", "pipe"}
        assert remote.drop(columns=["latency_s"]).equals(local.drop(columns=["latency_s"]))
        for model, group in remote.groupby(["dataset", "model", "prompt_variant"]):
            assert group["task_id"].is_unique, f"{model}: a task recorded twice"

        # a stopped run: the records of one cell are lost; only that cell runs again, and the result is the same
        lost = sorted((tmp_path / "ray" / "records").glob("sqa__vlm__*.parquet"))[0]
        lost.unlink()
        r = _grid(runner, monkeypatch, tmp_path, tmp_path / "ray.yaml", "ray")
        assert r.stderr.count("grid:") == 1 and lost.is_file()
        again = pq.read_table(tmp_path / "ray" / "records.parquet").to_pandas()
        assert again.drop(columns=["latency_s"]).equals(local.drop(columns=["latency_s"]))


def _die_once(item, concurrency):
    """A call whose first attempt loses its worker (SIGKILL), as a crashed node would."""
    marker = Path(item)
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return f"done {marker.name} with {concurrency}"


def test_a_call_whose_worker_dies_is_retried(tmp_path):
    from ray import cloudpickle

    from visroute.engine import make_engine

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    items = [str(tmp_path / f"m{i}") for i in range(3)]
    out = dict(make_engine("ray", endpoint_concurrency=4, concurrency=2).map_calls(_die_once, items))
    assert out == {i: f"done {Path(i).name} with 2" for i in items}


def test_describe_on_ray_writes_the_same_descriptions(tmp_path, monkeypatch):
    (tmp_path / "classes.txt").write_text("\n".join(f"class {i}" for i in range(12)) + "\n")
    runner = CliRunner()
    with StubServer(default=lambda prompt: f"- {prompt.split('recognise a ')[-1][:12]} shape\n- fur") as stub:
        llm = f"openai-compatible:{stub.base_url}#llm-y"
        outs = []
        for name, extra in (("local", []), ("ray", ["--engine", "ray", "--endpoint-concurrency", "4", "--concurrency", "2"])):
            monkeypatch.setenv("VISROUTE_CACHE", str(tmp_path / f"cache-{name}"))
            out = tmp_path / f"{name}.json"
            r = runner.invoke(app, ["describe", "--classes", str(tmp_path / "classes.txt"), "--llm", llm,
                                    "--output", str(out), "--no-progress", *extra])
            assert r.exit_code == 0, r.output
            doc = json.loads(out.read_text())
            assert doc["provenance"].pop("date")
            outs.append(doc)
        assert outs[0] == outs[1] and len(stub.requests) == 24


def test_missing_ray_extra_is_one_line(tmp_path, monkeypatch, shared_data):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    r = CliRunner().invoke(app, ["eval", "-m", "random-tiny", "-d", str(shared_data / "cifar10-test"),
                                 "--engine", "ray", "--output", str(tmp_path)])
    assert r.exit_code == 2
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "pip install 'visroute[ray]'" in lines[0] and "Traceback" not in r.output


def test_engine_options_in_a_grid_file_are_checked_by_name():
    from visroute.engine import EngineOptions
    from visroute.errors import VisrouteError

    opts = EngineOptions.from_dict({"name": "ray", "actors": 4, "num_gpus": 0.25, "endpoint_concurrency": 16})
    assert (opts.engine, opts.actors, opts.num_gpus, opts.endpoint_concurrency) == ("ray", 4, 0.25, 16)
    assert EngineOptions.from_dict("local").engine == "local"
    with pytest.raises(VisrouteError, match=r"unknown key 'actor' \(did you mean 'actors'\?\)"):
        EngineOptions.from_dict({"name": "ray", "actor": 2})
    with pytest.raises(VisrouteError, match="unknown engine 'spark'"):
        EngineOptions.from_dict("spark")
    with pytest.raises(VisrouteError, match="'num_gpus' must be a number >= 0"):
        EngineOptions.from_dict({"name": "ray", "num_gpus": -1})


def test_a_worker_that_loads_other_weights_fails_in_one_line(tmp_path, shared_data, monkeypatch):
    from visroute.engine import make_engine
    from visroute.engine.ray import EngineError
    from visroute.models import load_model

    _cache(monkeypatch, tmp_path, "run")
    model = load_model("random-tiny", device="cpu")
    model._weights_fp = "0123456789abcdef"  # as if the driver's files differed from the worker's
    files = sorted((shared_data / "cifar10-test" / "cat").glob("*.jpg"))[:4]
    with pytest.raises(EngineError) as err:
        list(make_engine("ray", actors=1).map_images(model, files, 2))
    message = str(err.value)
    assert "\n" not in message and "differing from the driver's 0123456789abcdef" in message
