"""`seq2seq serve` under load: throughput and latency at 1, 8, 32 and 128 concurrent clients, against
offline batched `translate` of the same sentences in one process; every answer checked.

    python bench/serve_load.py [--quick] [--model exp/multi30k_de_en_cpu] [--soak-minutes 10]

1. Offline: `Translator.translate` of the test_2016_flickr source sentences in one call (the
   `translate` command's path), timed; its outputs are the expected answer of every request.
2. A `seq2seq serve` process on 127.0.0.1 (port chosen by the OS) with the same model and threads
   (seq2seq.serve.process.ServerProcess).
3. For each client count, that many clients on keep-alive connections send the sentences one per
   request until each has been sent once; each answer is checked: HTTP 200, one translation,
   equal to the offline output of its sentence. Latencies are those of the 200 answers. Lost = no 200 answer; duplicated = a sentence
   answered twice; mismatched = an answer that differs from the offline output.
4. Mixed: 32 clients send the sentences as in 3 while 4 more send oversized requests (100 lines
   of ~4,000 characters at beam 16: ~30 times --max-request-work), 10 a second each (40/s beside
   the normal ones' ~200/s); each of those must get its 413 and the normal requests keep their latency.
5. Soak (skipped with --quick): 32 clients cycling through the sentences for --soak-minutes,
   the server's RSS sampled every 30 s.

Bounded: every request has a 60 s timeout, every level sends a fixed number of requests, the
soak stops at its deadline, and the server is stopped (SIGTERM; killed if still there 120 s later)
at the end whatever happens.
--quick (under 3 minutes on 2 cores): 300 sentences, no soak.

Last line: serve_vs_offline=<ratio at 32 clients> p99_ms=<p99 at 32 clients> mixed_p99_ms=<p99 of the normal
requests beside the oversized ones> oversized_refused=<413s>/<sent> lost=<n> duplicated=<n> mismatched=<n>
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterable

import torch

from common import ROOT, cpu_name, save_result

from seq2seq import corpus
from seq2seq.prepare import split_files
from seq2seq.serve.process import ServerProcess
from seq2seq.translate import Translator

CLIENTS = (1, 8, 32, 128)
REQUEST_TIMEOUT = 60.0
OVERSIZED_CLIENTS = 4
OVERSIZED_PER_S = 10          # per oversized client: a mix, not a flood (a flood needs rate limiting)


def offline(model: str, data_dir: str | None, n: int | None) -> tuple[list[str], list[str], float]:
    """Source sentences, their offline translations, and offline sentences/s."""
    translator = Translator.load(model)
    (src_file, _), = split_files(translator.config, data_dir, only=["test_2016_flickr"]).values()
    lines = corpus.read_lines(src_file)[:n]
    translator.translate(lines[:20])  # warm-up, as the server's first requests are
    start = time.perf_counter()
    expected = translator.translate(lines)
    return lines, expected, len(lines) / (time.perf_counter() - start)


async def post(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> tuple[int, bytes]:
    writer.write(b"POST /translate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
    return status, await reader.readexactly(length)


async def load(port: int, lines: list[str], expected: list[str], clients: int, order: Iterable[int],
               deadline: float | None = None) -> dict:
    """`clients` connections send the sentences of `order` (cycling until `deadline` if given)."""
    todo = iter(order)
    answers: dict[int, int] = {}
    latencies, lost, mismatched = [], 0, 0

    async def client() -> None:
        nonlocal lost, mismatched
        reader = writer = None
        try:
            for i in todo:
                if deadline and time.monotonic() > deadline:
                    return
                body = json.dumps({"text": lines[i]}).encode()
                t0 = time.perf_counter()
                try:
                    if writer is None:
                        reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    status, data = await asyncio.wait_for(post(reader, writer, body), REQUEST_TIMEOUT)
                except (TimeoutError, OSError, asyncio.IncompleteReadError):
                    lost += 1
                    if writer is not None:
                        writer.close()
                    reader = writer = None  # a new connection for the next request
                    continue
                if status != 200:
                    lost += 1
                    continue
                latencies.append(time.perf_counter() - t0)
                (answer,) = json.loads(data)["translations"]
                answers[i] = answers.get(i, 0) + 1
                mismatched += answer["text"] != expected[i]
        finally:
            if writer is not None:
                writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    seconds = time.perf_counter() - start
    latencies.sort()
    pct = lambda q: 1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else 0.0  # noqa: E731
    sent = len(latencies) + lost
    return {"clients": clients, "requests": sent, "seconds": seconds, "sents_per_s": sum(answers.values()) / seconds,
            "p50_ms": pct(0.50), "p95_ms": pct(0.95), "p99_ms": pct(0.99), "lost": lost,
            "duplicated": 0 if deadline else sum(c - 1 for c in answers.values()), "mismatched": mismatched}


def oversized_body(lines: list[str]) -> bytes:
    """100 lines of ~4,000 characters (test sentences run together) at beam 16: ~400 kB, within
    --max-body-bytes, and ~30 times --max-request-work."""
    text = " ".join(itertools.islice(itertools.cycle(lines), 100))
    line = text[:4000].rsplit(" ", 1)[0]
    return json.dumps({"texts": [line] * 100, "beam": 16}, ensure_ascii=False).encode()


async def mixed(port: int, lines: list[str], expected: list[str]) -> dict:
    """The 32-client level with OVERSIZED_CLIENTS more sending oversized requests until it is done."""
    body, statuses = oversized_body(lines), []
    normal = asyncio.ensure_future(load(port, lines, expected, 32, list(range(len(lines)))))

    async def oversized() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while not normal.done():
                sent = time.monotonic()
                status, _ = await asyncio.wait_for(post(reader, writer, body), REQUEST_TIMEOUT)
                statuses.append(status)
                await asyncio.sleep(max(0.0, sent + 1 / OVERSIZED_PER_S - time.monotonic()))
        finally:
            writer.close()

    await asyncio.gather(normal, *(oversized() for _ in range(OVERSIZED_CLIENTS)))
    return {**normal.result(), "oversized_sent": len(statuses), "oversized_refused": statuses.count(413)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "exp/multi30k_de_en_cpu"))
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--quick", action="store_true", help="300 sentences, no soak (< 3 minutes)")
    ap.add_argument("--soak-minutes", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"cpu: {cpu_name()}, {args.threads} threads, torch {torch.__version__}", flush=True)
    lines, expected, offline_rate = offline(args.model, args.data_dir, 300 if args.quick else None)
    print(f"offline `translate` of {len(lines)} sentences in one process: {offline_rate:.1f} sentences/s", flush=True)

    rows, soak, mix = [], None, None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            server = ServerProcess(args.model, "--threads", args.threads, log=Path(tmp) / "server.log",
                                   env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        except RuntimeError as e:
            raise SystemExit(str(e)) from None
        try:
            asyncio.run(load(server.port, lines, expected, 4, list(range(min(40, len(lines))))))  # warm-up
            rows = run_levels(server, lines, expected, offline_rate)
            mix = asyncio.run(mixed(server.port, lines, expected))
            print(f"mixed: 32 clients beside {OVERSIZED_CLIENTS} sending {OVERSIZED_PER_S} oversized requests/s each, "
                  f"{mix['seconds']:.1f} s: p50 {mix['p50_ms']:.0f} ms, "
                  f"p99 {mix['p99_ms']:.0f} ms, lost {mix['lost']}, mismatched {mix['mismatched']}; "
                  f"{mix['oversized_refused']} of {mix['oversized_sent']} oversized requests got their 413", flush=True)
            if not args.quick and args.soak_minutes > 0:
                soak = run_soak(server, lines, expected, args.soak_minutes)
        finally:
            try:
                rc = server.stop(timeout=120)
            except subprocess.TimeoutExpired:  # it did not stop in time and was killed
                rc = server.proc.returncode
            log = server.log()
    at32 = next(r for r in rows if r["clients"] == 32)
    result = {"cpu": cpu_name(), "threads": args.threads, "model": args.model, "sentences": len(lines),
              "offline_sents_per_s": offline_rate, "levels": rows, "mixed": mix, "soak": soak, "server_exit_status": rc,
              "tracebacks_in_server_log": log.count("Traceback"),
              "serve_vs_offline": at32["sents_per_s"] / offline_rate}
    save_result("serve_load", result)
    lost = sum(r["lost"] for r in [*rows, mix]) + (soak["lost"] if soak else 0)
    mismatched = sum(r["mismatched"] for r in [*rows, mix]) + (soak["mismatched"] if soak else 0)
    duplicated = sum(r["duplicated"] for r in [*rows, mix])
    print(f"server: exit status {rc} after SIGTERM, {log.count('Traceback')} tracebacks in its log")
    print(f"serve_vs_offline={result['serve_vs_offline']:.2f} p99_ms={at32['p99_ms']:.0f} "
          f"mixed_p99_ms={mix['p99_ms']:.0f} oversized_refused={mix['oversized_refused']}/{mix['oversized_sent']} "
          f"lost={lost} duplicated={duplicated} mismatched={mismatched}")


def run_levels(server: ServerProcess, lines: list[str], expected: list[str], offline_rate: float) -> list[dict]:
    """Each level of CLIENTS once through the sentences, printed as it ends."""
    print(f"{'clients':>7} {'requests':>8} {'sent/s':>7} {'vs offline':>10} {'p50 ms':>7} {'p95 ms':>7} "
          f"{'p99 ms':>7} {'lost':>4} {'dup':>4} {'mismatch':>8} {'batch':>6} {'RSS MiB':>8}", flush=True)
    rows = []
    for clients in CLIENTS:
        before = server.health()["queue"]
        row = asyncio.run(load(server.port, lines, expected, clients, list(range(len(lines)))))
        after = server.health()["queue"]
        row["mean_batch_lines"] = (after["lines_decoded"] - before["lines_decoded"]) / max(
            1, after["batches"] - before["batches"])
        row["rss_mib"] = server.rss_mib()
        rows.append(row)
        print(f"{clients:>7} {row['requests']:>8} {row['sents_per_s']:>7.1f} "
              f"{row['sents_per_s'] / offline_rate:>10.2f} {row['p50_ms']:>7.0f} {row['p95_ms']:>7.0f} "
              f"{row['p99_ms']:>7.0f} {row['lost']:>4} {row['duplicated']:>4} {row['mismatched']:>8} "
              f"{row['mean_batch_lines']:>6.1f} {row['rss_mib']:>8.0f}", flush=True)
    return rows


def run_soak(server: ServerProcess, lines: list[str], expected: list[str], minutes: float) -> dict:
    """32 clients cycling through the sentences for `minutes`; the server's RSS every 30 s."""
    deadline = time.monotonic() + 60 * minutes
    order = itertools.cycle(range(len(lines)))
    samples = [server.rss_mib()]

    async def soak() -> dict:
        async def sample() -> None:
            while time.monotonic() < deadline:
                await asyncio.sleep(30)
                samples.append(server.rss_mib())
                print(f"  soak: {len(samples) * 30 - 30:>4} s, server RSS {samples[-1]:.0f} MiB", flush=True)
        sampler = asyncio.ensure_future(sample())
        row = await load(server.port, lines, expected, 32, order, deadline)
        sampler.cancel()
        return row

    row = asyncio.run(soak())
    row.update(minutes=minutes, rss_mib=samples, rss_growth_mib=samples[-1] - samples[1] if len(samples) > 2 else 0.0)
    print(f"soak: {minutes:g} min at 32 clients, {row['requests']} requests, {row['sents_per_s']:.1f} sent/s, "
          f"p99 {row['p99_ms']:.0f} ms, lost {row['lost']}, mismatched {row['mismatched']}; server RSS "
          f"{samples[0]:.0f} MiB at the start, {samples[1] if len(samples) > 1 else samples[0]:.0f} after 30 s, "
          f"{samples[-1]:.0f} at the end (max {max(samples):.0f})", flush=True)
    return row


if __name__ == "__main__":
    main()
