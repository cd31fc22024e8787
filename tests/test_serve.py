"""`seq2seq serve`: request checks, dynamic batching, the HTTP server against `translate`, bad
input and clients that misbehave, the queue limit, the timeout and a graceful stop.

The batcher is tested with a fake decode function (no model, milliseconds); the server runs as a
real `seq2seq serve` process on 127.0.0.1 with the session's reverse-task model."""

import asyncio
import gzip
import json
import re
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import (CLI, NO_WORK_LIMIT, Server, assert_usage_error, cli_env, reverse_rows, run_cli,
                      skip_unless_ci, wait_until)

try:
    from seq2seq.serve import app, protocol
    from seq2seq.serve.batcher import Batcher, DecodeFailed, QueueFull
except ModuleNotFoundError as e:  # the serve extra is missing
    skip_unless_ci(f"seq2seq[serve] is not installed ({e.name}): pip install -e '.[serve]'")


# ---------------------------------------------------------------- request checks (no server)

DEFAULTS = protocol.Settings(beam=5, nbest=1, length_penalty=1.0, attention=False)
LIMITS = protocol.Limits(max_lines=10, max_line_chars=50, max_beam=8)


def parse(body) -> tuple:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return protocol.parse_request(raw, DEFAULTS, LIMITS)


def test_a_good_request_gets_its_lines_and_settings():
    assert parse({"text": "Ein Hund."}) == (["Ein Hund."], DEFAULTS)
    lines, s = parse({"texts": ["a", "", "b"], "beam": 3, "nbest": 2, "length_penalty": 0.6, "attention": True})
    assert lines == ["a", "", "b"]  # an empty line inside texts is translated as '' (as translate does)
    assert s == protocol.Settings(3, 2, 0.6, True)
    assert parse({"text": "x", "length_penalty": 0})[1].length_penalty == 0.0


@pytest.mark.parametrize("body, status, fragments", [
    (b"{not json", 400, ["not valid JSON", "line 1 column 2"]),
    (b'{"text": "\xff\xfe"}', 400, ["not valid UTF-8", "0xff", "offset 10"]),
    (b"[" * 100000 + b"]" * 100000, 400, ["nested too deeply"]),
    (["a"], 400, ["JSON object"]),
    ({"txt": "a"}, 400, ["unknown field 'txt'"]),
    ({}, 400, ['"text"', '"texts"']),
    ({"text": "a", "texts": ["b"]}, 400, ['one of "text"']),
    ({"text": 5}, 400, ["text must be a string", "a number"]),
    ({"text": "  "}, 400, ["text is empty"]),
    ({"texts": "a"}, 400, ["texts must be a list"]),
    ({"texts": []}, 400, ["texts is empty"]),
    ({"texts": ["a", None]}, 400, ["texts[1] must be a string", "null"]),
    ({"texts": ["a"] * 11}, 413, ["11 lines", "limit is 10"]),
    ({"texts": ["a", "x" * 51]}, 413, ["texts[1] has 51 characters", "limit is 50"]),
    ({"text": "a\x00b"}, 400, ["NUL"]),
    (b'{"texts": ["a", "x\\ud800y"]}', 400, ["texts[1]", "unpaired surrogate", "U+D800"]),
    (b'{"text": "a", "beam": 1' + b"0" * 5000 + b"}", 400, ["not usable JSON"]),
    ({"texts": ["a\nb"]}, 400, ["texts[0] contains a line break"]),
    ({"text": "a", "beam": 0}, 400, ["beam", "from 1 to 8", "got 0"]),
    ({"text": "a", "beam": 9}, 400, ["beam", "got 9"]),
    ({"text": "a", "beam": 2.5}, 400, ["beam must be an integer"]),
    ({"text": "a", "beam": True}, 400, ["beam must be an integer", "true"]),
    ({"text": "a", "beam": "5"}, 400, ["beam must be an integer", '"5"']),
    ({"text": "a", "beam": 2, "nbest": 3}, 400, ["nbest (3) must be <= beam (2)"]),
    ({"text": "a", "length_penalty": -0.1}, 400, ["length_penalty", "from 0 to 10"]),
    ({"text": "a", "length_penalty": 11}, 400, ["length_penalty"]),
    ({"text": "a", "length_penalty": "1"}, 400, ["length_penalty"]),
    ({"text": "a", "attention": 1}, 400, ["attention must be true or false"]),
], ids=["malformed", "utf8", "deep", "array", "unknown", "neither", "both", "text-type", "text-empty",
        "texts-type", "texts-empty", "item-type", "lines", "chars", "nul", "surrogate", "huge-int", "newline", "beam-0", "beam-high",
        "beam-float", "beam-bool", "beam-str", "nbest", "lp-neg", "lp-high", "lp-str", "attention"])
