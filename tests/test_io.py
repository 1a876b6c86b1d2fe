"""Shared mechanisms: atomic writes, the cache root, the cache lock, logging, and the one model-spec grammar."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from visroute.errors import ModelLoadError
from visroute.io import (LockTimeout, atomic_open, atomic_write_bytes, atomic_write_json, atomic_write_npy,
                         atomic_write_npz, atomic_write_parquet, atomic_write_text, cache_root, file_lock)
from visroute.models.spec import KNOWN_MODELS, OPENAI_BASE_URL, ModelSpec, parse_model_spec

ROOT = Path(__file__).resolve().parents[1]


def _temps(directory: Path) -> list[Path]:
    return sorted(directory.glob(".tmp-*"))


# ----- atomic writes ---------------------------------------------------------------------------------------------

def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "result.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_open(target) as f:
            f.write(b'{"v": 2, "half')  # a torn write in progress ...
            assert len(_temps(tmp_path)) == 1
            raise RuntimeError("disk on fire")  # ... interrupted
    assert json.loads(target.read_text()) == {"v": 1}
    assert _temps(tmp_path) == []


def test_failed_parquet_write_leaves_no_temp(tmp_path):
    pa = pytest.importorskip("pyarrow")
    with pytest.raises(Exception):
        atomic_write_parquet(tmp_path / "records.parquet", pa.table({"a": [1]}), compression="no-such-codec")
    assert not (tmp_path / "records.parquet").exists() and _temps(tmp_path) == []


def test_writers_keep_the_on_disk_format(tmp_path):
    """Same bytes as the plain library call each replaced, so existing files and readers do not change."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    doc = {"model": "hf:x", "b": [1.5, None], "name": "café"}
    assert atomic_write_json(tmp_path / "a.json", doc, indent=2).read_bytes() == json.dumps(doc, indent=2).encode()
    assert (atomic_write_json(tmp_path / "b.json", doc, indent=1, ensure_ascii=False).read_bytes()
            == json.dumps(doc, indent=1, ensure_ascii=False).encode())
    table = pa.table({"x": [1, 2], "s": ["a", None]})
    pq.write_table(table, tmp_path / "plain.parquet")
    assert atomic_write_parquet(tmp_path / "t.parquet", table).read_bytes() == (tmp_path / "plain.parquet").read_bytes()
    with np.load(atomic_write_npz(tmp_path / "m.npz", k=np.arange(3, dtype=np.float32))) as z:
        np.testing.assert_array_equal(z["k"], np.arange(3))
    np.testing.assert_array_equal(np.load(atomic_write_npy(tmp_path / "c.npy", np.eye(2))), np.eye(2))
    assert atomic_write_text(tmp_path / "deep" / "er" / "t.txt", "é").read_text(encoding="utf-8") == "é"


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, expected):
    import pyarrow as pa

    old = os.umask(umask)
    try:
        paths = [atomic_write_bytes(tmp_path / "a.bin", b"x"), atomic_write_text(tmp_path / "b.txt", "x"),
                 atomic_write_json(tmp_path / "c.json", {}), atomic_write_parquet(tmp_path / "d.parquet", pa.table({"a": [1]})),
                 atomic_write_npz(tmp_path / "e.npz", a=np.zeros(1)), atomic_write_npy(tmp_path / "f.npy", np.zeros(1))]
    finally:
        os.umask(old)
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in paths} == {p.name: oct(expected) for p in paths}


def test_concurrent_writers_of_one_file_never_share_a_temp_file(tmp_path):
    """Eight threads rewrite one file 40 times each: every write lands whole, none fails, no temp is left."""
    target = tmp_path / "shared.bin"
    payloads = {t: bytes([t]) * 200_000 for t in range(8)}
    errors: list[BaseException] = []

    def writer(t: int) -> None:
        try:
            for _ in range(40):
                atomic_write_bytes(target, payloads[t])
        except BaseException as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert target.read_bytes() in payloads.values()
    assert _temps(tmp_path) == []


# ----- the cache lock --------------------------------------------------------------------------------------------

def test_lock_keeps_a_stale_sweep_from_deleting_a_live_temp_file(tmp_path):
    """A writes a shard slowly under the entry's lock; B, sweeping torn temp files, must wait for A."""
    lock, target = tmp_path / ".lock", tmp_path / "shard-000000.bin"
    writing = threading.Event()
    outcome: dict[str, object] = {}

    def slow_writer() -> None:
        try:
            with file_lock(lock), atomic_open(target) as f:
                f.write(b"first half ")
                writing.set()
                time.sleep(0.3)
                f.write(b"second half")
            outcome["a"] = "ok"
        except BaseException as e:  # noqa: BLE001 - asserted below
            outcome["a"] = e

    a = threading.Thread(target=slow_writer)
    a.start()
    assert writing.wait(10)
    waited = []
    with file_lock(lock, on_wait=lambda: waited.append(True)):
        for stale in tmp_path.glob(".tmp-*"):
            stale.unlink()
    a.join()
    assert outcome["a"] == "ok" and waited == [True]
    assert target.read_bytes() == b"first half second half"


