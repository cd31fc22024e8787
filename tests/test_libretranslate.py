"""The LibreTranslate API of `seq2seq serve`: its own Python client (libretranslatepy, from PyPI)
translates Multi30K test lines through the server exactly as `seq2seq translate` does; the JSON
form its other clients send; its error shape. The request checks run without a server too."""

import gzip
import html
import json
import re
import urllib.error
import urllib.parse

import pytest

from conftest import Server, multi30k_path, run_cli, skip_unless_ci

try:
    from libretranslatepy import LibreTranslateAPI
    from seq2seq.serve import libretranslate
    from seq2seq.serve.protocol import BadRequest, Limits, Settings
except ModuleNotFoundError as e:  # the dev extra is missing
    skip_unless_ci(f"{e.name} is not installed: pip install -e '.[dev]'")

N_LINES = 40


@pytest.fixture(scope="module")
def lines():
    with gzip.open(multi30k_path() / "test_2016_flickr.de.gz", "rt", encoding="utf-8") as f:
        return [next(f).rstrip("\n") for _ in range(N_LINES)]


@pytest.fixture(scope="module")
def expected(multi30k_model, lines, tmp_path_factory):
    """`seq2seq translate` of the lines, with the model's own settings."""
    src = tmp_path_factory.mktemp("lt") / "src.de"
    src.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    p = run_cli("translate", multi30k_model, "-i", src)
    assert p.returncode == 0, p.stderr
    return p.stdout.split("\n")[:-1]


@pytest.fixture(scope="module")
def server(multi30k_model, tmp_path_factory):
    s = Server(multi30k_model, log=tmp_path_factory.mktemp("lt-server") / "server.log")
    yield s
    assert s.stop() == 0


def test_the_libretranslate_client_translates_as_translate_does(server, lines, expected):
    assert len(set(expected)) > 10  # the model says different things about different sentences
    client = LibreTranslateAPI(server.url)
    assert [client.translate(line, "de", "en") for line in lines] == expected
    keyed = LibreTranslateAPI(server.url, api_key="any-key")  # accepted, and not checked: no authentication
    assert keyed.translate(lines[0], "de", "en") == expected[0]
    assert client.languages() == [{"code": "de", "name": "German", "targets": ["en"]},
                                  {"code": "en", "name": "English", "targets": []}]


def test_the_client_gets_libretranslate_errors(server):
    client = LibreTranslateAPI(server.url)
    with pytest.raises(urllib.error.HTTPError) as e:
        client.translate("Ein Hund.", "de", "fr")
    assert e.value.code == 400
    assert json.loads(e.value.read())["error"].startswith("fr is not supported")


def post(server, body: dict) -> tuple[int, dict]:
    status, _, data = server.request("POST", "/translate", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    return status, data


def test_json_requests_lists_alternatives_and_paragraphs(server, lines, expected):
    status, body = post(server, {"q": lines[:5], "source": "de", "target": "en", "format": "text"})
    assert status == 200 and body == {"translatedText": expected[:5]}
    status, body = post(server, {"q": "\n".join(lines[:3]), "source": "de", "target": "en"})
    assert status == 200 and body["translatedText"] == "\n".join(expected[:3])  # line by line, put back
    status, body = post(server, {"q": lines[0], "source": "de", "target": "en", "alternatives": 2})
    assert status == 200 and body["translatedText"] == expected[0]  # nbest 3 within the same beam of 5
    alternatives = body["alternatives"]  # other texts (two segmentations can spell one text)
    assert 1 <= len(alternatives) <= 2 and expected[0] not in alternatives and len(set(alternatives)) == len(alternatives)
    status, body = post(server, {"q": ["Ein Hund.", "   "], "source": "auto", "target": "en", "alternatives": ""})
    assert status == 200 and body["translatedText"][1] == "" and "alternatives" not in body
    assert body["detectedLanguage"] == [{"language": "de", "confidence": 0.0}] * 2


def test_html_keeps_its_markup_and_translates_each_text_node(server, lines, expected):
    q = f'<p class="x">{lines[0]}<br/>{lines[1]}</p> <p>&amp;</p><a href="/u">{lines[2]}</a><!-- c -->'
    status, body = post(server, {"q": q, "source": "de", "target": "en", "format": "html"})
    assert status == 200
    amp = html.escape(post(server, {"q": "&", "source": "de", "target": "en"})[1]["translatedText"], quote=False)
    assert body["translatedText"] == (f'<p class="x">{expected[0]}<br/>{expected[1]}</p> <p>{amp}</p>'
                                      f'<a href="/u">{expected[2]}</a><!-- c -->')


def test_a_multipart_form_is_a_libretranslate_request(server, lines, expected):
    fields = {"q": lines[0], "source": "de", "target": "en", "api_key": ""}
    body = "".join(f'--b0undary\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
                   for k, v in fields.items()) + "--b0undary--\r\n"
    status, _, data = server.request("POST", "/translate", body.encode(),
                                     {"Content-Type": "multipart/form-data; boundary=b0undary"})
    assert status == 200 and data == {"translatedText": expected[0]}


@pytest.mark.parametrize("fields, message", [
    ({"source": "de", "target": "en"}, "Invalid request: missing q parameter"),
    ({"q": "", "source": "de", "target": "en"}, "Invalid request: missing q parameter"),
    ({"q": "Hallo", "target": "en"}, "Invalid request: missing source parameter"),
    ({"q": "Hallo", "source": "de"}, "Invalid request: missing target parameter"),
    ({"q": "Hallo", "source": "es", "target": "en"}, "es is not supported"),
    ({"q": "Hallo", "source": "de", "target": "en", "format": "pdf"}, "pdf format is not supported"),
    ({"q": "Hallo", "source": "de", "target": "en", "alternatives": "many"}, "alternatives must be an integer"),
    ({"q": ["Hallo", 3], "source": "de", "target": "en"}, "q[1] must be a string"),
])
def test_bad_requests_get_a_400_in_libretranslates_shape(fields, message):
    defaults = Settings(beam=5, nbest=1, length_penalty=1.0, attention=False)
    with pytest.raises(BadRequest, match=re.escape(message)) as e:
        libretranslate.parse(fields, ("de", "en"), defaults, Limits())
    assert e.value.status == 400


def test_a_form_keeps_each_fields_first_value_and_its_limits_hold():
    fields = libretranslate.parse_form(urllib.parse.urlencode([("q", "a b"), ("q", "c"), ("source", "de"),
                                                                ("target", "en"), ("api_key", "")]).encode(),
                                       "application/x-www-form-urlencoded")
    assert fields == {"q": "a b", "source": "de", "target": "en", "api_key": ""}
    defaults = Settings(beam=5, nbest=1, length_penalty=0.6, attention=False)
    request = libretranslate.parse({**fields, "alternatives": "3"}, ("de", "en"), defaults, Limits())
    assert request.settings == Settings(beam=5, nbest=4, length_penalty=0.6, attention=False)
    with pytest.raises(BadRequest, match="q line 1 has 6 characters; the limit is 5") as e:
        libretranslate.parse(fields | {"q": "abcdef"}, ("de", "en"), defaults, Limits(max_line_chars=5))
    assert e.value.status == 413
    with pytest.raises(BadRequest, match="not valid UTF-8"):
        libretranslate.parse_form(b"q=\xff", "application/x-www-form-urlencoded")
    with pytest.raises(BadRequest, match="q has 3 lines; the limit is 2") as e:
        libretranslate.parse(fields | {"q": "a\nb\nc"}, ("de", "en"), defaults, Limits(max_lines=2))
