"""A misbehaving OpenAI-compatible server and a failing response cache (issue 12, items 2 and 3).

Every fault of ``tests.fault_server`` must become a counted failure with a one-line reason, within a bounded time
and memory, and must leave nothing in the response cache: after the server recovers, the same request is sent
again and answered fresh. The cache keeps every answer already paid for when a write fails or a batch breaks.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import tracemalloc

import pytest

from tests.fault_server import FaultServer
from visroute.errors import ModelLoadError, VisrouteError
from visroute.llm import ChatRequest, ResponseCache, load_generator
from visroute.llm.cache import ResponseCacheError
from visroute.llm.client import parse_chat_completion
from visroute.llm.http import HTTPFailure

TIMEOUT = 0.8  # per attempt; a hang or a trickle must give up after about this long

# (mode, words of the reason, attempts made with max_retries=1)
FAULTS = [
    ("500", "HTTP 500: injected 500", 2),
    ("429", "HTTP 429: injected 429", 2),
    ("400", "HTTP 400: injected 400", 1),
    ("malformed", "invalid answer: not JSON", 1),
    ("truncated", "invalid answer: not JSON", 1),
    ("html", "an HTML page", 1),
    ("empty_choices", "no choices", 1),
    ("null_content", "content is null", 1),
    ("empty_content", "content is empty", 1),
    ("not_object", "expected a JSON object", 1),
    ("error_200", "model overloaded", 1),
    ("huge", "MiB refused", 1),
    ("huge_stream", "MiB refused", 1),
    ("hang", f"no complete answer within {TIMEOUT:g} s", 2),
    ("trickle", f"no complete answer within {TIMEOUT:g} s", 2),
    ("close", "closed the connection", 2),
]


def generator(srv: FaultServer, cache: ResponseCache | None, **kw):
    opts = {"timeout": TIMEOUT, "max_retries": 1, "backoff_s": 0.01, "concurrency": 1, **kw}
    return load_generator(f"openai-compatible:{srv.base_url}#m", cache=cache, **opts)


@pytest.mark.parametrize("mode, words, attempts", FAULTS, ids=[f[0] for f in FAULTS])
def test_each_server_fault_is_a_counted_one_line_failure_never_cached(tmp_path, caplog, mode, words, attempts):
    cache = ResponseCache(tmp_path / "r.sqlite")
    with FaultServer(mode) as srv:
        gen = generator(srv, cache)
        tracemalloc.start()
        t0 = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="visroute"):
            res = gen.generate([ChatRequest("describe a cat")])[0]
        elapsed = time.monotonic() - t0
        peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        assert not res.ok and res.text == "" and words in res.error, res.error
        assert "\n" not in res.error and "Traceback" not in res.error
        assert res.attempts == attempts and len(srv.requests) == attempts
        assert elapsed < attempts * TIMEOUT + 1.5, elapsed  # a total deadline, not a per-read one
        assert peak_mb < 24, peak_mb  # a 50 MB answer is refused, not held in memory
        counted = [r.getMessage() for r in caplog.records if "request(s) failed" in r.getMessage()]
        assert len(counted) == 1 and "1 of 1 request(s) failed" in counted[0]
        assert len(cache) == 0
        # the server recovers: the request is sent again and answered fresh (nothing invalid was cached)
        srv.mode = "ok"
        again = gen.generate([ChatRequest("describe a cat")])[0]
        assert again.ok and not again.cached and len(srv.requests) == attempts + 1
        assert gen.generate([ChatRequest("describe a cat")])[0].cached and len(cache) == 1


def test_nothing_listening_is_a_counted_failure(tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    gen = load_generator(f"openai-compatible:http://127.0.0.1:{port}/v1#m", cache=ResponseCache(tmp_path / "r.sqlite"),
                         timeout=TIMEOUT, max_retries=2, backoff_s=0.01)
    t0 = time.monotonic()
    res = gen.generate([ChatRequest("hi")])[0]
    assert not res.ok and "gave up after 3 attempts: cannot talk to 127.0.0.1" in res.error
    assert time.monotonic() - t0 < 3 and len(gen.cache) == 0


def test_rate_limit_then_success_is_retried_and_cached(tmp_path):
    with FaultServer("ok") as srv:
        srv.script = ["429", "500"]
        gen = generator(srv, ResponseCache(tmp_path / "r.sqlite"), max_retries=2)
        res = gen.generate([ChatRequest("a")])[0]
        assert res.ok and res.attempts == 3 and res.input_tokens == 7 and res.output_tokens == 3
        assert srv.modes_served == ["429", "500", "ok"] and len(gen.cache) == 1


def test_concurrency_is_bounded_per_endpoint_across_generators(tmp_path):
    with FaultServer("ok", delay=0.25) as srv:
        cache = ResponseCache(tmp_path / "r.sqlite")
        a = generator(srv, cache, concurrency=2)
        b = load_generator(f"openai-compatible:{srv.base_url}#other", cache=cache, timeout=5, concurrency=3)
        out: dict[str, list] = {}
        threads = [threading.Thread(target=lambda g=g, n=n: out.__setitem__(n, g.generate(
            [ChatRequest(f"{n} {i}") for i in range(6)]))) for g, n in ((a, "a"), (b, "b"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert all(r.ok for rs in out.values() for r in rs) and len(srv.requests) == 12
        assert srv.peak <= 3, srv.peak  # 2 + 3 threads, but one endpoint: at most the larger limit in flight
        assert a.limiter is b.limiter and a.limiter.peak <= 3


def test_answers_paid_for_survive_a_failure_later_in_the_batch(tmp_path):
    """Each answer is committed as it arrives: an exception mid-batch (or a kill) loses only what is in flight."""
    with FaultServer("ok") as srv:
        gen = generator(srv, ResponseCache(tmp_path / "r.sqlite"))
        real, calls = gen._one, {"n": 0}

        def breaks_on_third(req):
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt  # the user's Ctrl-C, in the middle of the batch
            return real(req)

        gen._one = breaks_on_third
        with pytest.raises(KeyboardInterrupt):
            gen.generate([ChatRequest(f"q{i}") for i in range(5)])
        assert len(ResponseCache(tmp_path / "r.sqlite")) == 2
        gen._one = real
        res = gen.generate([ChatRequest(f"q{i}") for i in range(5)])
        assert [r.cached for r in res] == [True, True, False, False, False] and len(srv.requests) == 5


def test_sqlite_full_keeps_what_was_saved_and_reports_it(tmp_path, caplog):
    with FaultServer("ok", answer=lambda p: f"- {p} " + "detail " * 300) as srv:
        cache = ResponseCache(tmp_path / "r.sqlite")
        gen = generator(srv, cache)
        gen.generate([ChatRequest("first")])
        pages = cache._conn.execute("PRAGMA page_count").fetchone()[0]
        cache._conn.execute(f"PRAGMA max_page_count = {pages + 2}")  # room for a few more answers only
        with caplog.at_level(logging.WARNING, logger="visroute"):
            res = gen.generate([ChatRequest(f"q{i}") for i in range(12)])
        assert all(r.ok for r in res)  # the run goes on with every answer it paid for
        assert cache.saved >= 2 and cache.unsaved >= 1 and cache.saved + cache.unsaved == 13
        warned = [r.getMessage() for r in caplog.records if "cannot save answers" in r.getMessage()]
        assert len(warned) == 1 and "full" in warned[0] and "\n" not in warned[0]
        assert f"{cache.unsaved} answer(s) not saved" in cache.summary()
        atexit.unregister(cache._report_unsaved)  # said here; not again when pytest exits
    assert len(ResponseCache(tmp_path / "r.sqlite")) == cache.saved  # committed answers are all there


def test_empty_answers_are_never_stored_and_old_ones_are_ignored(tmp_path):
    cache = ResponseCache(tmp_path / "r.sqlite")
    assert cache.put("k", "m", "", 1, 1, 0.1) is False and cache.put("k", "m", "  \n", 1, 1, 0.1) is False
    assert len(cache) == 0
    cache._conn.execute("INSERT INTO responses (key, model, text) VALUES ('old', 'm', '')")  # an older version's
    cache._conn.commit()
    assert cache.get("old") is None


@pytest.mark.parametrize("make", ["garbage", "directory"])
def test_an_unusable_cache_file_is_one_line_and_left_as_it_was(tmp_path, make):
    path = tmp_path / "responses.sqlite"
    if make == "garbage":
        path.write_bytes(b"this is not a database, it is a note to myself\n" * 200)
    else:
        path.mkdir()
    before = path.read_bytes() if path.is_file() else None
    with pytest.raises(ResponseCacheError) as e:
        ResponseCache(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value) and isinstance(e.value, VisrouteError)
    assert (path.read_bytes() if path.is_file() else None) == before


@pytest.mark.parametrize("body, result", [
    (b'{"choices": [{"message": {"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}}]}',
     ("ab", None, None, None)),
    (b'{"choices": [{"message": {"content": "x"}}], "usage": {"prompt_tokens": true, "completion_tokens": -1}}',
     ("x", None, None, None)),
    (b'{"choices": [{"message": {"content": 5}}]}', "not text"),
    (b'{"choices": ["x"]}', "has no message"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b"[" * 100000, "not JSON"),
])
def test_chat_completion_parsing(body, result):
    if isinstance(result, tuple):
        assert parse_chat_completion(body) == result
    else:
        with pytest.raises(HTTPFailure, match=result):
            parse_chat_completion(body)


@pytest.mark.parametrize("spec, words", [("hf:/no/such/dir", "'/no/such/dir' does not exist"),
                                         ("hf:./no/such", "does not exist")])
def test_a_missing_model_directory_is_named(spec, words):
    from visroute.models import load_model

    for load in (load_generator, load_model):
        with pytest.raises(ModelLoadError, match=words):
            load(spec)