def test_bad_requests_name_the_field(body, status, fragments):
    with pytest.raises(protocol.BadRequest) as e:
        parse(body)
    assert e.value.status == status
    for fragment in fragments:
        assert fragment in str(e.value)
    assert "\n" not in str(e.value)


def test_long_values_are_shortened_in_messages():
    with pytest.raises(protocol.BadRequest) as e:
        parse({"text": "a", "beam": "9" * 1000})
    assert len(str(e.value)) < 120


# ---------------------------------------------------------------- the batcher (fake decode)


class FakeDecode:
    """Upper-cases lines, records each call; 'boom' raises; 'hold' blocks until `release` is set
    (and sets `started`), so that a test knows a decode is in progress without timing it; 'spin'
    works in steps, asking `stop` before each, until it says True (then it raises, as
    translate.Stopped does) or `release` is set."""

    def __init__(self):
        self.calls: list[tuple[list[str], object]] = []
        self.started, self.release = threading.Event(), threading.Event()
        self.stopped = threading.Event()

    def __call__(self, lines, settings, stop=lambda: False):
        self.calls.append((list(lines), settings))
        if "boom" in lines:
            raise ValueError("boom")
        if "hold" in lines:
            self.started.set()
            assert self.release.wait(30)
        if "spin" in lines:
            self.started.set()
            deadline = time.monotonic() + 30
            while not self.release.is_set():
                if stop():
                    self.stopped.set()
                    raise RuntimeError("stopped")
                assert time.monotonic() < deadline
                time.sleep(0.001)
        return [f"{line.upper()}/{settings}" for line in lines]

    async def decoding(self) -> None:
        """Returns once the 'hold' job is being decoded."""
        assert await asyncio.to_thread(self.started.wait, 30)


def run_async(coro):
    return asyncio.run(coro)


def test_requests_that_arrive_together_share_one_decode_call():
    fake = FakeDecode()

    async def main():
        b = Batcher(fake, max_wait=0.05)
        b.start()
        results = await asyncio.gather(b.submit(["a", "b"], 1), b.submit(["c"], 1), b.submit(["d"], 2))
        await b.close()
        return results

    assert run_async(main()) == [["A/1", "B/1"], ["C/1"], ["D/2"]]
    assert sorted(fake.calls, key=str) == [(["a", "b", "c"], 1), (["d"], 2)]  # one call per settings


def test_a_request_that_finds_the_server_idle_waits_max_wait_for_companions():
    fake = FakeDecode()

    async def main():
        b = Batcher(fake, max_wait=0.3)
        b.start()
        first = asyncio.ensure_future(b.submit(["a"], 0))
        await asyncio.sleep(0.02)
        assert not first.done()  # still waiting for companions
        companion = await b.submit(["b"], 0)  # comes within the window: decoded with it
        t0 = time.perf_counter()
        alone = await b.submit(["c"], 0)  # nobody comes: decoded alone once its max_wait is over
        waited = time.perf_counter() - t0
        await b.close()
        return await first, companion, alone, waited

    first, companion, alone, waited = run_async(main())
    assert (first, companion, alone) == (["A/0"], ["B/0"], ["C/0"])
    assert fake.calls == [(["a", "b"], 0), (["c"], 0)]
    assert 0.29 <= waited < 10  # it waited its 0.3 s, and then did not wait on


