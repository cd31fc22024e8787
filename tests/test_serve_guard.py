"""`seq2seq serve` against one client that would stall everyone, and against what a foreign web page
can send: the work bound, decodes stopped when their callers leave, slow headers, Host, Origin and
Content-Type. The server is a real `seq2seq serve` process with the session's reverse-task model."""

import json
import select
import socket
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import NO_WORK_LIMIT, Server, reverse_rows, skip_unless_ci, wait_until

try:
    from seq2seq.serve.guard import Hosts
except ModuleNotFoundError as e:  # the serve extra is missing
    skip_unless_ci(f"seq2seq[serve] is not installed ({e.name}): pip install -e '.[serve]'")

APP = "https://app.example"


@pytest.fixture(scope="module")
def server(reverse_model, tmp_path_factory):
    s = Server(reverse_model, "--max-lines", 500, "--max-line-chars", 20000, "--allowed-origin", APP,
               log=tmp_path_factory.mktemp("guard") / "server.log")
    yield s
    assert s.stop() == 0


def decoded(server) -> int:
    return server.health()["queue"]["requests"]


# ---------------------------------------------------------------- point 1: the work of one request


def test_an_oversized_request_is_refused_at_once_naming_the_limit(server):
    """200 lines of 5,000 characters at beam 16: about 8 million units of work, minutes of the decode
    thread. It is refused before anything is decoded; a normal request still goes through."""
    line = " ".join("abcdefghij"[i % 10] for i in range(2500))[:5000]
    before = decoded(server)
    start = time.monotonic()
    status, body = server.translate({"texts": [line] * 200, "beam": 16})
    assert status == 413, body
    assert "--max-request-work" in body["error"] and "limit is 50,000" in body["error"]
    assert time.monotonic() - start < 1.0
    assert decoded(server) == before
    status, body = server.translate({"texts": reverse_rows(20, 3)[0], "beam": 16})
    assert status == 200 and len(body["translations"]) == 20


def test_a_request_behind_one_whose_client_left_is_answered_in_time(reverse_model, tmp_path):
    """A client sends 4,000 lines at beam 16 (many seconds of decoding on any CPU here) and
    disconnects once its decode has started; the decode stops between two steps, so the next
    client is answered at once instead of after it."""
    s = Server(reverse_model, "--max-lines", 4000, "--max-queue-lines", 4000, "--max-batch-lines", 4000,
               *NO_WORK_LIMIT, log=tmp_path / "server.log")
    try:
        heavy = json.dumps({"texts": reverse_rows(4000, 5, lengths=(40, 50))[0], "beam": 16}).encode()
        with socket.create_connection(("127.0.0.1", s.port), timeout=30) as sock:
            sock.sendall(b"POST /translate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(heavy), heavy))
            wait_until(lambda: decoded(s) == 1)  # its decode has started
        start = time.monotonic()
        status, body = s.translate({"text": "a b c"})
        waited = time.monotonic() - start
        assert status == 200 and body["translations"][0]["text"] == "c b a"
        assert waited < 4.0, waited  # decoding all of it takes many times that
        wait_until(lambda: s.health()["queue"]["decodes_stopped"] == 1)
        assert "stopped decoding 4000 lines of 1 requests: every caller had gone" in s.log()
    finally:
        assert s.stop() == 0
    assert "Traceback" not in s.log()


def test_batches_are_bounded_in_work(reverse_model, tmp_path):
    """--max-batch-work 100: requests of ~40 units each are decoded two at a time, not all together."""
    s = Server(reverse_model, "--max-batch-work", 100, "--max-wait-ms", 200, log=tmp_path / "server.log")
    try:
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda i: s.translate({"text": "a b c d e f g", "beam": 5}), range(6)))
        assert [status for status, _ in answers] == [200] * 6
        queue = s.health()["queue"]
        assert queue["requests"] == 6 and queue["batches"] >= 3
    finally:
        assert s.stop() == 0


# ---------------------------------------------------------------- point 4: slow headers


def test_slow_header_clients_are_cut_off_while_others_are_served(reverse_model, tmp_path):
    """Eight clients take every connection (--max-connections 8) and send their headers a byte at
    a time; after --header-timeout (1 s) they are cut off and everybody else gets in."""
    s = Server(reverse_model, "--header-timeout", 1, "--max-connections", 8, log=tmp_path / "server.log")
    cut: list[float] = []

    def trickle() -> None:
        with socket.create_connection(("127.0.0.1", s.port), timeout=30) as sock:
            start = time.monotonic()
            for byte in b"POST /translate HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 150:
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    break
                if select.select([sock], [], [], 0.1)[0]:  # the server spoke (408) or closed
                    break
            else:
                return
            cut.append(time.monotonic() - start)

    try:
        with ThreadPoolExecutor(8) as pool:
            slow = [pool.submit(trickle) for _ in range(8)]
            time.sleep(0.3)
            start = time.monotonic()
            while s.request("GET", "/health", timeout=30)[0] != 200:
                assert time.monotonic() - start < 6, "never served while the slow clients were there"
                time.sleep(0.05)
            for f in slow:
                f.result()
        assert len(cut) == 8 and max(cut) < 6, cut  # not after their 15 s of trickling
        assert "no request headers within the 1 s header timeout" in s.log()
        assert s.translate({"text": "a b"})[0] == 200
    finally:
        assert s.stop() == 0


