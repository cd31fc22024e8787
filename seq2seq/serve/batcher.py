"""Dynamic batching for the server: requests that arrive together are decoded together.

Each request is a `Job` (its lines, its decode settings, a future). One asyncio task forms
batches and hands them to one worker thread, so the event loop keeps accepting requests
while the model decodes:

  - a batch takes every job queued, up to `max_batch_lines` lines and `max_batch_work` work
    (source pieces x beam, counted by the caller); when the queue was empty the first job
    waits at most `max_wait` seconds for companions;
  - while a batch decodes, new jobs queue up, and the next batch takes them all: the busier
    the server, the larger its batches;
  - jobs with the same settings are decoded in one call of `decode` (the `translate` code
    path); a call that fails, or returns another number of results than it got lines, is
    retried job by job, so one bad job never fails another (and the log says so);
  - a decode call gets `stop`, which says True once every job in it has been given up (its
    caller disconnected or timed out): the decode ends between two search steps instead of
    holding the thread for work nobody will read;
  - the queue is bounded in lines: `submit` raises `QueueFull` rather than letting memory grow;
  - a fault of the batcher itself is logged with its traceback, the jobs it held get a
    DecodeFailed (the server answers 500), and the batcher goes on with the next jobs: the task
    that forms batches never ends while the server runs.

The batcher knows nothing of HTTP or of models: `decode(lines, settings, stop)` does the work, in
the one thread of `worker`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

log = logging.getLogger("seq2seq.serve")


class QueueFull(Exception):
    """The queue holds `max_queue_lines` lines already; the client should retry later."""


class DecodeFailed(Exception):
    """A request's decode failed (or the batcher did); the cause is in the log with its traceback."""


@dataclass(eq=False)
class Job:
    lines: list[str]
    settings: Hashable          # jobs with equal settings share one decode call
    future: asyncio.Future = field(repr=False)
    queued_at: float = 0.0      # the event loop's clock
    work: int = 0               # source pieces x beam: what a batch's max_batch_work counts