def test_while_one_batch_decodes_the_next_gathers_everything_queued():
    fake = FakeDecode()

    async def main():
        b = Batcher(fake, max_wait=0.0)
        b.start()
        first = asyncio.ensure_future(b.submit(["hold"], 0))
        await fake.decoding()
        rest = [asyncio.ensure_future(b.submit([f"x{i}"], 0)) for i in range(5)]
        await asyncio.sleep(0.05)
        fake.release.set()
        await asyncio.gather(first, *rest)
        await b.close()

    run_async(main())
    assert fake.calls == [(["hold"], 0), ([f"x{i}" for i in range(5)], 0)]


def test_batches_hold_at_most_max_batch_lines_and_a_larger_request_goes_alone():
    fake = FakeDecode()

    async def main():
        b = Batcher(fake, max_wait=0.05, max_batch_lines=3)
        b.start()
        await asyncio.gather(b.submit(["a", "b"], 0), b.submit(["c", "d"], 0), b.submit(["e"], 0),
                             b.submit(["f", "g", "h", "i"], 0))
        await b.close()

    run_async(main())
    assert [len(lines) for lines, _ in fake.calls] == [2, 3, 4]  # a+b; c+d+e; f..i alone
    assert sorted(x for lines, _ in fake.calls for x in lines) == list("abcdefghi")


def test_batches_hold_at_most_max_batch_work_and_a_larger_request_goes_alone():
    fake = FakeDecode()

    async def main():
        b = Batcher(fake, max_wait=0.05, max_batch_work=100)
        b.start()
        await asyncio.gather(b.submit(["a"], 0, work=60), b.submit(["b"], 0, work=50), b.submit(["c"], 0, work=50),
                             b.submit(["d"], 0, work=500), b.submit(["e"], 0, work=1))
        await b.close()

    run_async(main())
    assert [lines for lines, _ in fake.calls] == [["a"], ["b", "c"], ["d"], ["e"]]


def test_a_decode_whose_callers_all_left_stops_and_the_next_request_is_served(caplog):
    fake = FakeDecode()

    async def main():
        b = Batcher(fake, max_wait=0.0)
        b.start()
        leaver = asyncio.ensure_future(b.submit(["spin"], 0))
        await fake.decoding()
        leaver.cancel()
        next_one = await asyncio.wait_for(b.submit(["after"], 0), 10)  # not behind the spinning decode
        await b.close()
        return next_one, b.stopped

    with caplog.at_level("INFO", logger="seq2seq.serve"):
        assert run_async(main()) == (["AFTER/0"], 1)
    assert fake.stopped.is_set() and not fake.release.is_set()
    assert "stopped decoding 1 lines of 1 requests: every caller had gone" in caplog.text
    assert "Traceback" not in caplog.text


def test_a_decode_goes_on_while_one_of_its_callers_waits():
    fake = FakeDecode()

    async def main():
        b = Batcher(fake, max_wait=0.05)
        b.start()
        leaver = asyncio.ensure_future(b.submit(["spin"], 0))
        stayer = asyncio.ensure_future(b.submit(["x"], 0))
        await fake.decoding()
        leaver.cancel()
        await asyncio.sleep(0.2)
        assert not fake.stopped.is_set()  # the one who stays still wants the result
        fake.release.set()
        result = await stayer
        await b.close()
        return result

    assert run_async(main()) == ["X/0"]


def test_one_failing_request_does_not_fail_the_others_in_its_batch(caplog):
    fake = FakeDecode()

    async def main():
        b = Batcher(fake, max_wait=0.05)
        b.start()
        results = await asyncio.gather(b.submit(["a"], 0), b.submit(["boom"], 0), b.submit(["c"], 0),
                                       return_exceptions=True)
        await b.close()
        return results

    good, bad, other = run_async(main())
    assert good == ["A/0"] and other == ["C/0"]
    assert isinstance(bad, DecodeFailed)
    assert fake.calls[0] == (["a", "boom", "c"], 0)  # tried together first, then one by one


def test_a_decode_that_miscounts_its_results_fails_the_requests_with_a_logged_reason(caplog):
    def short(lines, settings, stop):  # one result too few: sliced among the jobs, answers would shift
        return [line.upper() for line in lines][:-1]

    async def main():
        b = Batcher(short, max_wait=0.05)
        b.start()
        results = await asyncio.gather(b.submit(["a"], 0), b.submit(["b", "c"], 0), return_exceptions=True)
        await b.close()
        return results

    assert all(isinstance(r, DecodeFailed) for r in run_async(main()))
    assert "decode returned 0 results for 1 lines" in caplog.text  # logged, with the reason
    assert "decoded one by one, 2 of them failed" in caplog.text


