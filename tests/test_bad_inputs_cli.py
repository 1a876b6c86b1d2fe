"""Bad inputs and faults through the installed ``visroute`` command (issue 12, items 3, 4 and 5).

Each CLI case runs ``visroute`` as a real child process with a deadline (a hang fails the test instead of stalling
it) and asserts the exit code, one ``error:`` line (never a traceback), and that earlier results and caches are
intact. Also: feature shards that are truncated, corrupted or swapped; kill -9 in the middle of ``describe`` and
an identical resume; two ``visroute eval`` on one cache at once; a disk that fills up; no network.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.fault_server import FaultServer
from visroute.errors import VisrouteError

VISROUTE = str(Path(sys.executable).parent / "visroute")


def run_cli(args: list[str], tmp_path: Path, timeout: float = 120, preexec=None, **env) -> subprocess.CompletedProcess:
    """``visroute ARGS`` in a child with its own cache; killed (and the test failed) if it outlives ``timeout``."""
    full = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "VISROUTE_CACHE": str(tmp_path / "cache"), **env}
    full = {k: v for k, v in full.items() if v is not None}
    p = subprocess.Popen([VISROUTE, *args], cwd=tmp_path, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True, preexec_fn=preexec)
    t0 = time.monotonic()
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        pytest.fail(f"visroute {' '.join(args)} did not finish within {timeout}s")
    res = subprocess.CompletedProcess(args, p.returncode, out, err)
    res.elapsed = time.monotonic() - t0
    return res


def one_error_line(res: subprocess.CompletedProcess, *needles: str) -> str:
    assert "Traceback" not in res.stderr, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.stderr
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


def class_of(prompt: str) -> str:
    return prompt.split("recognise a ")[1].split(" in a")[0] if "recognise a " in prompt else "?"


def answer(prompt: str) -> str:
    c = class_of(prompt)
    return f"- {c} outline\n- {c} colour pattern"


@pytest.fixture()
def folder(tmp_path) -> Path:
    """An image folder: 2 classes x 6 small PNGs."""
    root = tmp_path / "imgs"
    for k, cls in enumerate(["cat", "dog"]):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (24, 20), (40 * i, 120 * k, 200 - 30 * i)).save(root / cls / f"{i}.png")
    return root


# ---------------------------------------------------------------- describe against a misbehaving server

FAULT_BY_CLASS = {"dog": "null_content", "fox": "html", "owl": "trickle", "emu": "500", "yak": "huge",
                  "elk": "empty_choices", "gnu": "malformed"}
REASON = {"dog": "content is null", "fox": "an HTML page", "owl": "no complete answer within 1 s",
          "emu": "gave up after 2 attempts: HTTP 500", "yak": "MiB refused", "elk": "no choices", "gnu": "not JSON"}


def describe_args(srv: FaultServer, classes: Path, out: Path, *extra: str) -> list[str]:
    return ["describe", "--classes", str(classes), "--llm", f"openai-compatible:{srv.base_url}#m", "--output", str(out),
            "--no-progress", "--timeout", "1", "--retries", "1", *extra]


def test_describe_counts_every_server_fault_and_caches_only_good_answers(tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\n" + "\n".join(FAULT_BY_CLASS) + "\n")
    out = tmp_path / "desc.json"
    with FaultServer(answer=answer, mode_for=lambda p: FAULT_BY_CLASS.get(class_of(p))) as srv:
        res = run_cli(describe_args(srv, classes, out, "--concurrency", "8"), tmp_path, timeout=60)
        assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
        failed = {line.split(": ")[1]: line for line in res.stderr.splitlines() if line.startswith("failed: ")}
        assert set(failed) == set(FAULT_BY_CLASS)
        for cls, words in REASON.items():
            assert words in failed[cls], failed[cls]
        assert out.is_file() and not Path(f"{out}.json").exists()  # the path as given, no doubled extension
        doc = json.loads(out.read_text())
        assert doc["classes"][0] == {"name": "cat", "descriptions": ["cat outline", "cat colour pattern"]}
        assert doc["provenance"]["report"]["n_failed"] == len(FAULT_BY_CLASS)
        # the server recovers: only the faulty requests are sent again; the good one comes from the cache
        srv.mode_for = None
        n = len(srv.requests)
        res = run_cli(describe_args(srv, classes, out), tmp_path, timeout=60)
        assert res.returncode == 0, res.stderr
        assert len(srv.requests) - n == len(FAULT_BY_CLASS) and "(1 cached)" in res.stderr


def test_describe_where_every_request_fails_keeps_the_earlier_file(tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\n")
    out = tmp_path / "desc.json"
    out.write_text('{"cat": ["earlier work"], "dog": ["kept"]}')
    before = out.read_bytes()
    with FaultServer("500") as srv:
        res = run_cli(describe_args(srv, classes, out), tmp_path, timeout=60)
    assert res.returncode == 2
    one_error_line(res, "all 2 request(s)", "HTTP 500", f"{out} not written")
    assert out.read_bytes() == before and not list(tmp_path.glob(".tmp-*"))


def test_describe_with_a_damaged_response_cache_is_one_line(tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\n")
    db = tmp_path / "cache" / "responses.sqlite"
    db.parent.mkdir()
    db.write_bytes(b"\x00garbage" * 1000)
    with FaultServer() as srv:
        res = run_cli(describe_args(srv, classes, tmp_path / "d.json"), tmp_path)
        assert srv.requests == []
    assert res.returncode == 2
    one_error_line(res, str(db), "not a usable SQLite database", "move it away")
    assert db.read_bytes() == b"\x00garbage" * 1000


def test_describe_on_a_full_disk_keeps_the_answers_saved_and_says_how_many(tmp_path):
    """RLIMIT_FSIZE in the child: every write past 40 kB fails with EFBIG, as on a full disk."""
    from visroute.llm import ResponseCache

    ResponseCache(tmp_path / "cache" / "responses.sqlite").close()
    classes = tmp_path / "classes.txt"
    classes.write_text("".join(f"class{i}\n" for i in range(12)))

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))

    big = lambda p: "".join(f"- {class_of(p)} detail {i}\n" for i in range(60))  # noqa: E731  (~1.3 kB an answer)
    with FaultServer(answer=big) as srv:
        res = run_cli(describe_args(srv, classes, tmp_path / "d.json", "--concurrency", "1"), tmp_path,
                      preexec=small_disk, timeout=60)
        assert "Traceback" not in res.stderr, res.stderr
        assert res.returncode in (0, 1) and (tmp_path / "d.json").is_file()
        summary = re.search(r"(\d+) answer\(s\) not saved \(.*\); (\d+) saved by this run", res.stderr)
        assert summary, res.stderr
        unsaved, saved = int(summary.group(1)), int(summary.group(2))
        assert saved >= 1 and unsaved >= 1 and saved + unsaved == 12, summary
        n = len(srv.requests)
        res = run_cli(describe_args(srv, classes, tmp_path / "d2.json"), tmp_path, timeout=60)
        assert res.returncode == 0 and f"({saved} cached)" in res.stderr, res.stderr
        assert len(srv.requests) - n == unsaved  # what was saved is never paid for twice


def test_describe_to_an_unwritable_output_is_one_line_and_the_answers_stay_cached(tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\n")
    (tmp_path / "file").write_text("a file, not a directory")
    with FaultServer(answer=answer) as srv:
        res = run_cli(describe_args(srv, classes, tmp_path / "file" / "d.json"), tmp_path)
        assert res.returncode == 2
        one_error_line(res, "cannot write", "the answers are cached, so a re-run costs no requests")
        res = run_cli(describe_args(srv, classes, tmp_path / "d.json"), tmp_path)
        assert res.returncode == 0 and "(1 cached)" in res.stderr and len(srv.requests) == 1


def test_kill_9_mid_describe_resumes_identically(tmp_path):
    classes = tmp_path / "classes.txt"
    names = [f"bird{i}" for i in range(14)]
    classes.write_text("\n".join(names) + "\n")
    with FaultServer(answer=answer, delay=0.25) as srv:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "VISROUTE_CACHE": str(tmp_path / "cache")}
        p = subprocess.Popen([VISROUTE, *describe_args(srv, classes, tmp_path / "d.json", "--concurrency", "1")],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while len(srv.requests) < 5 and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.05)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        assert p.returncode == -signal.SIGKILL and not (tmp_path / "d.json").exists()
        paid = len(srv.requests)
        srv.delay = 0
        res = run_cli(describe_args(srv, classes, tmp_path / "d.json"), tmp_path, timeout=60)
        assert res.returncode == 0, res.stderr
        report = json.loads((tmp_path / "d.json").read_text())["provenance"]["report"]
        assert report["cached"] >= paid - 1  # at most the request in flight at the kill is lost
        assert report["cached"] + (len(srv.requests) - paid) == len(names)
        fresh = tmp_path / "fresh"
        fresh.mkdir()
        ref = run_cli(describe_args(srv, classes, fresh / "d.json"), fresh, timeout=60)
        assert ref.returncode == 0, ref.stderr
    resumed = json.loads((tmp_path / "d.json").read_text())["classes"]
    assert resumed == json.loads((fresh / "d.json").read_text())["classes"]
    assert resumed[3] == {"name": "bird3", "descriptions": ["bird3 outline", "bird3 colour pattern"]}


# ---------------------------------------------------------------- eval: two runs on one cache

def test_two_evals_on_one_cache_at_once(tmp_path, folder):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "VISROUTE_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([VISROUTE, "eval", "-d", str(folder), "-m", "random-tiny", "--output",
                               str(tmp_path / f"out{k}"), "--no-progress", "--workers", "0", "--shard-size", "4"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True) for k in range(2)]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=180))
        except subprocess.TimeoutExpired:
            for q in procs:
                os.killpg(q.pid, signal.SIGKILL)
            pytest.fail("concurrent evals did not finish")
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0 and "Traceback" not in err, err
    docs = [json.loads(next((tmp_path / f"out{k}").glob("*.json")).read_text()) for k in range(2)]
    assert docs[0]["metrics"] == docs[1]["metrics"]
    fc = [d["visroute"]["feature_cache"] for d in docs]
    assert fc[0]["key"] == fc[1]["key"] and fc[0]["images_encoded"] + fc[1]["images_encoded"] == 12  # encoded once
    entry = tmp_path / "cache" / "features" / fc[0]["key"]
    assert not list(entry.glob(".tmp-*")) and len(json.loads((entry / "meta.json").read_text())["shards"]) == 3


# ---------------------------------------------------------------- feature shards: size and checksum

@pytest.fixture(scope="module")
def tiny():
    from visroute.models import load_model

    return load_model("random-tiny", device="cpu")


def damage(entry: Path, how: str) -> None:
    s1, s2 = entry / "shard-000001.safetensors", entry / "shard-000002.safetensors"
    if how == "truncated":
        s1.write_bytes(s1.read_bytes()[:-40])
    elif how == "corrupted":  # same size, one byte different
        data = bytearray(s1.read_bytes())
        data[-5] ^= 0xFF
        s1.write_bytes(bytes(data))
    elif how == "swapped":  # a whole, valid shard, but another one's
        a, b = s1.read_bytes(), s2.read_bytes()
        s1.write_bytes(b)
        s2.write_bytes(a)
    elif how == "garbage":
        s1.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")


@pytest.mark.parametrize("how, n_damaged", [("truncated", 1), ("corrupted", 1), ("swapped", 2), ("garbage", 1)])
def test_a_damaged_shard_is_detected_listed_recomputed_and_reported(tmp_path, folder, tiny, caplog, how, n_damaged):
    import logging

    import torch

    from visroute.data.datasets import load_dataset
    from visroute.features.cache import FeatureCache

    cache = FeatureCache(tmp_path / "cache" / "features")
    ds = load_dataset(str(folder))
    first = cache.encode(tiny, ds, shard_size=4, num_workers=0)
    idx0, emb0 = first.load()
    damage(first.directory, how)
    listed = run_cli(["cache", "ls"], tmp_path, timeout=60)
    assert listed.returncode == 0 and "damaged (shard-000001.safetensors" in listed.stdout, listed.stdout
    assert "complete" not in listed.stdout.split(first.key)[1].splitlines()[0]
    with caplog.at_level(logging.WARNING, logger="visroute"):
        again = cache.encode(tiny, ds, shard_size=4, num_workers=0)
    assert again.shards_damaged == n_damaged and again.images_encoded == 4 * n_damaged
    warned = [r.getMessage() for r in caplog.records if "damaged shard(s) recomputed" in r.getMessage()]
    assert len(warned) == 1 and f"{n_damaged} damaged" in warned[0]
    idx1, emb1 = again.load()
    assert (idx0 == idx1).all() and torch.equal(emb0, emb1)
    assert [e["complete"] for e in cache.entries()] == [True] and cache.entries()[0]["damaged"] == []


def test_shards_without_records_are_adopted_and_a_change_after_the_check_is_caught(tmp_path, folder, tiny):
    from visroute.data.datasets import load_dataset
    from visroute.features.cache import FeatureCache, FeatureCacheDamaged

    cache = FeatureCache(tmp_path / "features")
    ds = load_dataset(str(folder))
    fs = cache.encode(tiny, ds, shard_size=4, num_workers=0)
    meta = json.loads((fs.directory / "meta.json").read_text())
    records = meta.pop("shards")
    (fs.directory / "meta.json").write_text(json.dumps(meta))  # as a cache written before records existed
    again = cache.encode(tiny, ds, shard_size=4, num_workers=0)
    assert again.images_encoded == 0 and again.shards_damaged == 0
    assert json.loads((fs.directory / "meta.json").read_text())["shards"] == records
    damage(fs.directory, "corrupted")  # after the check, before the read
    with pytest.raises(FeatureCacheDamaged, match="changed after it was checked"):
        again.load()
    (fs.directory / "meta.json").write_text("{torn")
    rebuilt = cache.encode(tiny, ds, shard_size=4, num_workers=0)
    assert rebuilt.images_encoded == 12 and rebuilt.load()[1].shape[0] == 12


def test_cache_clear_leaves_an_entry_another_process_is_writing(tmp_path):
    from visroute.features.cache import FeatureCache
    from visroute.io import file_lock

    cache = FeatureCache(tmp_path / "features")
    for key in ("busy", "idle"):
        (cache.root / key).mkdir(parents=True)
        (cache.root / key / ".tmp-shard-000000.safetensors-x").write_bytes(b"partial")
    with file_lock(cache.root / "busy" / ".lock"):
        assert cache.clear() == 1
    assert (cache.root / "busy" / ".tmp-shard-000000.safetensors-x").exists() and not (cache.root / "idle").exists()


# ---------------------------------------------------------------- models: missing directories, no network

def test_classify_with_a_missing_model_directory_says_so(tmp_path, folder):
    res = run_cli(["classify", str(folder / "cat" / "0.png"), "--labels", "cat,dog", "-m", "hf:/no/such/dir"],
                  tmp_path)
    assert res.returncode == 2
    one_error_line(res, "the model directory '/no/such/dir' does not exist")


def test_a_hub_model_without_network_fails_fast_saying_what_to_do(tmp_path, folder):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # the "hub" refuses connections, as with no network
    res = run_cli(["classify", str(folder / "cat" / "0.png"), "--labels", "cat,dog", "-m", "hf:openai/clip-vit-base-patch32"],
                  tmp_path, HF_HUB_OFFLINE=None, HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HOME=str(tmp_path / "hf"))
    assert res.returncode == 2
    one_error_line(res, "cannot reach", "HF_HUB_OFFLINE=1", "local directory")
    assert "Retrying" not in res.stderr and "Traceback" not in res.stderr


def test_the_no_network_check_takes_about_a_second(monkeypatch):
    """The same refusal in-process, timed without the imports: no network costs ~1 s, not ~25 s of retries."""
    from huggingface_hub import constants

    import visroute.models.hf as hf
    from visroute.errors import ModelLoadError

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(hf, "_hub_state", {})
    t0 = time.monotonic()
    with pytest.raises(ModelLoadError, match="cannot reach .* HF_HUB_OFFLINE=1"):
        hf.check_hf_location("someone/some-model-not-cached")
    assert time.monotonic() - t0 < hf.HUB_PROBE_S + 1 and constants.HF_HUB_OFFLINE  # offline from now on


# ---------------------------------------------------------------- explain, grid files

def test_explain_with_no_readable_image_writes_no_page_and_keeps_the_old_one(tmp_path, folder):
    desc = tmp_path / "d.json"
    desc.write_text('{"cat": ["whiskers"], "dog": ["floppy ears"]}')
    page = tmp_path / "explain.html"
    page.write_text("<html>earlier page</html>")
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    res = run_cli(["explain", str(bad), str(tmp_path), "--descriptions", str(desc), "--html", str(page),
                   "--device", "cpu"], tmp_path)
    assert res.returncode == 2
    one_error_line(res, "none of the 2 image(s) could be explained", "not written")
    assert page.read_text() == "<html>earlier page</html>" and not list(tmp_path.glob(".tmp-*"))


def test_explain_in_process_leaves_no_page_behind(tmp_path):
    from visroute.descriptions.explain import explain_images

    desc = tmp_path / "d.json"
    desc.write_text('{"cat": ["whiskers"], "dog": ["floppy ears"]}')
    with pytest.raises(VisrouteError, match="could be explained"):
        explain_images([tmp_path / "missing.png"], str(desc), html_out=tmp_path / "new.html", device="cpu")
    assert not (tmp_path / "new.html").exists()


GRIDS = [
    ("syntax.yaml", "datasets: [a, b\nmodels:\n  - name: x\n", "not valid YAML at line 2", ""),
    ("tabs.yaml", "datasets:\n\t- a\n", "not valid YAML at line 2", "column 1"),
    ("notlist.yaml", "datasets: cifar\nmodels: [{name: a, head: zeroshot}]\n", "'datasets' must be a list", "str"),
    ("nospec.yaml", "datasets: [{path: x}]\nmodels: [{name: a, head: zeroshot}]\n", "datasets[0] must be", "'spec'"),
    ("latin1.yaml", "datasets: [caf\xe9]\n", "is not UTF-8 text", "offset"),
]


@pytest.mark.parametrize("name, text, words, more", GRIDS, ids=[g[0] for g in GRIDS])
def test_malformed_grid_files_name_the_file_and_the_line(tmp_path, name, text, words, more):
    from visroute.router.data.grid import GridSpec

    path = tmp_path / name
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(VisrouteError) as e:
        GridSpec.load(path)
    msg = str(e.value)
    assert str(path) in msg and words in msg and more in msg and "\n" not in msg, msg


def test_cli_grid_with_a_yaml_error_is_one_line(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("datasets:\n  - a\nmodels: [{name: x, head: zeroshot}\n")
    res = run_cli(["grid", "run", str(path)], tmp_path)
    assert res.returncode == 2
    one_error_line(res, str(path), "not valid YAML at line")