class Batcher:
    def __init__(self, decode: Callable[[list[str], Any, Callable[[], bool]], list[Any]], max_wait: float = 0.005,
                 max_batch_lines: int = 256, max_queue_lines: int = 4096, worker: ThreadPoolExecutor | None = None,
                 max_batch_work: int | None = None):
        self.decode = decode
        self.max_wait, self.max_batch_lines, self.max_queue_lines = max_wait, max_batch_lines, max_queue_lines
        self.max_batch_work = max_batch_work     # None: batches are bounded in lines only
        self.stopped = 0                # decode calls given up because all their callers had gone
        self.queued_lines = 0           # lines of the jobs waiting (not of the batch decoding)
        self.batches = 0                # batches decoded so far, and the jobs and lines in them
        self.jobs = 0
        self.lines = 0
        self._pending: collections.deque[Job] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._closing = False
        self._worker = worker or ThreadPoolExecutor(1, thread_name_prefix="decode")  # one thread: decode calls never overlap

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Decode what is queued, then stop."""
        self._closing = True
        if self._task is not None:
            self._wake.set()
            await self._task
        self._worker.shutdown(wait=True)

    async def submit(self, lines: list[str], settings: Hashable, work: int = 0) -> list[Any]:
        """Queue `lines` and wait for their results (one per line, in order). Cancelling the
        caller (a timeout) drops the job if it is still queued, and stops its decode if that
        was the last job the decode was for."""
        if self._closing:
            raise QueueFull("the server is shutting down")
        if self.queued_lines + len(lines) > self.max_queue_lines:
            raise QueueFull(f"the queue holds {self.queued_lines} lines; the limit is {self.max_queue_lines}")
        loop = asyncio.get_running_loop()
        job = Job(lines, settings, loop.create_future(), loop.time(), work)
        self._pending.append(job)
        self.queued_lines += len(lines)
        self._wake.set()
        try:
            return await job.future
        finally:
            if job in self._pending:  # cancelled while queued: free its place at once
                self._pending.remove(job)
                self.queued_lines -= len(job.lines)

    async def _run(self) -> None:
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch: list[Job] = []
            try:
                batch = await self._take_batch()
                await self._decode_batch(batch)
            except Exception:  # a bug here must not leave every later request hanging
                log.exception("the batcher failed on a batch of %d requests; they get a 500, and it goes on",
                              len(batch))
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(DecodeFailed("the server's batcher failed on this request's "
                                                              "batch (see the server's log)"))

    async def _take_batch(self) -> list[Job]:
        """The queued jobs, up to max_batch_lines lines and max_batch_work (a larger job goes alone). The batch waits
        for companions until its oldest job has waited max_wait: jobs that queued up during the
        previous decode go at once."""
        loop = asyncio.get_running_loop()
        deadline = self._pending[0].queued_at + self.max_wait
        batch, size, work = [], 0, 0
        while True:
            while self._pending and (not batch or self._fits(size, work, self._pending[0])):
                job = self._pending.popleft()
                self.queued_lines -= len(job.lines)
                batch.append(job)
                size += len(job.lines)
                work += job.work
            full = size >= self.max_batch_lines or (self._pending and batch)
            remaining = deadline - loop.time()
            if full or remaining <= 0 or self._closing:
                return batch
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                pass

    def _fits(self, size: int, work: int, job: Job) -> bool:
        return (size + len(job.lines) <= self.max_batch_lines
                and (self.max_batch_work is None or work + job.work <= self.max_batch_work))

    async def _decode_batch(self, batch: list[Job]) -> None:
        groups: dict[Hashable, list[Job]] = {}
        for job in batch:
            if not job.future.done():  # a job whose caller gave up is not decoded
                groups.setdefault(job.settings, []).append(job)
        for settings, jobs in groups.items():
            lines = [line for job in jobs for line in job.lines]
            self.batches += 1
            self.jobs += len(jobs)
            self.lines += len(lines)
            try:
                results = await self._in_worker(lines, settings, _all_gone(jobs))
            except Exception:
                if all(job.future.done() for job in jobs):  # stopped (or failed) after every caller left
                    self.stopped += 1
                    log.info("stopped decoding %d lines of %d requests: every caller had gone", len(lines), len(jobs))
                    continue
                if len(jobs) == 1:
                    _fail(jobs[0])
                    continue
                failed = 0
                for job in jobs:  # find the job that fails; the others get their results
                    if job.future.done():
                        continue
                    try:
                        _finish(job, await self._in_worker(job.lines, settings, _all_gone([job])))
                    except Exception:
                        _fail(job)
                        failed += 1
                log.warning("a batch of %d requests failed; decoded one by one, %d of them failed", len(jobs), failed)
                continue
            start = 0
            for job in jobs:
                _finish(job, results[start:start + len(job.lines)])
                start += len(job.lines)

    async def _in_worker(self, lines: list[str], settings: Hashable, stop: Callable[[], bool]) -> list[Any]:
        results = await asyncio.get_running_loop().run_in_executor(self._worker, self.decode, lines, settings, stop)
        if len(results) != len(lines):  # sliced among the jobs below: a miscount would mix up answers
            raise RuntimeError(f"decode returned {len(results)} results for {len(lines)} lines")
        return results


def _all_gone(jobs: list[Job]) -> Callable[[], bool]:
    """A callable for the decode thread that says whether every one of `jobs` is done (given up by
    its caller, in practice: results are set only after the decode returns)."""
    gone = threading.Event()  # set on the event loop, read in the decode thread

    def check(_=None) -> None:
        if all(job.future.done() for job in jobs):
            gone.set()

    for job in jobs:
        job.future.add_done_callback(check)
    check()
    return gone.is_set


def _finish(job: Job, results: list[Any]) -> None:
    if not job.future.done():
        job.future.set_result(results)


def _fail(job: Job) -> None:
    log.exception("decoding failed for a request of %d lines", len(job.lines))
    if not job.future.done():
        job.future.set_exception(DecodeFailed("decoding failed"))
