"""`seq2seq serve`: one model (or an ensemble) behind HTTP, and a web page that shows its attention.

    POST /translate  {"text": "..."} or {"texts": [...]}, optional "beam", "nbest",
                     "length_penalty", "attention"  ->  {"translations": [...]}
    GET  /health     model, version, recipe summary, limits, queue
    GET  /           the web page (its assets are served from seq2seq/web/, no network needed)

Requests are checked here, completely, before they reach the queue: a bad request gets a 4xx
whose message names the field, and one log line. Good requests are decoded by `Batcher` with
requests that arrived with them, through `Translator.translate_with_details`, the code path
of `seq2seq translate`. Needs the `serve` extra (Starlette and uvicorn).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

import torch
import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from seq2seq import __version__
from seq2seq.batcher import Batcher, QueueFull
from seq2seq.errors import Seq2SeqError
from seq2seq.translate import Translation, Translator

log = logging.getLogger("seq2seq.serve")
WEB = Path(__file__).parent / "web"
FIELDS = ("text", "texts", "beam", "nbest", "length_penalty", "attention")
MAX_LENGTH_PENALTY = 10.0


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1 << 20
    max_lines: int = 256            # lines (texts) per request
    max_line_chars: int = 5000      # characters per line; lines over decode.max_source_len pieces are chunked
    max_beam: int = 16
    timeout: float = 30.0           # seconds per request: reading the body, queueing and decoding
    max_queue_lines: int = 4096
    max_batch_lines: int = 256
    max_wait_ms: float = 5.0        # how long a request that finds the server idle waits for companions
    max_connections: int = 512      # open connections; more get 503 (uvicorn's limit_concurrency)


@dataclass(frozen=True)
class Settings:
    """The decode settings a request may choose; requests with equal settings share a batch."""

    beam: int
    nbest: int
    length_penalty: float
    attention: bool


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# ------------------------------------------------------------------- the request, checked


def parse_request(body: bytes, defaults: Settings, limits: Limits) -> tuple[list[str], Settings]:
    """The lines and settings of a /translate body, or BadRequest naming what is wrong."""
    try:
        data = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise BadRequest(400, f"the body is not valid UTF-8 (byte 0x{body[e.start]:02x} at offset {e.start})")
    except json.JSONDecodeError as e:
        raise BadRequest(400, f"the body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}")
    except RecursionError:
        raise BadRequest(400, "the body's JSON is nested too deeply")
    except ValueError as e:  # e.g. an integer of more than 4,300 digits
        raise BadRequest(400, f"the body is not usable JSON: {str(e).splitlines()[0][:100]}")
    if not isinstance(data, dict):
        raise BadRequest(400, 'the body must be a JSON object such as {"text": "..."}')
    unknown = [k for k in data if k not in FIELDS]
    if unknown:
        raise BadRequest(400, f"unknown field {unknown[0]!r} (the fields are {', '.join(FIELDS)})")
    if ("text" in data) == ("texts" in data):
        raise BadRequest(400, 'give one of "text" (a string) or "texts" (a list of strings)')
    if "text" in data:
        lines, names = [data["text"]], ["text"]
        if not isinstance(lines[0], str):
            raise BadRequest(400, f"text must be a string, got {_json_type(lines[0])}")
        if not lines[0].strip():
            raise BadRequest(400, "text is empty")
    else:
        lines = data["texts"]
        if not isinstance(lines, list):
            raise BadRequest(400, f"texts must be a list of strings, got {_json_type(lines)}")
        if not lines:
            raise BadRequest(400, "texts is empty")
        if len(lines) > limits.max_lines:
            raise BadRequest(413, f"texts has {len(lines)} lines; the limit is {limits.max_lines} per request")
        names = [f"texts[{i}]" for i in range(len(lines))]
    for name, line in zip(names, lines):
        if not isinstance(line, str):
            raise BadRequest(400, f"{name} must be a string, got {_json_type(line)}")
        if len(line) > limits.max_line_chars:
            raise BadRequest(413, f"{name} has {len(line)} characters; the limit is {limits.max_line_chars}")
        if "\x00" in line:
            raise BadRequest(400, f"{name} contains a NUL character")
        try:
            line.encode("utf-8")
        except UnicodeEncodeError as e:  # JSON can escape half a surrogate pair ("\ud800"); UTF-8 cannot hold it
            raise BadRequest(400, f"{name} contains an unpaired surrogate (U+{ord(line[e.start]):04X} at "
                                  f"character {e.start})")
        if "\n" in line:
            raise BadRequest(400, f"{name} contains a line break; send each line as one item of texts")
    return lines, _settings(data, defaults, limits)


def _settings(data: dict, defaults: Settings, limits: Limits) -> Settings:
    beam = _integer(data, "beam", defaults.beam, 1, limits.max_beam)
    nbest = _integer(data, "nbest", 1, 1, limits.max_beam)
    if nbest > beam:
        raise BadRequest(400, f"nbest ({nbest}) must be <= beam ({beam})")
    lp = data.get("length_penalty", defaults.length_penalty)
    if isinstance(lp, bool) or not isinstance(lp, (int, float)) or not 0 <= lp <= MAX_LENGTH_PENALTY:
        raise BadRequest(400, f"length_penalty must be a number from 0 to {MAX_LENGTH_PENALTY:g}, got {_shown(lp)}")
    attention = data.get("attention", False)
    if not isinstance(attention, bool):
        raise BadRequest(400, f"attention must be true or false, got {_shown(attention)}")
    return Settings(beam, nbest, float(lp), attention)


def _integer(data: dict, name: str, default: int, low: int, high: int) -> int:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(400, f"{name} must be an integer from {low} to {high}, got {_shown(value)}")
    return value


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}[type(value)]


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ------------------------------------------------------------------- the answer


def decode(translator: Translator, lines: list[str], s: Settings) -> list[dict]:
    """One answer per line, through the `translate` code path (runs in the decode thread)."""
    details = translator.translate_with_details(lines, return_attention=s.attention, beam=s.beam, nbest=s.nbest,
                                                length_penalty=s.length_penalty)
    return [_line(nbest, s.attention) for nbest in details]


def _line(nbest: list[Translation], attention: bool) -> dict:
    if not nbest:  # an empty line in texts: the empty translation, as `translate` gives
        return {"text": "", "score": 0.0, "log_prob": 0.0, "source_pieces": [], "nbest": []}
    hyps = [{"text": t.text, "score": round(t.score, 6), "log_prob": round(t.log_prob, 6), "pieces": t.tokens}
            for t in nbest]
    if attention:  # rows: target pieces then </s>; columns: source pieces then </s>; None for chunked lines
        for h, t in zip(hyps, nbest):
            h["attention"] = None if t.attention is None else [[round(w, 4) for w in row] for row in t.attention.tolist()]
    best = hyps[0]
    return {"text": best["text"], "score": best["score"], "log_prob": best["log_prob"],
            "source_pieces": nbest[0].src_tokens, "nbest": hyps}


def summary(translator: Translator) -> dict:
    """What /health says about the model: languages, shape, vocabularies, training."""
    cfg = translator.config
    enc, dec = cfg.model.encoder, cfg.model.decoder
    return {
        "source_language": cfg.data.src, "target_language": cfg.data.tgt,
        "encoder": f"{enc.layers}-layer {'bidirectional ' if enc.bidirectional else ''}{enc.cell.upper()}, {enc.hidden} units",
        "decoder": f"{dec.layers}-layer {dec.cell.upper()}, {dec.hidden} units, residual {dec.residual}",
        "attention": cfg.model.attention.type,
        "vocabulary": {"source": len(translator.tokenizers.src), "target": len(translator.tokenizers.tgt)},
        "training": translator.training,
    }


# ------------------------------------------------------------------- HTTP


def build_app(translator: Translator, limits: Limits = Limits(), worker: ThreadPoolExecutor | None = None,
              url: str = "") -> Starlette:
    """The app; `worker` is the thread that decodes (see `serve`); `url` is logged once it serves."""
    d = translator.config.decode
    if d.beam > limits.max_beam:  # else the default answers would differ from `translate`'s
        raise Seq2SeqError(f"the model's decode.beam ({d.beam}) is above --max-beam ({limits.max_beam})")
    if d.length_penalty > MAX_LENGTH_PENALTY:
        raise Seq2SeqError(f"the model's decode.length_penalty ({d.length_penalty:g}) is above the largest a "
                           f"request may give ({MAX_LENGTH_PENALTY:g})")
    defaults = Settings(d.beam, 1, d.length_penalty, False)
    batcher = Batcher(lambda lines, s: decode(translator, lines, s), limits.max_wait_ms / 1000,
                      limits.max_batch_lines, limits.max_queue_lines, worker)
    models = ["/".join(Path(p).parts[-3:]) for p in translator.sources]

    async def translate(request: Request) -> JSONResponse:
        deadline = asyncio.get_running_loop().time() + limits.timeout  # one timeout for the whole request
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    body = await _read_body(request, limits.max_body_bytes)
            except TimeoutError:
                raise BadRequest(408, f"the body did not arrive within the server's {limits.timeout:g} s timeout")
            lines, settings = parse_request(body, defaults, limits)
            results = await _answer_unless_gone(request, batcher.submit(lines, settings), deadline)
        except BadRequest as e:  # after a 408 the rest of the body may still come: close the connection
            return _reject(request, e.status, str(e), {"Connection": "close"} if e.status == 408 else None)
        except ClientDisconnect:
            return _reject(request, 400, "the client disconnected before sending its whole request")
        except ClientGone:
            return _reject(request, 499, "the client disconnected while its request was queued or decoded; "
                                         "it is dropped")
        except QueueFull as e:
            return _reject(request, 503, f"busy: {e}; retry later", {"Retry-After": "1"})
        except TimeoutError:
            return _reject(request, 503, f"not answered within the server's {limits.timeout:g} s timeout; "
                                         "retry later", {"Retry-After": "1"})
        except RuntimeError as e:  # the batcher logged the cause with its traceback
            return _reject(request, 500, str(e))
        return JSONResponse({"translations": results}, headers={"Cache-Control": "no-store"})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({
            "status": "ok", "version": __version__, "models": models, "model": summary(translator),
            "defaults": asdict(defaults), "limits": asdict(limits),
            "queue": {"lines": batcher.queued_lines, "batches": batcher.batches, "requests": batcher.jobs,
                      "lines_decoded": batcher.lines},
        })

    async def index(request: Request) -> FileResponse:
        return FileResponse(WEB / "index.html", headers={"Cache-Control": "no-cache"})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        batcher.start()
        if url:
            log.info("serving %s on %s (Ctrl+C or SIGTERM to stop)", ", ".join(models), url)
        yield
        await batcher.close()  # uvicorn has let every open request finish; this stops the decode thread

    return Starlette(routes=[
        Route("/", index), Route("/health", health), Route("/translate", translate, methods=["POST"]),
        Mount("/assets", StaticFiles(directory=WEB)),
    ], lifespan=lifespan)


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
    only. Torch's OpenMP (libgomp) keeps one pool of threads per calling thread, and once the pools
    hold more threads than there are cores its threads stop spinning between operations: loading
    in one thread and decoding in another made beam search 1.9x slower on 2 cores."""
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
          threads: int | None = None, access_log: bool = False) -> None:
    """Listen, load the model, serve until SIGTERM or SIGINT; then stop accepting, answer every
    request already in, return."""
    sock = _listen(host, port)
    translator, worker = load_in_worker(load, threads)
    logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s %(message)s", level=logging.INFO)
    bound_host, bound_port = sock.getsockname()[:2]
    url = f"http://{f'[{bound_host}]' if ':' in bound_host else bound_host}:{bound_port}/"
    config = uvicorn.Config(build_app(translator, limits, worker, url), host=host, port=port, access_log=access_log,
                            limit_concurrency=limits.max_connections,
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