def test_lock_timeout_is_a_clear_error(tmp_path):
    with file_lock(tmp_path / ".lock"):
        with pytest.raises(LockTimeout, match="held .*lock"):
            with file_lock(tmp_path / ".lock", timeout=0.1):
                pass


_COUNTER = """
import json, sys
from pathlib import Path
from visroute.io import atomic_write_json, file_lock
p = Path(sys.argv[1])
for _ in range(int(sys.argv[2])):
    with file_lock(p.with_name(".counter.lock")):
        n = json.loads(p.read_text())["n"] if p.exists() else 0
        atomic_write_json(p, {"n": n + 1})
"""


def test_two_processes_updating_one_cache_file_lose_nothing(tmp_path):
    counter, n = tmp_path / "counter.json", 60
    procs = [subprocess.Popen([sys.executable, "-c", _COUNTER, str(counter), str(n)]) for _ in range(2)]
    assert [p.wait(120) for p in procs] == [0, 0]
    assert json.loads(counter.read_text()) == {"n": 2 * n}
    assert _temps(tmp_path) == []


# ----- the cache root --------------------------------------------------------------------------------------------

def test_cache_root_honours_visroute_cache_then_xdg_then_home(tmp_path, monkeypatch):
    from visroute.features.cache import FeatureCache
    from visroute.llm.cache import ResponseCache

    monkeypatch.setenv("VISROUTE_CACHE", str(tmp_path / "vr"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "vr"
    assert FeatureCache().root == tmp_path / "vr" / "features"
    assert ResponseCache().path == tmp_path / "vr" / "responses.sqlite"
    monkeypatch.delenv("VISROUTE_CACHE")
    assert cache_root() == tmp_path / "xdg" / "visroute"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")  # the XDG spec says to ignore relative paths
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "visroute"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == tmp_path / "home" / ".cache" / "visroute"


# ----- logging ---------------------------------------------------------------------------------------------------

def test_configure_logging_levels(capsys, restore_visroute_logger):
    from visroute.log import configure_logging, get_logger

    log = get_logger("visroute.features.cache")
    configure_logging(0)
    log.info("a progress note")
    log.warning("3 images skipped")
    assert capsys.readouterr().err == "warning: 3 images skipped\n"
    configure_logging(1)
    configure_logging(1)  # twice: still one handler, one line per record
    log.info("a progress note")
    assert capsys.readouterr().err == "info: a progress note\n"
    configure_logging(-1)
    log.warning("hidden")
    log.error("shown")
    assert capsys.readouterr().err == "error: shown\n"
    configure_logging(2)
    log.debug("detail")
    assert capsys.readouterr().err == "debug: visroute.features.cache: detail\n"


def test_failed_generation_requests_are_counted_in_one_warning(restore_visroute_logger):
    """A failed request is returned, not raised, and the batch says how many failed and why."""
    from visroute.llm.base import ChatRequest, GenerationResult, Generator

    class HalfBroken(Generator):
        spec = "test:half-broken"

        def _generate_uncached(self, requests):
            return [GenerationResult("ok") if i % 2 else GenerationResult("", error="HTTP 400: bad request")
                    for i, _ in enumerate(requests)]

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    restore_visroute_logger.addHandler(handler)
    restore_visroute_logger.setLevel(logging.WARNING)
    out = HalfBroken().generate([ChatRequest(f"q{i}") for i in range(4)])
    assert [r.ok for r in out] == [False, True, False, True]
    assert [r.getMessage() for r in records] == [
        "test:half-broken: 2 of 4 request(s) failed and are recorded as errors (first: HTTP 400: bad request)"]


# ----- one model-spec grammar ------------------------------------------------------------------------------------

DOCUMENTED = [
    ("hf:openai/clip-vit-base-patch32", ModelSpec("hf", "openai/clip-vit-base-patch32"), "any"),
    ("openclip:ViT-B-32/laion2b_s34b_b79k", ModelSpec("openclip", "ViT-B-32", "laion2b_s34b_b79k"), "contrastive"),
    ("openclip:ViT-B-32//ckpt/model.pt", ModelSpec("openclip", "ViT-B-32", "/ckpt/model.pt"), "contrastive"),
    ("openclip:local-dir:/models/oc", ModelSpec("openclip", "local-dir:/models/oc"), "contrastive"),
    ("openclip:hf-hub:timm/ViT-B-16-SigLIP", ModelSpec("openclip", "hf-hub:timm/ViT-B-16-SigLIP"), "contrastive"),
    ("openai-compatible:http://127.0.0.1:8000/v1#Qwen/Qwen2.5-VL-7B-Instruct",
     ModelSpec("openai-compatible", "http://127.0.0.1:8000/v1", model="Qwen/Qwen2.5-VL-7B-Instruct"), "generator"),
    ("openai:gpt-4o-mini", ModelSpec("openai-compatible", OPENAI_BASE_URL, model="gpt-4o-mini"), "generator"),
    ("random-tiny", ModelSpec("random-tiny", "clip"), "contrastive"),
    ("random-tiny:clip", ModelSpec("random-tiny", "clip"), "contrastive"),
    ("random-tiny:siglip", ModelSpec("random-tiny", "siglip"), "contrastive"),
    ("random-tiny:llama", ModelSpec("random-tiny", "llama"), "generator"),
    ("random-tiny:llava", ModelSpec("random-tiny", "llava"), "generator"),
    ("clip-vit-b-32", ModelSpec("hf", "openai/clip-vit-base-patch32"), "any"),
    ("siglip-base-224", ModelSpec("hf", "google/siglip-base-patch16-224"), "any"),
]


@pytest.mark.parametrize("text, expected, kind", DOCUMENTED, ids=[d[0] for d in DOCUMENTED])
def test_every_documented_form_parses(text, expected, kind):
    parsed = parse_model_spec(text)
    assert parsed == expected and parsed.kind == kind
    assert parse_model_spec(parsed.text) == parsed  # the canonical text parses back to the same spec
    assert parse_model_spec(parsed) is parsed


def test_result_strings_are_unchanged():
    """Strings already written to result files and cache keys keep their exact spelling."""
    for s in ["hf:openai/clip-vit-base-patch32", "openclip:ViT-B-32/openai", "openclip:local-dir:/m",
              "random-tiny:clip", "random-tiny:llava", "openai-compatible:http://127.0.0.1:8000/v1#my-model"]:
        assert parse_model_spec(s).text == s
    assert parse_model_spec("openai:gpt-4o").text == "openai-compatible:https://api.openai.com/v1#gpt-4o"


def test_local_directories_are_detected(tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    (tmp_path / "oc").mkdir()
    (tmp_path / "oc" / "open_clip_config.json").write_text("{}")
    assert parse_model_spec(str(tmp_path / "hf")) == ModelSpec("hf", str(tmp_path / "hf"))
    assert parse_model_spec(str(tmp_path / "oc")) == ModelSpec("openclip", f"local-dir:{tmp_path / 'oc'}")


FORMS = ["hf:<hub id or directory>", "openclip:<arch>/<pretrained tag or checkpoint>", "openclip:local-dir:<directory>",
         "openclip:hf-hub:<hub id>", "openai-compatible:<base_url>#<model>", "openai:<model>",
         "random-tiny[:clip|:siglip|:llama|:llava]", "a local model directory", *KNOWN_MODELS]


@pytest.mark.parametrize("bad", ["", "   ", "nonsense-model-name", "hf:", "openclip:", "random-tiny:vit",
                                 "openai:", "openai-compatible:http://127.0.0.1:8000/v1", "openai-compatible:#m",
                                 "openai/clip-vit-base-patch32", "llm:gpt"])
def test_a_bad_spec_gets_one_line_listing_every_form(bad, tmp_path):
    with pytest.raises(ModelLoadError) as e:
        parse_model_spec(bad)
    msg = str(e.value)
    assert "\n" not in msg
    assert [f for f in FORMS if f not in msg] == []


def test_a_directory_with_no_model_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match="neither a transformers model"):
        parse_model_spec(str(tmp_path))


def test_each_loader_refuses_the_other_kind_before_loading():
    from visroute.llm import load_generator
    from visroute.models import load_model

    for spec in ["random-tiny:llama", "openai:gpt-4o-mini"]:
        with pytest.raises(ModelLoadError, match="generative model, not a contrastive"):
            load_model(spec)
    for spec in ["random-tiny", "openclip:ViT-B-32/openai"]:
        with pytest.raises(ModelLoadError, match="contrastive image-text encoder, not a generative"):
            load_generator(spec)


def test_openai_form_targets_the_official_endpoint():
    pytest.importorskip("openai")
    from visroute.llm import load_generator

    gen = load_generator("openai:gpt-4o-mini", api_key="sk-test", max_tokens=7)
    assert gen.base_url == OPENAI_BASE_URL and gen.model == "gpt-4o-mini" and gen.max_tokens == 7
    assert gen.spec == "openai-compatible:https://api.openai.com/v1#gpt-4o-mini"


def test_no_module_imports_a_private_name_or_the_old_spec_parser():
    """Shared helpers are public; the generator grammar is the model grammar."""
    import ast

    offenders = []
    for f in (ROOT / "src" / "visroute").rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("visroute"):
                offenders += [f"{f.relative_to(ROOT)}: {a.name}" for a in node.names
                              if (a.name.startswith("_") and not a.name.startswith("__"))
                              or a.name == "parse_generator_spec"]
    assert offenders == []
