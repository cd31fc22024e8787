"""The LibreTranslate API, beside ours, so that LibreTranslate's clients work against `seq2seq serve`.

    POST /translate  q (a string, or a list of strings), source, target, format, alternatives,
                     api_key; as JSON or as a form (application/x-www-form-urlencoded, what the
                     `libretranslatepy` client sends, or multipart/form-data)  ->
                     {"translatedText": ...} (a list for a list q), plus "alternatives" when asked
    GET  /languages  ->  [{"code": ..., "name": ..., "targets": [...]}]

Errors are {"error": "..."}, with LibreTranslate's own messages where it has one ("Invalid
request: missing q parameter", "xx is not supported"). What differs, because one server holds one
model: `source` must be the model's source language or "auto" (which means it: there is no
language detection, so "detectedLanguage" names that language with confidence 0), `target` its
target language. `api_key` is accepted and ignored: the server has no authentication. Each line
of a q is translated on its own and put back together, as LibreTranslate does paragraphs; with
`format` "html" each line of each text node is, and the markup is kept as it was written.

No HTTP here: `parse` takes the request's fields, `answer` builds the body.
"""

from __future__ import annotations

import email
import email.policy
import html
import html.parser
import urllib.parse
from dataclasses import dataclass
from typing import Any

from seq2seq.serve.protocol import BadRequest, Limits, Settings, check_lines

NAMES = {"cs": "Czech", "de": "German", "en": "English", "fr": "French", "ro": "Romanian"}


@dataclass(frozen=True)
class Request:
    lines: list[str]          # every line to translate, of every q item, in order
    settings: Settings
    items: list[list]         # per q item: its literal parts (str) and places in `lines` (int), in order
    batch: bool               # q was a list: translatedText is one too
    alternatives: int
    html: bool                # translations of text nodes are escaped back into the markup
    auto: bool                # source "auto": the answer names the language it assumed


def is_libretranslate(data: Any) -> bool:
    """A JSON body in this API (ours has no `q`)."""
    return isinstance(data, dict) and "q" in data


def parse_form(body: bytes, content_type: str) -> dict[str, str]:
    """A form body (urlencoded or multipart/form-data); a repeated field keeps its first value."""
    fields: dict[str, str] = {}
    if content_type.split(";")[0].strip().lower() == "multipart/form-data":
        message = email.message_from_bytes(b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body,
                                           policy=email.policy.HTTP)
        if not message.is_multipart():
            raise BadRequest(400, "the multipart form could not be read (no parts found for its boundary)")
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if name and name not in fields:
                fields[name] = _text(part.get_payload(decode=True) or b"")
        return fields
    for key, value in urllib.parse.parse_qsl(_text(body), keep_blank_values=True):
        fields.setdefault(key, value)
    return fields


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRequest(400, f"the form is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})")


def parse(data: dict, pair: tuple[str, str], defaults: Settings, limits: Limits) -> Request:
    """The lines and settings of a LibreTranslate /translate request for the model's `pair`."""
    for key in ("q", "source", "target"):
        if not data.get(key):
            raise BadRequest(400, f"Invalid request: missing {key} parameter")
    text_format = data.get("format") or "text"
    if text_format not in ("text", "html"):
        raise BadRequest(400, f"{text_format} format is not supported")
    source, target = data["source"], data["target"]
    if source not in (pair[0], "auto"):
        raise BadRequest(400, f"{source} is not supported (this server translates {pair[0]} to {pair[1]})")
    if target != pair[1]:
        raise BadRequest(400, f"{target} is not supported (this server translates {pair[0]} to {pair[1]})")
    q = data["q"]
    batch = isinstance(q, list)
    for i, item in enumerate(q if batch else [q]):
        if not isinstance(item, str):
            raise BadRequest(400, f"Invalid request: q{f'[{i}]' if batch else ''} must be a string")
    alternatives = _alternatives(data.get("alternatives"), limits)
    lines: list[str] = []
    html_format = text_format == "html"  # plain text is stripped, as LibreTranslate does
    items = [_template(item if html_format else item.strip(), html_format, lines) for item in (q if batch else [q])]
    check_lines(lines, [f"q line {k + 1}" for k in range(len(lines))], limits, what="q")
    nbest = alternatives + 1
    settings = Settings(max(defaults.beam, nbest), nbest, defaults.length_penalty, False)
    return Request(lines, settings, items, batch, alternatives, text_format == "html", source == "auto")