def test_a_batch_that_fails_whose_retries_succeed_is_logged(caplog):
    calls = []

    def flaky(lines, settings, stop):  # fails the first (batched) call only
        calls.append(lines)
        if len(calls) == 1:
            raise ValueError("transient")
        return [line.upper() for line in lines]

    async def main():
        b = Batcher(flaky, max_wait=0.05)
        b.start()
        results = await asyncio.gather(b.submit(["a"], 0), b.submit(["b"], 0))
        await b.close()
        return results

    assert run_async(main()) == [["A"], ["B"]]
    assert "a batch of 2 requests failed; decoded one by one, 0 of them failed" in caplog.text


def test_a_fault_of_the_batcher_itself_answers_its_requests_and_it_goes_on(caplog, monkeypatch):
    fake = FakeDecode()

    async def main():
        b = Batcher(fake, max_wait=0.0)
        real = b._decode_batch
        faults = [RuntimeError("a bug in the batcher")]

        async def buggy(batch):
            if faults:
                raise faults.pop()
            await real(batch)

        monkeypatch.setattr(b, "_decode_batch", buggy)
        b.start()
        first = await asyncio.gather(b.submit(["a"], 0), return_exceptions=True)
        second = await asyncio.wait_for(b.submit(["b"], 0), 10)  # the batcher still serves
        await b.close()
        return first, second

    (first,), second = run_async(main())
    assert isinstance(first, DecodeFailed) and "batcher failed" in str(first)
    assert second == ["B/0"]
    assert "the batcher failed on a batch of 1 requests" in caplog.text and "a bug in the batcher" in caplog.text


def test_the_queue_is_bounded_in_lines():
    fake = FakeDecode()

    async def main():
        b = Batcher(fake, max_wait=0.0, max_queue_lines=3)
        b.start()
        busy = asyncio.ensure_future(b.submit(["hold"], 0))
        await fake.decoding()  # what comes now waits in the queue
        queued = asyncio.ensure_future(b.submit(["a", "b"], 0))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull, match="holds 2 lines; the limit is 3"):
            await b.submit(["c", "d"], 0)
        last = asyncio.ensure_future(b.submit(["e"], 0))
        await asyncio.sleep(0)
        fake.release.set()
        fits = await asyncio.gather(busy, queued, last)
        await b.close()
        return fits

    assert run_async(main())[1:] == [["A/0", "B/0"], ["E/0"]]


def test_a_request_that_gives_up_is_not_decoded_and_frees_its_place():
    fake = FakeDecode()

    async def main():
        b = Batcher(fake, max_wait=0.0, max_queue_lines=2)
        b.start()
        busy = asyncio.ensure_future(b.submit(["hold"], 0))
        await fake.decoding()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(b.submit(["gave", "up"], 0), 0.01)
        assert b.queued_lines == 0
        fake.release.set()
        await asyncio.gather(busy, b.submit(["x", "y"], 0))
        await b.close()

    run_async(main())
    assert ["gave", "up"] not in [lines for lines, _ in fake.calls]


def test_close_decodes_what_is_queued_then_refuses_new_requests():
    fake = FakeDecode()

    async def main():
        b = Batcher(fake, max_wait=0.0)
        b.start()
        pending = [asyncio.ensure_future(b.submit([f"q{i}"], 0)) for i in range(4)]
        await asyncio.sleep(0)
        await b.close()
        with pytest.raises(QueueFull, match="shutting down"):
            await b.submit(["late"], 0)
        return [p.result() for p in pending]

    assert run_async(main()) == [[f"Q{i}/0"] for i in range(4)]


# ---------------------------------------------------------------- a real server


@pytest.fixture(scope="module")
def server(reverse_model, tmp_path_factory):
    s = Server(reverse_model, "--max-lines", 500, "--max-line-chars", 20000,
               log=tmp_path_factory.mktemp("serve") / "server.log")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def translator(reverse_model):
    from seq2seq.translate import Translator
    return Translator.load(reverse_model)


