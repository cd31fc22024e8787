"""What the server refuses before a request reaches the app: slow headers, and requests that a web
page the user happens to visit could make.

- `HeaderTimeout` (the HTTP protocol): a connection gets `header_timeout` seconds for a request's
  headers, from the moment it connects and again after each answer. A client that sends them a
  byte at a time is cut off, so that slow clients cannot hold every connection. A request refused
  before its body was read has its connection closed with the answer: the server does not wait
  for (or read) the rest of a body it has already refused.
- `Guard` (ASGI middleware):
  - the Host header must name the server (`Hosts`): the address it listens on and the names given
    with --allowed-host; also localhost and the loopback addresses when it listens on one of them
    or on all addresses, and then any IP address too ("*" lets every name in). A page on another site that rebinds its DNS name to
    127.0.0.1 sends its own name as Host, and is refused (400);
  - a request whose Origin is not this server (or one of `allowed_origins`) is refused (403)
    before its body is read: a foreign page can post a form or `text/plain` without a CORS
    preflight, and would otherwise spend the server's CPU. Requests without Origin (curl,
    scripts, LibreTranslate clients) are not browsers' cross-site requests and pass;
  - a preflight (OPTIONS) from an allowed origin is answered with the CORS headers that let that
    origin's pages call the API; answers to allowed origins carry Access-Control-Allow-Origin.
This is not authentication: anyone who can reach the port can translate. See docs/serving.md.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import urllib.parse
from dataclasses import dataclass

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("seq2seq.serve")
HOST = re.compile(r"^(\[[0-9a-f:.]+\]|[a-z0-9.-]+)(:\d{1,5})?$")  # name or [IPv6], then a port


class HeaderTimeout(H11Protocol):
    """uvicorn's h11 protocol, with a deadline for each request's headers (`header_timeout`, set
    on a subclass by `with_header_timeout`)."""

    header_timeout = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the headers are in (h11 moved on to the body)
            self._disarm()

    def on_response_complete(self) -> None:
        if self.conn.their_state is h11.SEND_BODY:  # answered before its body was read (a refusal):
            super().on_response_complete()          # the rest of the body is not waited for
            self.transport.close()
            return
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm()  # the next request's headers get the same time

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expired(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being answered; the next one's headers are timed after it
        client = "%s:%d" % self.client if self.client else "?"
        log.info("%s: no request headers within the %g s header timeout; connection closed", client,
                 self.header_timeout)
        self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                             b"connection: close\r\ncontent-length: 55\r\n\r\n"
                             b'{"error": "the request headers did not arrive in time"}')
        self.transport.close()


def with_header_timeout(seconds: float) -> type[HeaderTimeout]:
    return type("HeaderTimeoutProtocol", (HeaderTimeout,), {"header_timeout": seconds})


@dataclass(frozen=True)
class Hosts:
    """The Host names (without port) the server answers to."""

    names: frozenset[str]
    any_address: bool     # listening on every address: a Host that is an IP address is one of ours

    @classmethod
    def for_listener(cls, listen_host: str, extra: tuple[str, ...] = ()) -> "Hosts":
        names = {h.lower().strip("[]") for h in extra} | {listen_host.lower().strip("[]")}
        wildcard = _is_unspecified(listen_host)
        if wildcard or _is_loopback(listen_host):
            names |= {"localhost", "127.0.0.1", "::1"}
        return cls(frozenset(names), wildcard)

    def allow(self, host_header: str) -> bool:
        if "*" in self.names:
            return True
        match = HOST.match(host_header.strip().lower())
        if match is None:
            return False
        name = match.group(1).strip("[]")  # without its port
        if name in self.names:
            return True
        try:
            ipaddress.ip_address(name)  # an address cannot be rebound to another machine's page
        except ValueError:
            return False
        return self.any_address


def _is_unspecified(host: str) -> bool:
    try:
        return host == "" or ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower() == "localhost"


class Guard:
    """ASGI middleware: the Host and Origin checks above."""

    def __init__(self, app, hosts: Hosts, origins: tuple[str, ...] = ()):
        self.app, self.hosts = app, hosts
        self.origins = frozenset(o.rstrip("/").lower() for o in origins)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        host, origin = headers.get("host", ""), headers.get("origin")
        if not self.hosts.allow(host):
            return await _refuse(scope, send, 400, f"Host {host!r} is not a name this server answers to "
                                                   "(start it with --allowed-host NAME to add one)")
        cors = origin is not None and origin.rstrip("/").lower() in self.origins
        if origin is not None and not cors and not _same_origin(origin, host):
            return await _refuse(scope, send, 403, f"requests from pages on {origin} are refused (start the "
                                                   "server with --allowed-origin to let that site's pages in)")
        if not cors:
            return await self.app(scope, receive, send)
        if scope["method"] == "OPTIONS":
            return await _answer(send, 204, b"", _cors_headers(origin, preflight=True))

        async def send_with_cors(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *_cors_headers(origin)]}
            await send(message)

        await self.app(scope, receive, send_with_cors)


def _same_origin(origin: str, host: str) -> bool:
    parts = urllib.parse.urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.strip().lower()


def _cors_headers(origin: str, preflight: bool = False) -> list[tuple[bytes, bytes]]:
    headers = [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
    if preflight:
        headers += [(b"access-control-allow-methods", b"GET, POST"),
                    (b"access-control-allow-headers", b"Content-Type"), (b"access-control-max-age", b"600")]
    return headers


async def _refuse(scope, send, status: int, message: str) -> None:
    client = scope.get("client")
    log.info("%s %s %s: %d %s", f"{client[0]}:{client[1]}" if client else "?", scope["method"], scope["path"],
             status, message)
    body = json.dumps({"error": message}).encode()
    await _answer(send, status, body, [(b"content-type", b"application/json"), (b"connection", b"close")])


async def _answer(send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
