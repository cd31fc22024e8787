"""`seq2seq serve`: one model (or an ensemble) behind HTTP, and a web page that shows its attention.

    POST /translate  {"text": "..."} or {"texts": [...]}, optional "beam", "nbest",
                     "length_penalty", "attention"  ->  {"translations": [...]}
                     (application/json); or the LibreTranslate API's fields (seq2seq.serve.libretranslate)
    GET  /languages  the LibreTranslate API's list of languages
    GET  /health     model, version, recipe summary, limits, queue
    GET  /           the web page (its assets are served from seq2seq/serve/web/, no network needed)

Before a request reaches these handlers, `guard` has timed its headers and checked its Host and
Origin. Requests are then checked completely (`protocol`, `libretranslate`) before they reach
the queue, their work (source pieces x beam) included: a bad request gets a 4xx whose message
names the field or the limit, and one log line. Good requests are decoded by `Batcher` with
requests that arrived with them, through `Translator.translate_with_details`, the code path of
`seq2seq translate`; a decode whose callers have all gone stops between two search steps.
Needs the `serve` extra (Starlette and uvicorn).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Awaitable, Callable

import torch
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from seq2seq import __version__
from seq2seq.errors import Seq2SeqError
from seq2seq.serve import libretranslate
from seq2seq.serve.batcher import Batcher, DecodeFailed, QueueFull
from seq2seq.serve.guard import Guard, Hosts, with_header_timeout
from seq2seq.serve.protocol import (MAX_LENGTH_PENALTY, BadRequest, Limits, Settings, check_request, check_work, decode,
                                    load_json, summary)
from seq2seq.translate import Translator

log = logging.getLogger("seq2seq.serve")
WEB = Path(__file__).parent / "web"


def build_app(translator: Translator, limits: Limits = Limits(), worker: ThreadPoolExecutor | None = None,
              url: str = "", hosts: Hosts = Hosts.for_listener("127.0.0.1"), origins: tuple[str, ...] = ()) -> Starlette:
    """The app; `worker` is the thread that decodes (see `serve`); `url` is logged once it serves;
    `hosts` and `origins` are what `guard.Guard` lets in."""
    defaults = default_settings(translator, limits)
    batcher = Batcher(lambda lines, s, stop: decode(translator, lines, s, stop), limits.max_wait_ms / 1000,
                      limits.max_batch_lines, limits.max_queue_lines, worker, limits.max_batch_work)
    models = ["/".join(Path(p).parts[-3:]) for p in translator.sources]
    decoding = translator.precision(translator.config.decode.precision)
    pair = (translator.config.data.src, translator.config.data.tgt)

    work = _work_counter(translator.tokenizers.src, limits)

    async def translate(request: Request) -> JSONResponse:
        deadline = asyncio.get_running_loop().time() + limits.timeout  # one timeout for the whole request
        try:
            form = _form_or_json(request)
            try:
                async with asyncio.timeout_at(deadline):
                    body = await _read_body(request, limits.max_body_bytes)
            except TimeoutError:
                raise BadRequest(408, f"the body did not arrive within the server's {limits.timeout:g} s timeout")
            lines, settings, lt = _parse(body, form, pair, defaults, limits)
            cost = await asyncio.to_thread(work, lines, settings.beam)
            results = await _answer_unless_gone(request, batcher.submit(lines, settings, cost), deadline)
        except Exception as e:
            return _refusal(request, e, limits)
        answer = {"translations": results} if lt is None else libretranslate.answer(lt, results, pair)
        # JSONResponse renders its body when made: a large answer is made off the event loop
        return await asyncio.to_thread(JSONResponse, answer, headers={"Cache-Control": "no-store"})

    async def languages(request: Request) -> JSONResponse:
        return JSONResponse(libretranslate.languages(pair))

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({
            "status": "ok", "version": __version__, "models": models, "model": summary(translator),
            "defaults": asdict(defaults), "precision": decoding[0], "precision_reason": decoding[1],
            "limits": asdict(limits),
            "queue": {"lines": batcher.queued_lines, "batches": batcher.batches, "requests": batcher.jobs,
                      "lines_decoded": batcher.lines, "decodes_stopped": batcher.stopped},
        })

    async def index(request: Request) -> FileResponse:
        return FileResponse(WEB / "index.html", headers={"Cache-Control": "no-cache"})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        batcher.start()
        if url:
            log.info("decoding in %s (%s)", *decoding)
            log.info("serving %s on %s (Ctrl+C or SIGTERM to stop)", ", ".join(models), url)
        yield
        await batcher.close()  # uvicorn has let every open request finish; this stops the decode thread

    return Starlette(routes=[
        Route("/", index), Route("/health", health), Route("/translate", translate, methods=["POST"]),
        Route("/languages", languages), Mount("/assets", StaticFiles(directory=WEB)),
    ], lifespan=lifespan, middleware=[Middleware(Guard, hosts=hosts, origins=origins)])


def default_settings(translator: Translator, limits: Limits) -> Settings:
    """What a request that chooses nothing gets: the model's decode settings, which must be within
    the limits (else the default answers would differ from `translate`'s)."""
    d = translator.config.decode
    if d.beam > limits.max_beam:
        raise Seq2SeqError(f"the model's decode.beam ({d.beam}) is above --max-beam ({limits.max_beam})")
    if d.length_penalty > MAX_LENGTH_PENALTY:
        raise Seq2SeqError(f"the model's decode.length_penalty ({d.length_penalty:g}) is above the largest a "
                           f"request may give ({MAX_LENGTH_PENALTY:g})")
    return Settings(d.beam, 1, d.length_penalty, False)


def _refusal(request: Request, error: Exception, limits: Limits) -> JSONResponse:
    """The answer to a request that failed with `error`; anything unexpected is re-raised."""
    if isinstance(error, BadRequest):  # after a 408 the rest of the body may still come: close the connection
        return _reject(request, error.status, str(error), {"Connection": "close"} if error.status == 408 else None)
    if isinstance(error, ClientDisconnect):
        return _reject(request, 400, "the client disconnected before sending its whole request")
    if isinstance(error, ClientGone):
        return _reject(request, 499, "the client disconnected while its request was queued or decoded; it is dropped")
    if isinstance(error, QueueFull):
        return _reject(request, 503, f"busy: {error}; retry later", {"Retry-After": "1"})
    if isinstance(error, TimeoutError):
        return _reject(request, 503, f"not answered within the server's {limits.timeout:g} s timeout; retry later",
                       {"Retry-After": "1"})
    if isinstance(error, DecodeFailed):  # the batcher logged the cause with its traceback
        return _reject(request, 500, str(error))
    raise error


def _parse(body: bytes, form: str, pair: tuple[str, str], defaults: Settings, limits: Limits
           ) -> tuple[list[str], Settings, libretranslate.Request | None]:
    """Lines and settings of a /translate body in either API (`form`: the form's Content-Type, or
    "" for JSON); the LibreTranslate request (to shape its answer) or None for ours."""
    data = libretranslate.parse_form(body, form) if form else load_json(body)
    if form or libretranslate.is_libretranslate(data):
        lt = libretranslate.parse(data, pair, defaults, limits)
        return lt.lines, lt.settings, lt
    return *check_request(data, defaults, limits), None


def _work_counter(vocab, limits: Limits) -> Callable[[list[str], int], int]:
    """work(lines, beam): source pieces x beam, or 413 (protocol.check_work)."""
    longest = max(len(vocab.sp.id_to_piece(i)) for i in range(len(vocab)))  # characters, "▁" included

    def work(lines: list[str], beam: int) -> int:
        # A line has at least len / longest pieces once its whitespace runs are one space, and NFKC
        # composes at most a few code points into one (hence / 4): a request over the limit on that
        # count alone is refused without being tokenized (an oversized request must cost next to nothing).
        check_work([len(" ".join(line.split())) // (4 * longest) for line in lines], beam, limits, at_least=True)
        return check_work([len(ids) for ids in vocab.encode(lines)], beam, limits)

    return work


def _form_or_json(request: Request) -> str:
    """A form's Content-Type (the LibreTranslate API), or "" for JSON; any other body is refused
    (415): a page on another site can post text/plain without the browser's CORS preflight."""
    header = request.headers.get("content-type", "")
    kind = header.split(";")[0].strip().lower()
    if kind not in ("application/json", "application/x-www-form-urlencoded", "multipart/form-data"):
        raise BadRequest(415, f"POST /translate takes Content-Type application/json (or a form in the "
                              f"LibreTranslate API), not {kind or 'none'}")
    return "" if kind == "application/json" else header


class ClientGone(Exception):
    """The client closed its connection while waiting for the answer."""


async def _answer_unless_gone(request: Request, answer: Awaitable, deadline: float):
    """Await `answer` until `deadline`; if the client disconnects first, cancel it (a queued job
    leaves the queue) and raise ClientGone."""
    job = asyncio.ensure_future(answer)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        async with asyncio.timeout_at(deadline):
            await asyncio.wait({job, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not job.done():
            job.cancel()
    if not job.done() or job.cancelled():
        raise ClientGone()
    return job.result()


async def _disconnected(request: Request) -> None:
    """Returns when the client disconnects (the body has been read: what comes now is that)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"the body has {declared} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BadRequest(413, f"the body is over the limit of {limit} bytes")
    return bytes(body)


def _reject(request: Request, status: int, message: str, headers: dict | None = None) -> JSONResponse:
    log.info("%s %s %s: %d %s", _client(request), request.method, request.url.path, status, message)
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _client(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "?"


def load_in_worker(load: Callable[[], Translator], threads: int | None) -> tuple[Translator, ThreadPoolExecutor]:
    """Load the model in the thread that will decode with it, so that torch runs in that thread
    only. Torch's OpenMP (libgomp) keeps one pool of threads per calling thread; once the pools
    hold more threads than there are cores, their threads stop spinning between operations and
    every small operation of beam search pays for waking them."""
    worker = ThreadPoolExecutor(1, thread_name_prefix="decode")

    def in_worker() -> Translator:
        if threads:
            torch.set_num_threads(threads)
        return load()

    try:
        return worker.submit(in_worker).result(), worker
    except BaseException:
        worker.shutdown()
        raise


def serve(load: Callable[[], Translator], host: str, port: int, limits: Limits = Limits(),
          threads: int | None = None, access_log: bool = False, allowed_hosts: tuple[str, ...] = (),
          allowed_origins: tuple[str, ...] = ()) -> None:
    """Listen, load the model, serve until SIGTERM or SIGINT; then stop accepting, answer every
    request already in, return. The Host header must name `host` or one of `allowed_hosts`; pages
    from `allowed_origins` may call the API (see guard)."""
    sock = _listen(host, port)
    translator, worker = load_in_worker(load, threads)
    logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s %(message)s", level=logging.INFO)
    bound_host, bound_port = sock.getsockname()[:2]
    url = f"http://{f'[{bound_host}]' if ':' in bound_host else bound_host}:{bound_port}/"
    app = build_app(translator, limits, worker, url, Hosts.for_listener(host, allowed_hosts), allowed_origins)
    config = uvicorn.Config(app, host=host, port=port, access_log=access_log,
                            http=with_header_timeout(limits.header_timeout), limit_concurrency=limits.max_connections,
                            timeout_graceful_shutdown=math.ceil(limits.timeout) + 5, log_level="info")
    stopped: list[int] = []
    # uvicorn stops gracefully on these signals and then re-raises them to the handlers that were
    # installed before it: ours note them, so the process ends with status 0 after a clean stop.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stopped.append(signum))
    uvicorn.Server(config).run(sockets=[sock])
    if stopped:
        log.info("stopped by %s after answering every request it had accepted", signal.Signals(stopped[0]).name)


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a busy port is a one-line error (exit 2)."""
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say so (else Nagle's
    # algorithm and delayed ACKs add 40 ms to each answer)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # from now on, connections wait in the backlog until the app accepts them
    except OSError as e:
        sock.close()
        raise Seq2SeqError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    return sock