def rows(n: int, seed: int) -> list[str]:
    return reverse_rows(n, seed, lengths=(2, 9))[0]


def test_attention_for_too_many_hypotheses_is_refused_at_once_and_memory_stays(server):
    before = server.rss_mib()
    start = time.monotonic()
    status, _, body = server.request("POST", "/translate", {"texts": rows(256, seed=4), "beam": 16, "nbest": 16,
                                                            "attention": True})
    assert status == 413 and "--max-attention-hypotheses" in body["error"] and "asks 4096" in body["error"]
    assert time.monotonic() - start < 1.0
    assert server.rss_mib() - before < 20  # nothing was decoded or built
    status, body = server.translate({"texts": rows(4, seed=4), "beam": 8, "nbest": 8, "attention": True})
    assert status == 200 and all(h["attention"] for line in body["translations"] for h in line["nbest"])
    status, body = server.translate({"texts": rows(256, seed=4), "beam": 4, "nbest": 4})  # no attention: no cap
    assert status == 200 and len(body["translations"]) == 256


def test_health_describes_the_model(server):
    status, _, health = server.request("GET", "/health")
    assert status == 200
    assert health["status"] == "ok" and health["version"]
    assert health["models"] == ["exp/checkpoints/best.pt"]
    assert health["model"]["encoder"] == "2-layer bidirectional LSTM, 64 units"
    assert health["defaults"]["beam"] == 3  # the recipe's decode.beam
    assert health["limits"]["max_lines"] == 500


@pytest.mark.parametrize("settings", [{}, {"beam": 1}, {"beam": 5, "length_penalty": 0.2}],
                         ids=["recipe", "greedy", "beam5"])
def test_translations_equal_translate_for_the_same_settings(server, translator, settings):
    """Texts, and scores, which show that the settings were used: the model is perfect on this
    task, so the texts alone would not tell a beam or a length penalty that was ignored."""
    lines = rows(60, seed=7)
    expected = [nbest[0] for nbest in translator.translate_with_details(lines, **settings)]
    status, one_request = server.translate({"texts": lines, **settings})
    assert status == 200
    with ThreadPoolExecutor(16) as pool:  # one request per line: batched with whatever arrives with it
        answers = list(pool.map(lambda line: server.translate({"text": line, **settings}), lines))
    for got in (one_request["translations"], [a[1]["translations"][0] for a in answers]):
        assert [t["text"] for t in got] == [t.text for t in expected]
        assert [t["score"] for t in got] == pytest.approx([t.score for t in expected], abs=1e-4)
    # and the settings make a difference here: other settings give other scores
    other = translator.translate_with_details(lines[:5], **({"beam": 3, "length_penalty": 1.5} if settings
                                                            else {"beam": 1}))
    assert [n[0].score for n in other] != pytest.approx([t.score for t in expected[:5]], abs=1e-3)


def test_nbest_scores_and_attention_equal_translate_with_details(server, translator):
    lines = rows(8, seed=3)
    details = translator.translate_with_details(lines, return_attention=True, beam=4, nbest=3)
    status, body = server.translate({"texts": lines, "beam": 4, "nbest": 3, "attention": True})
    assert status == 200
    for line, nbest in zip(body["translations"], details):
        assert line["text"] == nbest[0].text
        assert line["source_pieces"] == nbest[0].src_tokens
        assert [h["text"] for h in line["nbest"]] == [t.text for t in nbest]
        assert [h["pieces"] for h in line["nbest"]] == [t.tokens for t in nbest]
        for h, t in zip(line["nbest"], nbest):
            assert h["score"] == pytest.approx(t.score, abs=1e-4)
            assert len(h["attention"]) == len(t.tokens) + 1 and len(h["attention"][0]) == len(t.src_tokens) + 1
            for got, want in zip(h["attention"], t.attention.tolist()):
                assert got == pytest.approx(want, abs=1e-3)
            assert all(sum(row) == pytest.approx(1.0, abs=1e-2) for row in h["attention"])


