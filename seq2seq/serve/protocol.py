"""What `seq2seq serve` accepts and answers: the limits, a request's checks, the JSON answers.

A /translate body is checked here, completely, before it reaches the queue: a bad request gets
`BadRequest` with the HTTP status and a message that names the field. No HTTP and no event loop
here: `parse_request` takes bytes, `decode` runs in the decode thread.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the CLI reads Limits without importing torch
    from seq2seq.translate import Translation, Translator

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
    # attention maps in one answer (lines x nbest): each holds up to (target + 1) x (source + 1)
    # weights, ~100k for a 250-piece line, so the cap bounds an answer's size (~30 MB of JSON)
    max_attention_hypotheses: int = 32
    # work = source pieces x beam (the search's rows times its source length, roughly its steps):
    # a request over max_request_work gets 413 before anything is decoded; batches are formed up to
    # max_batch_work, so that one decode call holds the decode thread for a bounded time
    max_request_work: int = 50_000
    max_batch_work: int = 20_000
    header_timeout: float = 10.0    # seconds for a request's headers, from connecting or the last answer


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


def parse_request(body: bytes, defaults: Settings, limits: Limits) -> tuple[list[str], Settings]:
    """The lines and settings of a /translate body, or BadRequest naming what is wrong."""
    return check_request(load_json(body), defaults, limits)


def load_json(body: bytes) -> Any:
    """The JSON value of a body, or BadRequest saying where it is broken."""
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
    return data


def check_request(data: Any, defaults: Settings, limits: Limits) -> tuple[list[str], Settings]:
    """The lines and settings of a parsed /translate body (this API's fields)."""
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
        names = [f"texts[{i}]" for i in range(len(lines))]
    check_lines(lines, names, limits, what="texts")
    settings = _settings(data, defaults, limits)
    if settings.attention and len(lines) * settings.nbest > limits.max_attention_hypotheses:
        raise BadRequest(413, f"attention is answered for at most {limits.max_attention_hypotheses} hypotheses "
                              f"(lines x nbest) per request, this one asks {len(lines) * settings.nbest} "
                              "(--max-attention-hypotheses); ask without attention, or for fewer")
    return lines, settings


def check_lines(lines: list, names: list[str], limits: Limits, what: str = "text") -> None:
    """Each line is a string the model can take; `names` says how the request calls each, `what`
    the field that holds them."""
    if len(lines) > limits.max_lines:
        raise BadRequest(413, f"{what} has {len(lines)} lines; the limit is {limits.max_lines} "
                              "per request (--max-lines)")
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


def check_work(pieces: list[int], beam: int, limits: Limits, at_least: bool = False) -> int:
    """The work of a request whose lines have `pieces` source pieces each (at least, if `at_least`),
    or 413 naming the limit."""
    counted = sum(max(n, 1) for n in pieces)  # an empty line still costs a step
    work = counted * beam
    if work > limits.max_request_work:
        some = "at least " if at_least else ""
        raise BadRequest(413, f"this request is {some}{counted:,} source pieces x beam {beam} = {work:,} units of "
                              f"work; the limit is {limits.max_request_work:,} per request (--max-request-work): "
                              "send fewer or shorter lines, or a smaller beam")
    return work


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


def decode(translator: Translator, lines: list[str], s: Settings, stop=None) -> list[dict]:
    """One answer per line, through the `translate` code path (runs in the decode thread); `stop`
    is asked before each search step (translate.Stopped when it says True)."""
    details = translator.translate_with_details(lines, return_attention=s.attention, beam=s.beam, nbest=s.nbest,
                                                length_penalty=s.length_penalty, stop=stop)
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