@pytest.mark.parametrize("head", [b"Content-Type: application/json\r\nContent-Length: 100000000",  # 413
                                  b"Content-Type: text/plain\r\nContent-Length: 1000"],            # 415
                         ids=["over-the-body-limit", "text-plain"])
def test_a_refused_body_is_not_waited_for(server, head):
    """A request refused before its body was read has its connection closed with the answer: a
    client cannot keep the connection by trickling the body it was refused."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /translate HTTP/1.1\r\nHost: 127.0.0.1\r\n" + head + b"\r\n\r\n{")
        start, data = time.monotonic(), b""
        while True:
            assert time.monotonic() - start < 5, data
            try:
                if select.select([sock], [], [], 0.2)[0]:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break  # closed by the server
                    data += chunk
                else:
                    sock.sendall(b" ")  # a byte of body every 0.2 s
            except OSError:
                break
    assert data.split(b" ")[1] in (b"413", b"415"), data


# ---------------------------------------------------------------- point 5: Host, Origin, Content-Type


def test_a_foreign_host_is_refused(server):
    """DNS rebinding: a page on attacker.example whose name now points at 127.0.0.1 sends its own
    name as Host."""
    for path in ("/", "/health", "/languages"):
        status, _, body = server.request("GET", path, headers={"Host": f"attacker.example:{server.port}"})
        assert status == 400 and "attacker.example" in body["error"] and "--allowed-host" in body["error"]
    for host in (f"127.0.0.1:{server.port}", f"localhost:{server.port}", "localhost"):
        assert server.request("GET", "/health", headers={"Host": host})[0] == 200


def test_a_foreign_origin_is_refused_before_anything_is_decoded(server):
    before = decoded(server)
    form = urllib.parse.urlencode({"q": "a b c", "source": "de", "target": "en"}).encode()
    for origin in ("http://attacker.example", "null", f"http://127.0.0.1:{server.port + 1}"):
        status, _, body = server.request("POST", "/translate", json.dumps({"text": "a b"}).encode(),
                                  {"Content-Type": "application/json", "Origin": origin})
        assert status == 403 and "--allowed-origin" in body["error"], (origin, body)
        status, _, body = server.request("POST", "/translate", form,  # a plain HTML form's post
                                  {"Content-Type": "application/x-www-form-urlencoded", "Origin": origin})
        assert status == 403, (origin, body)
    assert decoded(server) == before
    status, _, body = server.request("POST", "/translate", json.dumps({"text": "a b"}).encode(),
                              {"Content-Type": "application/json", "Origin": f"http://127.0.0.1:{server.port}"})
    assert status == 200 and body["translations"][0]["text"] == "b a"  # the server's own page


def test_the_json_endpoint_wants_application_json(server):
    before = decoded(server)
    for kind in ("text/plain", "application/xml", None):
        headers = {"Content-Type": kind} if kind else {}
        status, _, body = server.request("POST", "/translate", json.dumps({"text": "a b"}).encode(), headers)
        assert status == 415 and "application/json" in body["error"], (kind, body)
    assert decoded(server) == before
    status, _, _ = server.request("POST", "/translate", json.dumps({"text": "a b"}).encode(),
                           {"Content-Type": "application/json; charset=utf-8"})
    assert status == 200


def test_an_allowed_origin_gets_cors_headers(server):
    status, headers, _ = server.request("OPTIONS", "/translate", headers={
        "Origin": APP, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"})
    assert status == 204 and headers["access-control-allow-origin"] == APP
    assert "POST" in headers["access-control-allow-methods"]
    status, headers, body = server.request("POST", "/translate", json.dumps({"text": "a b"}).encode(),
                                    {"Content-Type": "application/json", "Origin": APP})
    assert status == 200 and headers["access-control-allow-origin"] == APP
    status, headers, _ = server.request("OPTIONS", "/translate", headers={
        "Origin": "http://attacker.example", "Access-Control-Request-Method": "POST"})
    assert status == 403 and "access-control-allow-origin" not in headers


@pytest.mark.parametrize("listen, extra, host, ok", [
    ("127.0.0.1", (), "127.0.0.1:8080", True), ("127.0.0.1", (), "localhost", True),
    ("127.0.0.1", (), "[::1]:8080", True), ("127.0.0.1", (), "evil.example:8080", False),
    ("127.0.0.1", (), "10.0.0.7", False), ("127.0.0.1", (), "", False),
    ("0.0.0.0", (), "10.0.0.7:8080", True), ("0.0.0.0", (), "mt.example.org", False),
    ("0.0.0.0", ("mt.example.org",), "MT.example.org:443", True), ("10.0.0.7", (), "10.0.0.7", True),
    ("10.0.0.7", (), "127.0.0.1", False), ("10.0.0.7", ("*",), "anything.example", True),
])
def test_hosts(listen, extra, host, ok):
    assert Hosts.for_listener(listen, extra).allow(host) is ok


def test_work_is_source_pieces_times_beam():
    from seq2seq.serve.protocol import BadRequest, Limits, check_work
    limits = Limits(max_request_work=64)
    assert check_work([10, 0, 5], 4, limits) == 64  # an empty line still costs a step
    with pytest.raises(BadRequest, match="at least 16 source pieces x beam 5 = 80 units") as e:
        check_work([11, 5], 5, limits, at_least=True)
    assert e.value.status == 413
