"""`seq2seq serve` in a subprocess: start it on a port the OS chooses, wait until it listens,
talk to it, stop it. Used by the tests, the load benchmark and the screenshot script; standard
library only (the server's own process needs the `serve` extra).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

LISTENING = re.compile(r" on http://127\.0\.0\.1:(\d+)/ \(Ctrl")  # the line `serve` logs once it serves


class ServerProcess:
    """`seq2seq serve MODEL... ARGS...` on 127.0.0.1; its output goes to the file `log`.

    `env` is the subprocess's environment (default: this process's). Raises RuntimeError with the
    server's output if it exits or is not listening within `start_timeout` seconds."""

    def __init__(self, models: str | Path | list, *args, log: Path, env: dict | None = None,
                 start_timeout: float = 120):
        models = models if isinstance(models, list) else [models]
        self.log_path = Path(log)
        self.log_file = open(self.log_path, "wb")
        command = [sys.executable, "-m", "seq2seq.cli", "serve", *map(str, models), "--port", "0", *map(str, args)]
        self.proc = subprocess.Popen(command, stdout=self.log_file, stderr=subprocess.STDOUT,
                                     env=os.environ.copy() if env is None else env)
        deadline = time.monotonic() + start_timeout
        while not (m := LISTENING.search(self.log())):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self._kill()
                raise RuntimeError(f"the server did not start:\n{self.log()}")
            time.sleep(0.1)
        self.port = int(m.group(1))
        self.url = f"http://127.0.0.1:{self.port}/"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(self, method: str, path: str, body: bytes | dict | None = None, headers: dict | None = None,
                timeout: float = 60) -> tuple[int, dict, dict | str]:
        """(status, headers, body): a JSON body parsed, anything else as text."""
        if isinstance(body, dict):
            body = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            data = r.read()
        finally:
            conn.close()
        kind = r.getheader("content-type", "")
        return r.status, dict(r.getheaders()), json.loads(data) if "json" in kind else data.decode()

    def translate(self, body) -> tuple[int, dict | str]:
        """POST /translate with `body` (a dict, or bytes sent as they are) as JSON."""
        status, _, data = self.request("POST", "/translate", body, {"Content-Type": "application/json"})
        return status, data

    def health(self) -> dict:
        status, _, data = self.request("GET", "/health", timeout=30)
        if status != 200:
            raise RuntimeError(f"GET /health answered {status}: {data}")
        return data

    def rss_mib(self) -> float:
        """The server process's resident memory (Linux)."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

    def stop(self, sig: signal.Signals | None = signal.SIGTERM, timeout: float = 60) -> int:
        """Send `sig` (None: it was sent already) and wait for the exit status; a server that does
        not stop in time is killed, never left running."""
        if sig is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self._kill()

    def _kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log_file.close()
