"""One Trident per worker, for engines that call Python per batch (Ray Data actors, a pandas UDF).

Two ways to run Trident from a long-lived worker:

- ``CliRunner``: a `trident ner|classify --format jsonl --input - --input-format jsonl`
  process per batch and task. The CLI reads its whole input before it answers, so a process
  cannot outlive one batch: each batch pays the model load (0.05 s for the fixtures, 0.2-0.6 s
  for full-size checkpoints, see BENCHMARKS.md).
- ``ServeRunner``: one `trident serve` per worker on a free loopback port, loaded once; each
  batch is one POST /ner and one POST /classify with the batch's texts.

Both return, per input, one JSON Lines row ``{"id", "ner", "sentiment"}`` (or ``{"id",
"error"}``) as text, with the CLI's / server's numbers unchanged. A Trident process that
dies mid-batch raises ``TridentDied``; the engine retries the batch (Ray Data:
``actor_task_retry_on_errors``; Spark: task retry), and the next batch starts a fresh
process. Children get SIGKILL when their worker dies (PR_SET_PDEATHSIG), so a killed worker
leaves no orphan server behind.
"""

from __future__ import annotations

import ctypes
import http.client
import json
import os
import re
import signal
import subprocess
import time
from typing import Iterable, List, Sequence


class TridentDied(RuntimeError):
    """The Trident process of this worker ended before answering the batch."""


def _die_with_parent() -> None:
    # Linux: SIGKILL this child when the worker that started it dies.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def join_rows(ids: Sequence, ner: Sequence[dict], sentiment: Sequence[dict]) -> List[str]:
    """Merge the per-task JSON Lines rows ({"id", "result"|"error"}) into one row per id."""
    rows = []
    for i, n, s in zip(ids, ner, sentiment, strict=True):
        if n.get("id", i) != i or s.get("id", i) != i:
            raise RuntimeError(f"rows out of order: {i!r} got {n.get('id')!r} / {s.get('id')!r}")
        if "error" in n or "error" in s:
            rows.append(_dumps({"id": i, "error": n.get("error") or s.get("error")}))
        else:
            rows.append(_dumps({"id": i, "ner": n["result"], "sentiment": s["result"]}))
    return rows


class CliRunner:
    """A `trident` CLI process per task and batch."""

    def __init__(self, binary: str, ner_model: str, sentiment_model: str, threads: int = 1):
        self.binary, self.threads = binary, threads
        self.tasks = [("ner", ner_model), ("classify", sentiment_model)]
        self.pids: List[int] = []

    def _run(self, task: str, model: str, payload: bytes, n: int) -> List[dict]:
        cmd = [self.binary, "-q", "--threads", str(self.threads), task, "--model", model,
               "--format", "jsonl", "--input", "-", "--input-format", "jsonl",
               "--batch-size", "16"]
        p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, preexec_fn=_die_with_parent)
        self.pids = [p.pid]
        out, err = p.communicate(payload)
        self.pids = []
        # Exit code 1: some lines failed (they are {"id", "error"} rows); anything else is a
        # process that did not finish its input.
        if p.returncode not in (0, 1):
            raise TridentDied(f"trident {task} exited with {p.returncode}: {err.decode()[-300:]}")
        rows = [json.loads(line) for line in out.splitlines() if line.strip()]
        if len(rows) != n:
            raise TridentDied(f"trident {task} answered {len(rows)} rows for {n} inputs")
        return rows

    def run(self, ids: Sequence, texts: Sequence[str]) -> List[str]:
        payload = "".join(_dumps({"id": i, "text": t}) + "\n" for i, t in zip(ids, texts)).encode()
        ner, sentiment = (self._run(task, model, payload, len(ids)) for task, model in self.tasks)
        return join_rows(ids, ner, sentiment)

    def close(self) -> None:
        pass