def test_long_lines_are_chunked_as_translate_does(server, translator):
    long_line = " ".join("abcdefghij"[i % 10] for i in range(700))  # 700 pieces > max_source_len 250
    expected = translator.translate_with_details([long_line, "a b"], return_attention=True)
    status, body = server.translate({"texts": [long_line, "a b"], "attention": True})
    assert status == 200
    assert body["translations"][0]["text"] == expected[0][0].text
    assert body["translations"][0]["nbest"][0]["attention"] is None  # chunks have no single map
    assert body["translations"][1]["text"] == expected[1][0].text




def raw_exchange(port: int, data: bytes, close_after_send: bool = False, pause: float = 0.0) -> bytes:
    """Send raw bytes on a fresh connection; return what the server answers (b'' if nothing)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        if pause:
            time.sleep(pause)
        if close_after_send:
            return b""
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_bad_input_gets_a_4xx_and_the_server_serves_everyone_else(server):
    before = server.log()
    huge = "x" * 1_000_000
    bad = [
        (b"{oops", 400), (b'{"text": "\xc3\x28"}', 400), (b'{"text": "a\\u0000b"}', 400),
        (json.dumps({"texts": []}).encode(), 400), (json.dumps({"text": 3}).encode(), 400),
        (json.dumps({"text": huge}).encode(), 413), (json.dumps({"texts": ["a b"] * 10_000}).encode(), 413),
        (json.dumps({"text": "a", "beam": 99}).encode(), 400), (b"x" * (2 << 20), 413),
    ]
    good_lines = rows(20, seed=11)
    with ThreadPoolExecutor(8) as pool:  # bad and good requests at the same time
        bad_answers = [pool.submit(server.translate, body) for body, _ in bad]
        good_answers = [pool.submit(server.translate, {"text": line}) for line in good_lines]
        # a client that disconnects in the middle of its body, and one that sends half a header
        pool.submit(raw_exchange, server.port, b"POST /translate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"te",
                    True).result()
        pool.submit(raw_exchange, server.port, b"POST /transl", True).result()
        for (body, status), answer in zip(bad, bad_answers):
            got, data = answer.result()
            assert got == status, (body[:60], data)
            assert set(data) == {"error"} and "\n" not in data["error"]
        assert all(a.result()[0] == 200 and a.result()[1]["translations"][0]["text"] for a in good_answers)
    assert server.translate({"text": "a b c"})[0] == 200
    log = server.log()[len(before):]
    assert "Traceback" not in log
    rejected = [line for line in log.splitlines() if "POST /translate: 4" in line]
    assert len(rejected) == len(bad) + 1  # one line per rejected request, and one for the client that left
    assert sum("disconnected before sending its whole request" in line for line in rejected) == 1


def test_unknown_paths_and_methods_are_4xx(server):
    assert server.request("GET", "/nope")[0] == 404
    assert server.request("GET", "/translate")[0] == 405


def test_the_page_and_its_assets_are_served_by_the_server(server):
    status, headers, page = server.request("GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert sorted(assets) == ["assets/app.js", "assets/style.css"]
    assert "http" not in " ".join(assets)  # nothing from the network
    for asset in assets:
        assert server.request("GET", "/" + asset)[0] == 200


# ---------------------------------------------------------------- limits, timeout, stop


def test_a_full_queue_answers_503_with_retry_after(reverse_model, tmp_path):
    s = Server(reverse_model, "--max-queue-lines", 2, "--max-batch-lines", 1, "--max-lines", 2,
               log=tmp_path / "server.log")
    try:
        lines = rows(40, seed=2)
        with ThreadPoolExecutor(40) as pool:
            answers = list(pool.map(lambda line: s.request("POST", "/translate", {"text": line, "beam": 16}), lines))
        statuses = [a[0] for a in answers]
        assert set(statuses) <= {200, 503} and 503 in statuses and 200 in statuses
        for status, headers, body in answers:
            if status == 503:
                assert headers["retry-after"] == "1" and "queue holds" in body["error"]
        assert s.request("POST", "/translate", {"text": lines[0]})[0] == 200  # and it serves again
    finally:
        assert s.stop() == 0
    assert "Traceback" not in s.log()


def test_a_request_slower_than_the_timeout_gets_503(reverse_model, tmp_path):
    """The body (160 kB) arrives well within the timeout, even on a loaded machine (else it would be
    a 408); decoding it takes several times the timeout (3 s on a fast CPU)."""
    s = Server(reverse_model, "--timeout", 0.5, "--max-lines", 2000, *NO_WORK_LIMIT, log=tmp_path / "server.log")
    try:
        texts = reverse_rows(2000, 5, lengths=(30, 40))[0]
        status, headers, body = s.request("POST", "/translate", {"texts": texts, "beam": 16})
        assert status == 503 and "0.5 s timeout" in body["error"] and headers["retry-after"] == "1"
        wait_until(lambda: s.health()["queue"]["decodes_stopped"] == 1)  # the decode nobody waits for stops
        assert "every caller had gone" in s.log()
    finally:
        assert s.stop() == 0


def test_a_slow_client_is_cut_off_at_the_timeout(reverse_model, tmp_path):
    s = Server(reverse_model, "--timeout", 0.5, log=tmp_path / "server.log")
    try:
        body = b'{"text": "a b c"}'
        head = f"POST /translate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        answer = raw_exchange(s.port, head + body[:5], pause=1.5)  # the rest never comes
        assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive" in answer
        assert s.request("POST", "/translate", {"text": "a b"})[0] == 200
    finally:
        assert s.stop() == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_accepting_answers_what_was_accepted_and_exits_0(reverse_model, tmp_path, sig):
    s = Server(reverse_model, "--max-lines", 200, "--max-batch-lines", 200, log=tmp_path / "server.log")
    body = {"texts": rows(200, seed=9), "beam": 8}
    with ThreadPoolExecutor(4) as pool:
        answers = [pool.submit(s.request, "POST", "/translate", body) for _ in range(4)]
        deadline = time.monotonic() + 60
        while True:  # until all 4 are in, at least one still queued (decoding is one at a time)
            queue = s.request("GET", "/health")[2]["queue"]
            if queue["requests"] + queue["lines"] // 200 >= 4 and queue["lines"] > 0:
                break
            assert time.monotonic() < deadline and not any(a.done() for a in answers), queue
            time.sleep(0.002)
        s.proc.send_signal(sig)
        refused = False
        while not refused and time.monotonic() < deadline:  # it stops accepting (at once, or nearly)
            try:
                socket.create_connection(("127.0.0.1", s.port), timeout=5).close()
                time.sleep(0.02)
            except OSError:
                refused = True
        rc = s.stop(None, timeout=120)
        results = [a.result() for a in answers]
    assert refused
    assert rc == 0
    assert [r[0] for r in results] == [200] * 4  # the queued requests were answered too
    assert all(len(r[2]["translations"]) == 200 for r in results)
    assert f"stopped by {signal.Signals(sig).name}" in s.log()
    assert "Traceback" not in s.log()


def test_a_client_that_leaves_while_queued_is_dropped_and_logged(reverse_model, tmp_path):
    s = Server(reverse_model, "--max-lines", 300, "--max-batch-lines", 300, log=tmp_path / "server.log")
    try:
        heavy = json.dumps({"texts": rows(300, seed=4), "beam": 12}).encode()
        with ThreadPoolExecutor(1) as pool:
            busy = pool.submit(s.translate, heavy)
            deadline = time.monotonic() + 60
            while s.request("GET", "/health")[2]["queue"]["requests"] < 1:  # the heavy one is decoding
                assert time.monotonic() < deadline
                time.sleep(0.002)
            leaver = json.dumps({"texts": rows(5, seed=6)}).encode()
            raw_exchange(s.port, b"POST /translate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(leaver), leaver), close_after_send=True, pause=0.05)
            assert busy.result()[0] == 200
        while "dropped" not in s.log():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert s.request("GET", "/health")[2]["queue"]["requests"] == 1  # the leaver was never decoded
        assert s.request("POST", "/translate", {"text": "a b"})[0] == 200
    finally:
        assert s.stop() == 0
    assert "Traceback" not in s.log()


def test_accepted_connections_send_without_delay():
    """The server binds its own socket; asyncio sets TCP_NODELAY on what it accepts only if the
    socket says it is TCP. Without it, Nagle's algorithm added 40 ms to every answer."""
    async def main():
        sock = app._listen("127.0.0.1", 0)
        accepted = asyncio.get_running_loop().create_future()

        class Protocol(asyncio.Protocol):
            def connection_made(self, transport):
                accepted.set_result(transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP,
                                                                                  socket.TCP_NODELAY))
        server = await asyncio.get_running_loop().create_server(Protocol, sock=sock)
        _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        nodelay = await asyncio.wait_for(accepted, 10)
        writer.close()
        server.close()
        return nodelay

    assert run_async(main()) == 1


