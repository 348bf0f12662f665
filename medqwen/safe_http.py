"""Outgoing HTTP for tools: one GET with a total deadline, a size cap on the decoded body, and secret redaction.

    response = http_get(url, params={"q": "Beijing", "appid": key}, timeout_s=10, max_bytes=1_000_000,
                        secrets=[key])      # raises HttpError(kind="timeout" | "too_large" | "connect" | ...)
    redact("... appid=KEY ...", [key])      # '... appid=*** ...'

Why not plain `httpx.get(timeout=...)`: httpx's timeout bounds each read, so a body trickled one byte a second
never times out; its body decoding inflates a whole network chunk at once, so a small gzip bomb costs hundreds of
megabytes; and it logs every request URL (with the API key in the query) at INFO. Here the request runs in a
worker thread that the caller stops waiting for at the deadline, gzip/deflate are inflated with a bounded output
per step, and a filter on the `httpx` logger redacts credentials in every URL it logs.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterable
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
# Query parameters and header names whose values are credentials wherever they appear.
SECRET_PARAMS = ("appid", "api_key", "apikey", "key", "token", "access_token", "password", "secret")
_SECRET_QUERY = re.compile(r"(?i)([?&](?:%s)=)[^&#\s\"']*" % "|".join(SECRET_PARAMS))
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/@\s\"']*@")
# Credentials an error body may echo from the request headers (a gateway that prints what it received).
_AUTH_SCHEME = re.compile(r"(?i)\b(bearer|basic|token)(\s+|%20)[A-Za-z0-9._~+/=\-]{4,}")
_AUTH_HEADER = re.compile(r"(?i)((?:authorization|proxy-authorization|x-api-key|api-key|openai-api-key|cookie)"
                          r"[\"']?\s*[:=]\s*[\"']?)[^\"'\n,}]+")
_CHUNK = 64 * 1024
_SECRET_MARGIN = 4096  # longer than any key: text cut this far past the limit still has every visible key whole


class HttpError(RuntimeError):
    """A request that failed; `kind` is timeout, too_large, connect, bad_url or encoding; messages are redacted."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass
