"""API-key authentication: ``Authorization: Bearer KEY`` (what the ``openai`` client sends) or ``X-API-Key``.

Every configured key is compared in constant time (``hmac.compare_digest`` over SHA-256 digests, all keys
checked whatever matched), so neither the position of a wrong byte nor which key matched shows in the timing.
"""

from __future__ import annotations

import hashlib
import hmac

#: paths anyone may read: probes, the web page and its assets, the API description and docs
PUBLIC_PATHS = ("/healthz", "/readyz", "/", "/openapi.json", "/docs", "/favicon.ico")
PUBLIC_PREFIXES = ("/static/",)


class KeyChecker:
    def __init__(self, keys: list[str], open_mode: bool = False):
        self._digests = [hashlib.sha256(k.encode()).digest() for k in keys]
        self.open_mode = open_mode

    @property
    def enabled(self) -> bool:
        return not self.open_mode

    def is_public(self, path: str) -> bool:
        return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)

    def presented(self, headers) -> str | None:
        auth = headers.get("authorization") or ""
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return (headers.get("x-api-key") or "").strip() or None

    def allowed(self, headers) -> bool:
        if self.open_mode:
            return True
        token = self.presented(headers)
        if token is None:
            return False
        digest = hashlib.sha256(token.encode()).digest()
        ok = False
        for d in self._digests:
            ok |= hmac.compare_digest(d, digest)
        return ok