def test_a_busy_port_is_a_one_line_error(reverse_model, server):
    p = run_cli("serve", reverse_model, "--port", server.port)
    assert_usage_error(p.returncode, p.stderr)
    assert f"cannot listen on 127.0.0.1:{server.port}" in p.stderr


def test_a_model_whose_beam_is_above_max_beam_is_refused(reverse_model):
    p = run_cli("serve", reverse_model, "--port", 0, "--max-beam", 2)  # the recipe's beam is 3
    assert_usage_error(p.returncode, p.stderr)
    assert "decode.beam (3) is above --max-beam (2)" in p.stderr


def test_serve_without_the_extra_says_what_to_install(reverse_model, tmp_path):
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\nclass B:\n    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('uvicorn', 'starlette'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, B())\n")
    env = cli_env()
    env["PYTHONPATH"] = f"{blocker}:{env['PYTHONPATH']}"
    p = subprocess.run([*CLI, "serve", str(reverse_model), "--port", "0"], capture_output=True, text=True,
                       env=env, timeout=60)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "pip install 'seq2seq[serve]'" in p.stderr and len(p.stderr.splitlines()) == 1


@pytest.mark.parametrize("options", [["--port", "70000"], ["--timeout", "0"], ["--timeout", "inf"],
                                     ["--max-wait-ms", "-1"], ["--max-wait-ms", "inf"], ["--max-lines", "0"],
                                     ["--max-lines", "300", "--max-queue-lines", "200"], ["--header-timeout", "0"],
                                     ["--max-request-work", "0"]])
