"""The LibreTranslate API, beside ours, so that LibreTranslate's clients work against `seq2seq serve`.

    POST /translate  q (a string, or a list of strings), source, target, format, alternatives,
                     api_key; as JSON or as a form (application/x-www-form-urlencoded, what the
                     `libretranslatepy` client sends)  ->  {"translatedText": ...} (a list for a
                     list q), plus "alternatives" when asked
    GET  /languages  ->  [{"code": ..., "name": ..., "targets": [...]}]

Errors are {"error": "..."}, with LibreTranslate's own messages where it has one ("Invalid
request: missing q parameter", "xx is not supported"). What differs, because one server holds one
model: `source` must be the model's source language or "auto" (which means it: there is no
language detection), `target` its target language. `format` "html" is refused (tags are not
carried over). `api_key` is accepted and ignored: the server has no authentication. A q with
line breaks is translated line by line and put back together, as LibreTranslate does paragraphs.

No HTTP here: `parse` takes the request's fields, `answer` builds the body.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any

from seq2seq.serve.protocol import BadRequest, Limits, Settings, check_lines

NAMES = {"cs": "Czech", "de": "German", "en": "English", "fr": "French", "ro": "Romanian"}


@dataclass(frozen=True)
class Request:
    lines: list[str]          # every line of every q item, in order
    settings: Settings
    spans: list[int]          # how many of `lines` each q item has
    batch: bool               # q was a list: translatedText is one too
    alternatives: int


def is_libretranslate(data: Any) -> bool:
    """A JSON body in this API (ours has no `q`)."""
    return isinstance(data, dict) and "q" in data


def parse_form(body: bytes) -> dict[str, str]:
    """An application/x-www-form-urlencoded body; a repeated field keeps its first value."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRequest(400, f"the form is not valid UTF-8 (byte 0x{body[e.start]:02x} at offset {e.start})")
    fields: dict[str, str] = {}
    for key, value in urllib.parse.parse_qsl(text, keep_blank_values=True):
        fields.setdefault(key, value)
    return fields


def parse(data: dict, pair: tuple[str, str], defaults: Settings, limits: Limits) -> Request:
    """The lines and settings of a LibreTranslate /translate request for the model's `pair`."""
    for key in ("q", "source", "target"):
        if not data.get(key):
            raise BadRequest(400, f"Invalid request: missing {key} parameter")
    text_format = data.get("format") or "text"
    if text_format not in ("text", "html"):
        raise BadRequest(400, f"{text_format} format is not supported")
    if text_format == "html":
        raise BadRequest(400, "html format is not supported by this server (send format text)")
    source, target = data["source"], data["target"]
    if source not in (pair[0], "auto"):
        raise BadRequest(400, f"{source} is not supported (this server translates {pair[0]} to {pair[1]})")
    if target != pair[1]:
        raise BadRequest(400, f"{target} is not supported (this server translates {pair[0]} to {pair[1]})")
    q = data["q"]
    batch = isinstance(q, list)
    items = q if batch else [q]
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise BadRequest(400, f"Invalid request: q{f'[{i}]' if batch else ''} must be a string")
    alternatives = _alternatives(data.get("alternatives", 0), limits)
    lines, names, spans = [], [], []
    for i, item in enumerate(items):
        parts = item.split("\n")
        lines += parts
        names += [f"q{f'[{i}]' if batch else ''} line {k + 1}" for k in range(len(parts))]
        spans.append(len(parts))
    check_lines(lines, names, limits)
    nbest = alternatives + 1
    settings = Settings(max(defaults.beam, nbest), nbest, defaults.length_penalty, False)
    return Request(lines, settings, spans, batch, alternatives)


def _alternatives(value: Any, limits: Limits) -> int:
    try:
        n = int(value)  # a form sends it as text
    except (TypeError, ValueError):
        n = -1
    if isinstance(value, bool) or isinstance(value, float) or not 0 <= n < limits.max_beam:
        raise BadRequest(400, f"Invalid request: alternatives must be an integer from 0 to {limits.max_beam - 1}")
    return n


def answer(request: Request, results: list[dict]) -> dict:
    """The body for `results` (one per line, as protocol.decode gives them)."""
    texts, alternatives, start = [], [], 0
    for span in request.spans:
        lines = results[start:start + span]
        start += span
        texts.append("\n".join(r["text"] for r in lines))
        # the k-th alternative: each line's (k+1)-th hypothesis, or its best where it has fewer
        alternatives.append(["\n".join((r["nbest"][k] if k < len(r["nbest"]) else r)["text"] for r in lines)
                             for k in range(1, request.alternatives + 1)
                             if any(k < len(r["nbest"]) for r in lines)])
    body: dict[str, Any] = {"translatedText": texts if request.batch else texts[0]}
    if request.alternatives:
        body["alternatives"] = alternatives if request.batch else alternatives[0]
    return body


def languages(pair: tuple[str, str]) -> list[dict]:
    """GET /languages: the model's source language with its one target, and the target language."""
    return [{"code": pair[0], "name": NAMES.get(pair[0], pair[0]), "targets": [pair[1]]},
            {"code": pair[1], "name": NAMES.get(pair[1], pair[1]), "targets": []}]