class Response:
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes = field(repr=False)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with every secret value, URL userinfo and credential query parameter replaced by ***."""
    text = str(text)
    for secret in secrets:
        if secret and len(secret) >= 4:  # shorter values would mask ordinary words
            text = text.replace(secret, MASK)
    text = _USERINFO.sub(lambda m: m.group(1) + MASK + "@", text)
    text = _AUTH_HEADER.sub(lambda m: m.group(1) + MASK, text)
    text = _AUTH_SCHEME.sub(lambda m: m.group(1) + " " + MASK, text)
    return _SECRET_QUERY.sub(lambda m: m.group(1) + MASK, text)


def clip(text: str, limit: int = 80) -> str:
    """`text` cut to `limit` characters, saying how long it was (never call it on text that may hold a secret:
    use public_text, which redacts first)."""
    text = str(text)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def public_text(text: Any, secrets: Iterable[str | None] = (), limit: int = 300) -> str:
    """The one way text from outside (an error, a server's body, a URL) leaves a module: redacted, then clipped.
    Redacting first means a cut can never leave half a key behind."""
    text = text if isinstance(text, str) else str(text)
    full = len(text)
    text = redact(text[: limit + _SECRET_MARGIN], secrets)
    if len(text) <= limit and full <= limit + _SECRET_MARGIN:
        return text
    return text[:limit] + f"... ({full} characters)"


def public_url(url: Any) -> str:
    """A URL fit to show or log: no userinfo, no credential query parameters."""
    return public_text(strip_userinfo(str(url)), limit=500)


def clipped_repr(value: Any, limit: int = 120) -> str:
    """`repr(value)` for an error message, bounded in time and memory whatever `value` is (a YAML alias bomb
    expands to gigabytes under plain repr): nesting, items and strings are cut before the text is built."""
    import reprlib

    shorter = reprlib.Repr()
    shorter.maxlevel, shorter.maxdict, shorter.maxlist, shorter.maxtuple, shorter.maxset = 3, 6, 6, 6, 6
    shorter.maxstring, shorter.maxother, shorter.maxlong = limit, limit, limit
    return public_text(shorter.repr(value), limit=limit)


def strip_userinfo(url: str) -> str:
    """The URL without `user:password@` (for configs, logs and messages)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=MASK + "@" + parts.netloc.rpartition("@")[2]))


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_url(url: str, what: str = "URL", require_https: bool = True) -> str:
    """`url` when it is an http(s) URL with a host (https required unless the host is loopback); else HttpError.

    A `.env` in the current folder can set a base URL; https-or-loopback keeps such a file from sending a key in
    clear text to a foreign host.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 -- raises ValueError for a non-numeric or out-of-range port
    except ValueError:
        raise HttpError("bad_url", f"{what} {redact(url)!r} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise HttpError("bad_url", f"{what} {redact(url)!r} must be an http(s) URL with a host, "
                                   "e.g. https://api.openweathermap.org")
    if require_https and parts.scheme != "https" and not is_loopback(host):
        raise HttpError("bad_url", f"{what} {strip_userinfo(url)!r} uses plain http to a non-local host; "
                                   "use https (plain http is allowed only for localhost / 127.0.0.1 / ::1)")
    return url


class _Inflater:
    """Content-Encoding gzip/deflate inflated in bounded steps, so output never exceeds the cap by more than a step."""

    def __init__(self, encoding: str):
        encoding = encoding.strip().lower()
        if encoding in ("", "identity"):
            self.zlib = None
        elif encoding in ("gzip", "x-gzip"):
            self.zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self.zlib = zlib.decompressobj()
        else:
            raise HttpError("encoding", f"unsupported Content-Encoding {encoding!r}")

    def feed(self, data: bytes, room: int) -> Iterable[bytes]:
        if self.zlib is None:
            yield data
            return
        while data:
            out = self.zlib.decompress(data, max(1, min(room + 1, _CHUNK)))
            yield out
            room -= len(out)
            if room < 0:
                return
            data = self.zlib.unconsumed_tail


def _fetch(url: str, params: dict | None, headers: dict | None, timeout_s: float, max_bytes: int,
           deadline: float, stop: threading.Event) -> Response:
    import httpx

    headers = {**(headers or {}), "Accept-Encoding": "gzip, deflate"}  # never br/zstd: we inflate ourselves
    with httpx.Client(timeout=timeout_s, follow_redirects=False) as client:
        with client.stream("GET", url, params=params, headers=headers) as response:
            inflater = _Inflater(response.headers.get("content-encoding", ""))
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and not inflater.zlib and int(declared) > max_bytes:
                raise HttpError("too_large", f"the answer is larger than {max_bytes} bytes")
            body = bytearray()
            for raw in response.iter_raw(_CHUNK):
                if stop.is_set() or time.monotonic() > deadline:
                    raise HttpError("timeout", "deadline passed")
                for piece in inflater.feed(raw, max_bytes - len(body)):
                    body += piece
                    if len(body) > max_bytes:
                        raise HttpError("too_large", f"the answer is larger than {max_bytes} bytes")
            return Response(response.status_code, response.reason_phrase, dict(response.headers), bytes(body))


def http_get(url: str, params: dict | None = None, headers: dict | None = None, *, timeout_s: float,
             max_bytes: int, secrets: Iterable[str | None] = ()) -> Response:
    """GET with a total deadline of `timeout_s` (connect + headers + whole body) and at most `max_bytes` of decoded
    body; raises HttpError whose message never holds a secret. Redirects are not followed (a redirect could carry
    the query, and its key, to another host)."""
    import httpx

    secrets = [s for s in secrets if s]
    deadline = time.monotonic() + timeout_s
    stop = threading.Event()
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["response"] = _fetch(url, params, headers, timeout_s, max_bytes, deadline, stop)
        except BaseException as err:  # noqa: BLE001 -- handed to the caller's thread below
            outcome["error"] = err

    worker = threading.Thread(target=work, name="http_get", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():  # the worker notices `stop` at its next chunk or read timeout and ends on its own
        stop.set()
        raise HttpError("timeout", f"no complete answer within {timeout_s:g} s")
    err = outcome.get("error")
    if err is None:
        return outcome["response"]
    if isinstance(err, HttpError):
        raise HttpError(err.kind, redact(str(err), secrets)) from None
    if isinstance(err, httpx.TimeoutException):
        raise HttpError("timeout", f"no complete answer within {timeout_s:g} s") from None
    if isinstance(err, (httpx.InvalidURL, httpx.UnsupportedProtocol)):
        raise HttpError("bad_url", redact(f"invalid URL {strip_userinfo(url)!r}", secrets)) from None
    if isinstance(err, (httpx.HTTPError, zlib.error, OSError)):
        raise HttpError("connect", redact(f"{type(err).__name__}: {err}", secrets)) from None
    raise err


_LOGGERS = ("httpx", "httpcore", "openai", "urllib3", "langchain_openai")


def _redact_record(record: logging.LogRecord) -> logging.LogRecord:
    if record.name.split(".")[0] in _LOGGERS:
        if record.args:
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            record.args = tuple(a if isinstance(a, (int, float)) else redact(a) for a in args)
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
    return record


def install_log_redaction() -> None:
    """Redact credentials in every record the HTTP libraries log (httpx logs each request URL, with its query,
    at INFO; httpcore logs headers at DEBUG), child loggers included: a record factory sees them all, where a
    filter on the `httpx` logger would miss `httpcore.http11`. Idempotent."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "medqwen_redacting", False):
        return

    def redacting_factory(*args, **kwargs):
        return _redact_record(factory(*args, **kwargs))

    redacting_factory.medqwen_redacting = True
    logging.setLogRecordFactory(redacting_factory)


install_log_redaction()