def _template(item: str, html: bool, lines: list[str]) -> list:
    """The item as literal parts and places in `lines` (appended to): each line of text (of each
    text node, for html) is translated on its own; whitespace around it and markup stay as they are."""
    parts: list = []
    for literal, text in (_html_parts(item) if html else [("", item)]):
        parts.append(literal)
        for k, line in enumerate(text.split("\n")):
            core = line.strip()
            start = line.find(core) if core else len(line)
            parts += ["\n"] if k else []
            parts += [line[:start]] + ([len(lines)] if core else []) + [line[start + len(core):]]
            if core:
                lines.append(core)
    return [p for p in parts if p != ""]


class _Markup(html.parser.HTMLParser):
    """(markup, text) pairs of an HTML fragment: tags, comments and declarations as they are
    written, text unescaped."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[tuple[str, str]] = []

    def _markup(self, raw: str) -> None:
        self.parts.append((raw, ""))

    def handle_starttag(self, tag, attrs):
        self._markup(self.get_starttag_text())

    handle_startendtag = handle_starttag

    def handle_endtag(self, tag):
        self._markup(f"</{tag}>")

    def handle_comment(self, data):
        self._markup(f"<!--{data}-->")

    def handle_decl(self, decl):
        self._markup(f"<!{decl}>")

    def handle_data(self, data):
        self.parts.append(("", data))


def _html_parts(fragment: str) -> list[tuple[str, str]]:
    parser = _Markup()
    parser.feed(fragment)
    parser.close()
    return parser.parts


def _alternatives(value: Any, limits: Limits) -> int:
    if value in (None, ""):
        return 0
    try:
        n = int(value)  # a form sends it as text
    except (TypeError, ValueError):
        n = -1
    if isinstance(value, (bool, float)) or not 0 <= n < limits.max_beam:
        raise BadRequest(400, f"Invalid request: alternatives must be an integer from 0 to {limits.max_beam - 1}")
    return n


def answer(request: Request, results: list[dict], pair: tuple[str, str]) -> dict:
    """The body for `results` (one per line, as protocol.decode gives them)."""
    def text(k: int, i: int) -> str:  # line i's (k+1)-th hypothesis, or its best where it has fewer
        nbest = results[i]["nbest"]
        t = (nbest[k] if k < len(nbest) else results[i])["text"]
        return html.escape(t, quote=False) if request.html else t

    texts, alternatives = [], []
    for item in request.items:
        render = [("".join(p if isinstance(p, str) else text(k, p) for p in item))
                  for k in range(request.alternatives + 1)]
        texts.append(render[0])
        alternatives.append(list(dict.fromkeys(t for t in render[1:] if t != render[0])))  # distinct, in order
    body: dict[str, Any] = {"translatedText": texts if request.batch else texts[0]}
    if request.alternatives:
        body["alternatives"] = alternatives if request.batch else alternatives[0]
    if request.auto:  # not detected: the one language this server translates from (confidence 0 says so)
        detected = {"language": pair[0], "confidence": 0.0}
        body["detectedLanguage"] = [detected] * len(texts) if request.batch else detected
    return body


def languages(pair: tuple[str, str]) -> list[dict]:
    """GET /languages: the model's source language with its one target, and the target language."""
    return [{"code": pair[0], "name": NAMES.get(pair[0], pair[0]), "targets": [pair[1]]},
            {"code": pair[1], "name": NAMES.get(pair[1], pair[1]), "targets": []}]
