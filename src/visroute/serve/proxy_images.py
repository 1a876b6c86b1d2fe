"""The chat proxy's images: every image part of a request as bytes. Data URLs are read in place; a remote
``image_url`` is fetched only when it lies under a prefix in the config's ``allow_image_urls`` (after one
normalisation, so no encoding trick reaches another path), only when it holds an image, and within a size cap; it
is then inlined as a data URL, so the upstream never fetches anything itself."""

from __future__ import annotations

import base64

from starlette.exceptions import HTTPException

from visroute.serve.decode import data_url_bytes

REMOTE_IMAGE_MAX_BYTES = 20 * 1024 * 1024
#: Image formats a fetched URL may hold (magic bytes -> MIME type): anything else is not forwarded.
IMAGE_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF87a", "image/gif"),
               (b"GIF89a", "image/gif"), (b"BM", "image/bmp"))


def _parts(messages: list[dict]) -> list[dict]:
    return [p for m in messages if isinstance(m.get("content"), list) for p in m["content"] if isinstance(p, dict)]


async def inline_images(state, messages: list[dict]) -> list[bytes]:
    """Every image part as bytes (remote URLs fetched only when allow-listed, then inlined as data URLs)."""
    out = []
    for part in _parts(messages):
        if part.get("type") != "image_url":
            continue
        ref = part.get("image_url")
        url = ref.get("url") if isinstance(ref, dict) else ref
        if not isinstance(url, str) or not url:
            raise HTTPException(400, "an image_url part needs a url")
        if url[:5].lower() == "data:":
            out.append(data_url_bytes(url))
            continue
        url = allowed_url(url, state.config.allow_image_urls)
        if not url:
            raise HTTPException(400, "remote image URLs are refused unless the config's allow_image_urls permits "
                                     "them; send the image as a data: URL")
        data = await _fetch(state, url)
        mime = image_type(data)
        if mime is None:
            raise HTTPException(400, "the fetched URL does not hold a PNG, JPEG, GIF, WebP or BMP image")
        part["image_url"] = {**(ref if isinstance(ref, dict) else {}), "url": f"data:{mime};base64," +
                             base64.b64encode(data).decode()}
        out.append(data)
    return out


def image_type(data: bytes) -> str | None:
    """The MIME type the magic bytes say, or None for anything that is not an image we forward."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((mime for magic, mime in IMAGE_MAGIC if data.startswith(magic)), None)


def normalise_url(url: str) -> str | None:
    """The URL in the one form that is allow-listed and fetched, or None when it is refused: http(s) only, no user
    part, no backslash or control character, no encoded separator or dot (``%2f``, ``%5c``, ``%2e``); percent
    escapes of other characters decoded, dot segments resolved (a path climbing above the root is refused)."""
    import posixpath
    from urllib.parse import quote, unquote, urlsplit, urlunsplit

    if not isinstance(url, str) or any(c in url for c in "\\\x00\t\r\n ") or any(ord(c) < 32 for c in url):
        return None
    try:
        p = urlsplit(url)
        host = (p.hostname or "").lower()
        port = p.port
    except ValueError:
        return None
    if p.scheme.lower() not in ("http", "https") or "@" in p.netloc or not host:
        return None
    low = p.path.lower()
    if any(bad in low for bad in ("%2f", "%5c", "%2e", "%00", "%25")):
        return None
    path = unquote(p.path)
    if "\\" in path:
        return None
    segments = path.split("/")
    if any(s in (".", "..") for s in segments):
        depth = 0
        for s in segments[1:]:
            depth += -1 if s == ".." else (0 if s in (".", "") else 1)
            if depth < 0:
                return None
        path = posixpath.normpath(path) + ("/" if path.endswith(("/", "/.", "/..")) else "")
        path = path.replace("//", "/")
    netloc = host + (f":{port}" if port else "")
    return urlunsplit((p.scheme.lower(), netloc, quote(path or "/", safe="/:@!$&'()*+,;=~-._"), p.query, ""))


def allowed_url(url: str, prefixes) -> str | None:
    """The normalised URL when it lies under an allowed (normalised) prefix, else None."""
    norm = normalise_url(url)
    if norm is None:
        return None
    for prefix in prefixes:
        base = normalise_url(prefix)
        if base and norm.startswith(base) and (base.endswith("/") or norm[len(base):len(base) + 1] in ("", "/", "?")):
            return norm
    return None


async def _fetch(state, url: str) -> bytes:
    try:
        async with state.http.stream("GET", url, timeout=state.config.limits.upstream_timeout_s,
                                     follow_redirects=False) as r:
            if r.status_code != 200:
                raise HTTPException(400, f"fetching the image at {url} gave HTTP {r.status_code}")
            ctype = (r.headers.get("content-type") or "").split(";")[0].strip().lower()
            if not ctype.startswith("image/"):
                raise HTTPException(400, "the fetched URL does not hold an image (content type "
                                         f"'{ctype or 'none'}')")
            chunks, n = [], 0
            async for chunk in r.aiter_bytes():
                n += len(chunk)
                if n > REMOTE_IMAGE_MAX_BYTES:
                    raise HTTPException(413, f"the image at {url} is over {REMOTE_IMAGE_MAX_BYTES:,} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
    except HTTPException:
        raise
    except Exception as e:  # connection errors of any kind: the client gave a URL we could not read
        raise HTTPException(400, f"could not fetch the image at {url} ({type(e).__name__})") from None
