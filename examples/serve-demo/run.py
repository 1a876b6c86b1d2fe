"""The serving quick-start in one command: a tiny OpenAI-compatible upstream on 127.0.0.1:8001 (two random-weight
LLaVA models, ``small`` and ``large``, served by visroute's loopback chat server) and ``visroute serve --config
examples/serve-demo/serve.yaml`` on 127.0.0.1:8000 in front of it. Offline; Ctrl-C (or SIGTERM) stops both.

Extra arguments go to ``visroute serve`` (e.g. ``--port 8010``, ``--workers 2``, ``--api-keys-file keys.txt``);
without a key option the service runs ``--open`` on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
UPSTREAM_PORT = int(os.environ.get("VISROUTE_DEMO_UPSTREAM_PORT", "8001"))


def main(argv: list[str]) -> int:
    from visroute.reproduce.server import LocalServer

    keyed = any(a.startswith("--api-keys-file") for a in argv) or os.environ.get("VISROUTE_SERVE_API_KEYS")
    cmd = [sys.executable, "-m", "visroute.cli", "serve", "--config", str(HERE / "serve.yaml"),
           *([] if keyed else ["--open"]), *argv]
    models = {"small": "random-tiny:llava", "large": "random-tiny:llava"}
    with LocalServer(models, max_tokens=16, port=UPSTREAM_PORT) as url:
        print(f"serve-demo: upstream {url} (models: {', '.join(models)})", file=sys.stderr, flush=True)
        proc = subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        signal.signal(signal.SIGTERM, lambda *_: proc.send_signal(signal.SIGTERM))
        try:
            return proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            return proc.wait()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
