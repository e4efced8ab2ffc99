"""The dashboard's doors: which requests reach the pages at all.

- The Host header must name an address the dashboard serves (no DNS-rebinding access to the
  conversations). Hosts are parsed as URLs, so `[::1]:8765` is the host `::1`.
- On any host other than loopback, every request needs the dashboard's token: `?token=` once (it is
  then kept in an HttpOnly, SameSite=Strict cookie) or that cookie. The token is generated on first
  use, stored 0600 in `control/dashboard.token`, and printed by `serve`.
- A state-changing request must come from the page itself: its Origin (or Referer) must have the
  dashboard's own scheme, host and port (`same_origin`).
"""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from starlette.requests import cookie_parser

from circadian.core.fsutil import atomic_write_text

LOOPBACK = ("127.0.0.1", "localhost", "::1")
TOKEN_COOKIE = "circadian_token"


def split_host(value: str) -> tuple[str | None, int | None]:
    """Given a Host header or an origin's netloc ('localhost:8765', '[::1]:8765'), return (host, port);
    (None, None) when it does not parse."""
    try:
        parts = urlsplit("//" + value)
        return parts.hostname, parts.port
    except ValueError:
        return None, None


def same_origin(origin: str, hosts: list[str], port: int) -> bool:
    """Whether an Origin or Referer header is the dashboard's own page: http, a served host, its port."""
    try:
        parts = urlsplit(origin)
        return parts.scheme == "http" and parts.hostname in hosts and (parts.port or 80) == port
    except ValueError:
        return False


def load_token(path: Path) -> tuple[str, bool]:
    """Return (the dashboard's token, whether it was generated now); generate and store it 0600 if absent."""
    if path.exists():
        token = path.read_text(encoding="utf-8").strip()
        if token:
            return token, False
    token = secrets.token_urlsafe(24)
    atomic_write_text(path, token + "\n")
    return token, True


class Doors:
    """ASGI middleware: refuse a request whose Host is not served (400), or that lacks the token when
    one is required (401)."""

    def __init__(self, app, *, hosts: list[str], token: str | None):
        self.app = app
        self.hosts = hosts
        self.token = token

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        host, _port = split_host(headers.get("host", ""))
        if host not in self.hosts:
            return await _refuse(send, 400, "Invalid host header")
        if self.token is None:
            return await self.app(scope, receive, send)
        given = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])[0]
        kept = cookie_parser(headers.get("cookie", "")).get(TOKEN_COOKIE, "")  # lenient: other apps' cookies
        if hmac.compare_digest(kept.encode(), self.token.encode()):
            return await self.app(scope, receive, send)
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return await _refuse(send, 401, "refused: this dashboard needs its token (?token=, printed at start)")

        async def keep_cookie(message):
            if message["type"] == "http.response.start":
                value = f"{TOKEN_COOKIE}={self.token}; HttpOnly; SameSite=Strict; Path=/"
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", value.encode())]}
            await send(message)

        return await self.app(scope, receive, keep_cookie)


async def _refuse(send, status: int, text: str) -> None:
    body = text.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