def test_serve_rejects_bad_options_before_loading_the_model(tmp_path, options):
    option = options[0]
    p = run_cli("serve", tmp_path / "missing", *options)
    assert p.returncode == 2 and option in p.stderr and len(p.stderr.splitlines()) == 1


def test_every_limit_is_one_flag_whose_default_is_the_limits_default():
    import dataclasses
    from seq2seq.cli import SERVE_LIMITS, build_parser
    assert list(SERVE_LIMITS) == [f.name for f in dataclasses.fields(protocol.Limits)]
    args = build_parser().parse_args(["serve", "m"])
    assert protocol.Limits(**{name: getattr(args, name) for name in SERVE_LIMITS}) == protocol.Limits()
    args = build_parser().parse_args(["serve", "m", "--max-request-work", "7", "--header-timeout", "2.5"])
    limits = protocol.Limits(**{name: getattr(args, name) for name in SERVE_LIMITS})
    assert (limits.max_request_work, limits.header_timeout, limits.max_lines) == (7, 2.5, protocol.Limits.max_lines)


# ---------------------------------------------------------------- real Multi30K text


@pytest.mark.parametrize("precision", ["float32", "bfloat16", "int8"])
def test_serve_answers_as_translate_on_multi30k_test_lines(multi30k_model, multi30k_dir, tmp_path, precision):
    with gzip.open(multi30k_dir / "test_2016_flickr.de.gz", "rt", encoding="utf-8") as f:
        lines = [next(f).rstrip("\n") for _ in range(100)]
    (tmp_path / "src.de").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    p = run_cli("translate", multi30k_model, "-i", tmp_path / "src.de", "--precision", precision)
    assert p.returncode == 0, p.stderr
    expected = p.stdout.split("\n")[:-1]
    assert len(set(expected)) > 25  # (52 distinct lines after 300 steps, 90 after 500, on a Xeon)
    s = Server(multi30k_model, "--precision", precision, log=tmp_path / "server.log")
    try:
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda line: s.translate({"text": line}), lines))
    finally:
        assert s.stop() == 0
    assert [status for status, _ in answers] == [200] * 100
    assert [body["translations"][0]["text"] for _, body in answers] == expected