class ServeRunner:
    """One `trident serve` per worker, started on first use and again if it died."""

    def __init__(self, binary: str, ner_model: str, sentiment_model: str, threads: int = 1,
                 max_batch: int = 1024):
        self.cmd = [binary, "-q", "--threads", str(threads), "serve", "--host", "127.0.0.1",
                    "--port", "0", "--model", f"ner={ner_model}",
                    "--model", f"sentiment:classify={sentiment_model}",
                    "--max-client-batch-size", str(max_batch),
                    "--max-payload-bytes", str(64 * 1024 * 1024)]
        self.proc = None
        self.port = None
        self.conn = None

    @property
    def pids(self) -> List[int]:
        return [self.proc.pid] if self.proc and self.proc.poll() is None else []

    def _start(self) -> None:
        self.close()
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, preexec_fn=_die_with_parent, text=True)
        # The first stderr line names the port ("listening on http://127.0.0.1:PORT").
        line = self.proc.stderr.readline()
        m = re.search(r"127\.0\.0\.1:(\d+)", line)
        if not m:
            raise TridentDied(f"trident serve did not start: {line.strip()}")
        self.port = int(m.group(1))
        # Drain stderr so the server never blocks on a full pipe.
        import threading
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise TridentDied(f"trident serve exited with {self.proc.returncode} while loading")
            try:
                if self._request("GET", "/health", None)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise TridentDied("trident serve did not become ready in 120 s")

    def _request(self, method: str, path: str, body):
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        try:
            self.conn.request(method, path, body=None if body is None else _dumps(body).encode(),
                              headers={"Content-Type": "application/json"})
            r = self.conn.getresponse()
            return r.status, r.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = None
            raise

    def _post(self, path: str, body) -> list:
        try:
            status, data = self._request("POST", path, body)
        except (OSError, http.client.HTTPException) as e:
            raise TridentDied(f"trident serve {path}: {e}") from e
        if status != 200:
            raise TridentDied(f"trident serve {path}: HTTP {status}: {data[:300]!r}")
        return json.loads(data)

    def run(self, ids: Sequence, texts: Sequence[str]) -> List[str]:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        texts = list(texts)
        ner = self._post("/ner", {"inputs": texts, "model": "ner"})
        sentiment = self._post("/classify", {"inputs": texts, "model": "sentiment"})
        return join_rows(ids, [{"id": i, "result": r} for i, r in zip(ids, ner)],
                         [{"id": i, "result": r} for i, r in zip(ids, sentiment)])

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None


def runner(mode: str, binary: str, ner_model: str, sentiment_model: str, threads: int = 1):
    if mode == "cli":
        return CliRunner(binary, ner_model, sentiment_model, threads)
    if mode == "serve":
        return ServeRunner(binary, ner_model, sentiment_model, threads)
    raise ValueError(f"mode must be cli or serve, not {mode!r}")


def chunks(items: Iterable, size: int):
    chunk = []
    for x in items:
        chunk.append(x)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def trident_children(binary: str, parent_prefix: str = "") -> List[tuple]:
    """(pid, parent pid) of the running `binary` processes, from /proc (Linux).

    With ``parent_prefix``, only those whose parent's command line starts with it."""
    found = []
    real = os.path.realpath(binary)
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv0 = f.read().split(b"\0", 1)[0].decode(errors="replace")
            if os.path.realpath(argv0) != real and argv0 != binary:
                continue
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if parent_prefix:
                with open(f"/proc/{ppid}/cmdline", "rb") as f:
                    if not f.read().decode(errors="replace").startswith(parent_prefix):
                        continue
            found.append((int(d), ppid))
        except (OSError, ValueError, IndexError):
            continue
    return found


def netns_cpu_seconds():
    """CPU seconds (user + system, reaped children included) of every process in this
    process's network namespace: the whole local cluster when it runs in its own namespace
    (examples/scale/env.sh). None when this is the machine's main namespace, where the sum
    would count everything else running too."""
    try:
        mine = os.stat("/proc/self/ns/net").st_ino
        name = os.environ.get("SCALE_NETNS", "")
        if not name or os.stat(f"/run/netns/{name}").st_ino != mine:
            return None
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            if os.stat(f"/proc/{d}/ns/net").st_ino != mine:
                continue
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        except (OSError, ValueError, IndexError):
            continue
    return total / tick
