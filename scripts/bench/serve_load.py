"""Load benchmark of `trident serve` (issue 13): closed-loop clients on loopback, per scenario
throughput, latency percentiles, failures and the server's peak RSS, against the issue's targets.

    cargo build --release --bin trident
    .venv-fixtures/bin/python scripts/bench/serve_load.py [--duration 20] [--max-requests 10000]
        [--scenarios ner,embed-16,gen-1] [--server-args "--max-batch-requests 32"] [--baseline]
        [--out FILE] [--threads 2] [--binary target/release/trident]
    .venv-fixtures/bin/python scripts/bench/serve_load.py --from-log scripts/bench/results/DATE-serve.log

It starts `target/release/trident --threads 2 serve --port 0 --model ner=.bench/models/bert-base-ner
--model embed=.bench/models/all-MiniLM-L6-v2 --model gen=.bench/models/gpt2` (OMP_NUM_THREADS=2 too;
the checkpoints and inputs come from make_models.py, run here first when .bench/ lacks them),
reads the port from its stderr line "listening on http://ADDR", waits for `/health` 200, then runs
each scenario against it on 127.0.0.1:

- `ner-C`: `POST /ner`, one news paragraph (120–200 tokens, .bench/inputs/ner.json) per request;
  C = 1, 4, 16, 64 concurrent clients. Units: input tokens (special tokens included).
- `embed-C`: `POST /embed` (text-embeddings-inference's shape), one sentence per request
  (.bench/inputs/embed.json); C = 1, 4, 16, 64. Units: input tokens.
- `gen-C`: `POST /generate`, a 32-token prompt (.bench/inputs/gpt2.json), greedy,
  max_new_tokens = min_new_tokens = 32 (so every request does the same work), return_full_text
  false; C = 1, 4, 16. Units: new tokens (32 per request).

The 1-client run is the sequential baseline: the same requests sent one at a time. Each client
is closed-loop (sends its next request when its previous one is answered) and goes through the
inputs in turn; a scenario first sends `--warmup` unmeasured requests per client (it also opens
the connections), then measures for `--duration` seconds or `--max-requests` requests, whichever
comes first (requests in flight at the end are waited for and counted; every request has a
`--timeout`). A failure is an error, a non-2xx status or a body without the route's shape; the
first few are kept with the exact request and response.

Per scenario: requests, failures, throughput (requests/s and units/s over the time from the
start to the last answer), latency p50/p95/p99/max of the successful requests, and the server's
peak RSS during the scenario: VmHWM after the scenario, the kernel's high-water mark being reset
(`echo 5 > /proc/PID/clear_refs`) when the scenario starts; where that reset is refused, the
largest VmRSS sampled every 20 ms. The overall peak is the largest of those and of the peak of
the start (loading). All three models live in the one server process, so every RSS includes all
three; memory a scenario leaves allocated counts in the next one's peak.

Client and server share the machine's cores (2 on the reference machine), so the client is one
Python process, one asyncio event loop and one aiohttp session (keep-alive connections, one per
client), which costs little CPU; its CPU time (all its threads, the RSS sampler included) and
the server's (utime + stime from /proc/PID/stat) are reported per scenario, as seconds and as
a percentage of one core, so the share the client took from the server is visible.

--baseline also runs the embedding scenarios against scripts/bench/serve_baseline.py: a minimal
FastAPI + uvicorn app serving sentence-transformers (the same all-MiniLM-L6-v2 checkpoint, torch
on the same --threads threads) with text-embeddings-inference's `/embed` shape, one uvicorn
worker, one model call at a time, no batching across requests. --only-baseline runs just that.

Output: a `machine {json}` line, a `server {json}` line per server started, one
`serve SCENARIO SYSTEM {json}` line per scenario, as run.py prints its lines, all appended to
scripts/bench/results/<date>-serve.log (or --out FILE; --no-log-file: none); then a markdown
table of every scenario and one of the issue's targets (at 16 clients throughput ≥ 3× the
sequential one; p99 ≤ 3× p50 at 16; peak RSS flat from 16 to 64 clients, taken as at most 5%
more; zero failures). --from-log re-renders the tables from such lines (the last line of each
scenario and system wins).

Nothing else should run on the machine meanwhile. With the defaults (20 s per scenario, plus each
scenario's warm-up and the requests in flight at its end: up to ~20 s more for ner-64) the whole
run takes about 6 minutes, about 8 with --baseline. CPU % columns are percentages of one core
(the 2-core reference machine's server can reach 200%).
"""

import argparse
import asyncio
import datetime
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / ".bench"
RESULTS = ROOT / "scripts/bench/results"
PY = sys.executable
sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import cpuinfo, machine_tag  # noqa: E402  (run.py imports nothing heavy at the top)

GEN_NEW_TOKENS = 32


@dataclass
class Task:
    route: str
    inputs: str  # .bench/inputs/<inputs>.json
    model: str  # .bench/models/<model>, for its tokenizer
    levels: tuple
    unit: str
    description: str


TASKS = {
    "ner": Task("/ner", "ner", "bert-base-ner", (1, 4, 16, 64), "tokens",
                "POST /ner, one paragraph of 120–200 tokens per request (bert-base NER, 9 labels)"),
    "embed": Task("/embed", "embed", "all-MiniLM-L6-v2", (1, 4, 16, 64), "tokens",
                  "POST /embed, one sentence per request (all-MiniLM-L6-v2)"),
    "gen": Task("/generate", "gpt2", "gpt2", (1, 4, 16), "new tokens",
                f"POST /generate, GPT-2 124M, 32-token prompt, {GEN_NEW_TOKENS} new tokens, greedy"),
}
TRIDENT = "trident"
BASELINE = "st-fastapi"  # sentence-transformers behind FastAPI + uvicorn (serve_baseline.py)
BASELINE_TASKS = ("embed",)


def body_of(task, text):
    if task == "gen":
        return {"inputs": text, "parameters": {"max_new_tokens": GEN_NEW_TOKENS, "min_new_tokens": GEN_NEW_TOKENS,
                                               "do_sample": False, "return_full_text": False}}
    return {"inputs": text}


def shape_error(task, raw):
    """None when `raw` (a 2xx body) has the route's shape for one input, else what is wrong."""
    try:
        v = json.loads(raw)
    except ValueError as e:
        return f"not JSON: {e}"
    if task == "ner":
        ok = isinstance(v, list) and all(isinstance(e, dict) and "score" in e for e in v)
    elif task == "embed":
        ok = (isinstance(v, list) and len(v) == 1 and isinstance(v[0], list) and len(v[0]) > 0
              and isinstance(v[0][0], float))
    else:
        ok = isinstance(v, list) and len(v) == 1 and isinstance(v[0], dict) and isinstance(v[0].get("generated_text"), str)
    return None if ok else "unexpected shape"


# ---------------------------------------------------------------------------------------------
# The server process: start, readiness, memory and CPU.


class Server:
    def __init__(self, system, cmd, env, stderr_path):
        self.system, self.cmd, self.env, self.stderr_path = system, cmd, env, stderr_path
        self.proc = None
        self.url = None

    def start(self, timeout):
        self.stderr_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                         env=self.env, cwd=ROOT, start_new_session=True)
        deadline = started + timeout
        while self.url is None:
            m = re.search(r"listening on (http://\S+)", self.stderr_path.read_text(errors="replace"))
            if m:
                self.url = m.group(1).rstrip(")").replace("0.0.0.0", "127.0.0.1")
                break
            self._alive_or_raise(deadline)
            time.sleep(0.05)
        while True:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            self._alive_or_raise(deadline)
            time.sleep(0.1)
        return time.perf_counter() - started

    def _alive_or_raise(self, deadline):
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.system} exited with {self.proc.returncode} before it was ready:\n{self.tail()}")
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{self.system} not ready in time:\n{self.tail()}")

    def tail(self, n=20):
        try:
            return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def status(self):
        """{field: kB} of /proc/PID/status's Vm* lines."""
        out = {}
        try:
            for line in open(f"/proc/{self.proc.pid}/status"):
                if line.startswith("Vm"):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0])
        except (OSError, ValueError):
            pass
        return out

    def cpu_s(self):
        try:
            fields = open(f"/proc/{self.proc.pid}/stat").read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
        except (OSError, ValueError, IndexError):
            return float("nan")

    def reset_peak(self):
        """Reset the kernel's VmHWM to the current RSS; False where that is refused."""
        try:
            with open(f"/proc/{self.proc.pid}/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def stop(self):
        if not self.alive():
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


class RssSampler(threading.Thread):
    """Largest VmRSS of the server since the last reset, sampled every `interval` seconds."""

    def __init__(self, server, interval=0.02):
        super().__init__(daemon=True)
        self.server, self.interval = server, interval
        self.max_kb = 0
        self.stopped = threading.Event()

    def run(self):
        while not self.stopped.wait(self.interval):
            self.max_kb = max(self.max_kb, self.server.status().get("VmRSS", 0))

    def reset(self):
        self.max_kb = self.server.status().get("VmRSS", 0)


# ---------------------------------------------------------------------------------------------
# Clients.


def percentile(sorted_values, q):
    """Linear interpolation between the closest ranks (numpy's default)."""
    if not sorted_values:
        return None
    k = (len(sorted_values) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


async def scenario(server, sampler, task, clients, inputs, units, a):
    import aiohttp

    url = server.url + TASKS[task].route
    bodies = [json.dumps(body_of(task, t)).encode() for t in inputs]
    headers = {"Content-Type": "application/json"}
    state = {"next": 0, "issued": 0, "last": None}
    latencies, done_units, failures, warm_failures, examples = [], 0, 0, 0, []

    async def send(session, i):
        t = time.perf_counter()
        try:
            async with session.post(url, data=bodies[i], headers=headers) as r:
                raw, status = await r.read(), r.status
            error = None if 200 <= status < 300 else f"status {status}"
            error = error or shape_error(task, raw)
        except Exception as e:  # noqa: BLE001  (every error is a failure to report)
            raw, status, error = repr(e).encode(), None, type(e).__name__
        return time.perf_counter() - t, status, raw, error

    def record_failure(i, status, raw, error):
        if len(examples) < 3:
            examples.append({"request": {"method": "POST", "url": url, "body": bodies[i].decode()[:400]},
                             "status": status, "error": error, "response": raw.decode(errors="replace")[:600]})

    timeout = aiohttp.ClientTimeout(total=a.timeout)
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # Warm-up (unmeasured): each client's first requests, which also open the connections.
        async def warm(k):
            nonlocal warm_failures
            for j in range(a.warmup):
                i = (k * a.warmup + j) % len(bodies)
                _, status, raw, error = await send(session, i)
                if error:
                    warm_failures += 1
                    record_failure(i, status, raw, "warm-up: " + error)
        await asyncio.gather(*(warm(k) for k in range(clients)))

        reset_ok = server.reset_peak()
        sampler.reset()
        cpu0, client0 = server.cpu_s(), time.process_time()
        t0 = time.perf_counter()
        deadline = t0 + a.duration

        async def client():
            nonlocal done_units, failures
            while state["issued"] < a.max_requests and time.perf_counter() < deadline:
                state["issued"] += 1
                i = state["next"] % len(bodies)
                state["next"] += 1
                dt, status, raw, error = await send(session, i)
                state["last"] = time.perf_counter()
                if error:
                    failures += 1
                    record_failure(i, status, raw, error)
                else:
                    latencies.append(dt)
                    done_units += units[i]

        await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = (state["last"] or time.perf_counter()) - t0
    client_cpu, server_cpu = time.process_time() - client0, server.cpu_s() - cpu0
    st = server.status()
    peak_kb = max(st.get("VmHWM", 0), sampler.max_kb) if reset_ok else sampler.max_kb
    lat = sorted(latencies)
    ms = lambda q: None if not lat else round(percentile(lat, q) * 1000, 2)  # noqa: E731
    ok = len(latencies)
    return {
        "task": task, "route": TASKS[task].route, "clients": clients, "duration_s": a.duration,
        "max_requests": a.max_requests, "elapsed_s": round(elapsed, 3),
        "requests": state["issued"], "ok": ok, "failures": failures,
        "warmup_failures": warm_failures,
        "rps": round(ok / elapsed, 3) if elapsed > 0 else None,
        "units_per_s": round(done_units / elapsed, 1) if elapsed > 0 else None, "unit": TASKS[task].unit,
        "p50_ms": ms(0.50), "p95_ms": ms(0.95), "p99_ms": ms(0.99),
        "mean_ms": round(sum(lat) / ok * 1000, 2) if ok else None, "max_ms": round(lat[-1] * 1000, 2) if ok else None,
        "rss_peak_mb": round(peak_kb / 1024, 1), "rss_sampled_max_mb": round(sampler.max_kb / 1024, 1),
        "rss_end_mb": round(st.get("VmRSS", 0) / 1024, 1), "peak_from": "VmHWM" if reset_ok else "sampled VmRSS",
        "server_cpu_s": round(server_cpu, 2), "server_cpu_pct": round(100 * server_cpu / elapsed, 1) if elapsed else None,
        "client_cpu_s": round(client_cpu, 2), "client_cpu_pct": round(100 * client_cpu / elapsed, 1) if elapsed else None,
        "failure_examples": examples,
    }


# ---------------------------------------------------------------------------------------------
# Running.


class Log:
    """Prints lines and appends them to the results file."""

    def __init__(self, path):
        self.path = path
        self.file = None

    def __call__(self, *parts):
        line = " ".join(str(p) for p in parts)
        print(line, flush=True)
        if self.path:
            if self.file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.file = open(self.path, "a")
            self.file.write(line + "\n")
            self.file.flush()


def plan(spec):
    """[(task, clients)] of a --scenarios list: TASK (every level) or TASK-C."""
    out = []
    for item in [s.strip() for s in spec.split(",") if s.strip()] or list(TASKS):
        task, _, c = item.partition("-")
        if task not in TASKS or (c and not (c.isdigit() and int(c) >= 1)):
            raise SystemExit(f"unknown scenario '{item}' (TASK or TASK-CLIENTS; tasks: {', '.join(TASKS)})")
        for level in ([int(c)] if c else TASKS[task].levels):
            if (task, level) not in out:
                out.append((task, level))
    return out


def load_inputs():
    from tokenizers import Tokenizer

    data = {}
    for task, t in TASKS.items():
        texts = json.loads((BENCH / "inputs" / f"{t.inputs}.json").read_text())
        tok = Tokenizer.from_file(str(BENCH / "models" / t.model / "tokenizer.json"))
        tok.no_padding()  # make_models' tokenizer.json files pad and truncate to 128: count the whole text
        tok.no_truncation()
        lengths = [len(tok.encode(x).ids) for x in texts]
        units = [GEN_NEW_TOKENS] * len(texts) if task == "gen" else lengths
        data[task] = (texts, units, lengths)
    return data


def trident_server(a, log_dir):
    binary = Path(a.binary)
    if not binary.is_absolute():
        binary = ROOT / binary
    if not binary.exists():
        raise SystemExit(f"{binary} is missing: cargo build --release --bin trident")
    m = BENCH / "models"
    cmd = [str(binary), "--threads", str(a.threads), "serve", "--port", "0",
           "--model", f"ner={m / 'bert-base-ner'}", "--model", f"embed={m / 'all-MiniLM-L6-v2'}",
           "--model", f"gen={m / 'gpt2'}"] + shlex.split(a.server_args)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    return Server(TRIDENT, cmd, env, log_dir / "serve-load-trident.stderr")


def baseline_server(a, log_dir):
    cmd = [PY, str(ROOT / "scripts/bench/serve_baseline.py"), "--port", "0", "--threads", str(a.threads),
           "--model", str(BENCH / "models/all-MiniLM-L6-v2")]
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), TOKENIZERS_PARALLELISM="false")
    return Server(BASELINE, cmd, env, log_dir / "serve-load-baseline.stderr")


def run_system(server, scenarios, data, a, log):
    try:
        load_s = server.start(a.startup_timeout)
    except RuntimeError as e:
        log("server", json.dumps({"system": server.system, "command": server.cmd, "error": str(e)[-2000:]}))
        server.stop()
        return []
    st = server.status()
    hwm_reset = server.reset_peak()
    log("server", json.dumps({"system": server.system, "command": shlex.join(server.cmd), "pid": server.proc.pid,
                              "url": server.url, "load_s": round(load_s, 2),
                              "load_peak_rss_mb": round(st.get("VmHWM", 0) / 1024, 1),
                              "rss_after_load_mb": round(st.get("VmRSS", 0) / 1024, 1),
                              "hwm_reset": hwm_reset, "stderr": str(server.stderr_path)}))
    sampler = RssSampler(server)
    sampler.start()
    rows = []
    try:
        for task, clients in scenarios:
            if not server.alive():
                log("serve", f"{task}-{clients}", server.system, json.dumps(
                    {"task": task, "clients": clients, "error": f"server exited ({server.proc.returncode})",
                     "stderr_tail": server.tail()}))
                continue
            texts, units, lengths = data[task]
            row = asyncio.run(scenario(server, sampler, task, clients, texts, units, a))
            row["system"] = server.system
            if not server.alive():
                row["server_exited"] = server.proc.returncode
                row["stderr_tail"] = server.tail()
            rows.append(row)
            log("serve", f"{task}-{clients}", server.system, json.dumps(row, ensure_ascii=False))
    finally:
        sampler.stopped.set()
        code = server.stop()
        log("server-exit", json.dumps({"system": server.system, "returncode": code,
                                       "load_peak_rss_mb": round(st.get("VmHWM", 0) / 1024, 1),
                                       "overall_peak_rss_mb": max([round(st.get("VmHWM", 0) / 1024, 1)]
                                                                  + [r["rss_peak_mb"] for r in rows])}))
    return rows


def ensure_bench_files():
    needed = [BENCH / "models" / t.model / "tokenizer.json" for t in TASKS.values()]
    needed += [BENCH / "inputs" / f"{t.inputs}.json" for t in TASKS.values()]
    if not all(p.exists() for p in needed):
        subprocess.run([PY, str(ROOT / "scripts/bench/make_models.py"), "--out", str(BENCH)], check=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=20, help="seconds measured per scenario (default 20)")
    ap.add_argument("--max-requests", type=int, default=10_000,
                    help="most requests per scenario, whichever of the two limits comes first (default 10000)")
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured requests per client before each scenario")
    ap.add_argument("--timeout", type=float, default=120, help="seconds before a request counts as failed")
    ap.add_argument("--scenarios", default="",
                    help="comma-separated TASK or TASK-CLIENTS (ner, embed, gen; e.g. ner,embed-16); default all")
    ap.add_argument("--server-args", default="", help="more arguments of `trident serve`, one string (a single flag: --server-args=--json-log)")
    ap.add_argument("--threads", type=int, default=2, help="libtorch threads of the server(s) (default 2)")
    ap.add_argument("--binary", default="target/release/trident")
    ap.add_argument("--baseline", action="store_true",
                    help="also run the embed scenarios against serve_baseline.py (sentence-transformers, FastAPI)")
    ap.add_argument("--only-baseline", action="store_true", help="run only the baseline's embed scenarios")
    ap.add_argument("--startup-timeout", type=float, default=300)
    ap.add_argument("--out", help="append the lines to FILE (default scripts/bench/results/<date>-serve.log)")
    ap.add_argument("--no-log-file", action="store_true")
    ap.add_argument("--from-log", nargs="+", metavar="FILE", help="only render the tables from these logs' lines")
    a = ap.parse_args()
    if a.from_log:
        rows = {}
        for path in a.from_log:
            for line in open(path):
                parts = line.rstrip("\n").split(" ", 3)
                if len(parts) == 4 and parts[0] == "serve" and parts[3].startswith("{"):
                    row = json.loads(parts[3])
                    if "error" not in row:
                        rows[(parts[2], parts[1])] = row
        print(render(list(rows.values())))
        return
    if a.duration <= 0 or a.max_requests < 1 or a.warmup < 0:
        raise SystemExit("--duration and --max-requests must be positive, --warmup at least 0")
    scenarios = plan(a.scenarios)
    ensure_bench_files()
    data = load_inputs()
    date = datetime.date.today().isoformat()
    log = Log(None if a.no_log_file else Path(a.out) if a.out else RESULTS / f"{date}-serve.log")
    m = cpuinfo()
    m.update(cores=os.cpu_count(), threads=a.threads, date=date,
             started=datetime.datetime.now().isoformat(timespec="seconds"))
    m["tag"] = machine_tag(m)
    import aiohttp
    import platform
    m["client"] = {"python": platform.python_version(), "aiohttp": aiohttp.__version__, "event_loop": "asyncio",
                   "processes": 1}
    m["settings"] = {k: getattr(a, k) for k in ("duration", "max_requests", "warmup", "timeout", "server_args")}
    m["inputs"] = {t: {"texts": len(d[0]), "tokens_min": min(d[2]), "tokens_max": max(d[2])} for t, d in data.items()}
    log("machine", json.dumps(m))
    log_dir = BENCH / "outputs"
    rows = []
    if not a.only_baseline:
        rows += run_system(trident_server(a, log_dir), scenarios, data, a, log)
    if a.baseline or a.only_baseline:
        base = [(t, c) for t, c in scenarios if t in BASELINE_TASKS]
        if base:
            rows += run_system(baseline_server(a, log_dir), base, data, a, log)
        else:
            log("note: --baseline has only embed scenarios; none selected")
    print()
    print(render(rows))
    if log.path:
        print(f"\nlines appended to {log.path.relative_to(ROOT) if log.path.resolve().is_relative_to(ROOT) else log.path}")


# ---------------------------------------------------------------------------------------------
# Tables.


def fmt(v, spec=".1f"):
    return "–" if v is None else format(v, spec)


def render(rows):
    lines = ["| scenario | system | clients | requests | failures | req/s | units/s | p50 ms | p95 ms | p99 ms | "
             "peak RSS MB | server CPU % | client CPU % |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    order = {t: i for i, t in enumerate(TASKS)}
    rows = sorted(rows, key=lambda r: (r["system"] != TRIDENT, order.get(r["task"], 99), r["clients"]))
    for r in rows:
        seq = " (sequential)" if r["clients"] == 1 else ""
        lines.append(
            f"| {r['task']}-{r['clients']}{seq} | {r['system']} | {r['clients']} | {r['requests']} | {r['failures']} | "
            f"{fmt(r['rps'], '.2f')} | {fmt(r['units_per_s'])} {r['unit']} | {fmt(r['p50_ms'])} | {fmt(r['p95_ms'])} | "
            f"{fmt(r['p99_ms'])} | {fmt(r['rss_peak_mb'], '.0f')} | {fmt(r['server_cpu_pct'], '.0f')} | "
            f"{fmt(r['client_cpu_pct'], '.0f')} |")
    lines += ["", "Targets (issue 13): at 16 clients throughput ≥ 3× the sequential (1-client) one; p99 ≤ 3× p50 "
              "at 16; peak RSS flat from 16 to 64 clients (here: at most 5% more); zero failures.", "",
              "| task | system | req/s 1 → 16 | 16 vs 1 (≥ 3×) | p50 / p99 at 16 ms | p99/p50 at 16 (≤ 3) | "
              "peak RSS 16 → 64 MB (flat) | failures (0) |",
              "|---|---|---|---|---|---|---|---|"]
    by = {(r["system"], r["task"], r["clients"]): r for r in rows}
    mark = lambda ok: "" if ok is None else (" ✓" if ok else " ✗")  # noqa: E731
    for system, task in dict.fromkeys((r["system"], r["task"]) for r in rows):
        one, c16, c64 = (by.get((system, task, c)) for c in (1, 16, 64))
        ratio = c16["rps"] / one["rps"] if one and c16 and one["rps"] and c16["rps"] else None
        tail = c16["p99_ms"] / c16["p50_ms"] if c16 and c16["p50_ms"] and c16["p99_ms"] else None
        rss = None
        if c16 and c64:
            grow = c64["rss_peak_mb"] / c16["rss_peak_mb"] - 1
            rss = (f"{c16['rss_peak_mb']:.0f} → {c64['rss_peak_mb']:.0f} ({100 * grow:+.1f}%)", grow <= 0.05)
        fails = sum(r["failures"] + r.get("warmup_failures", 0) for r in rows if (r["system"], r["task"]) == (system, task))
        lines.append(
            f"| {task} | {system} | {fmt(one and one['rps'], '.2f')} → {fmt(c16 and c16['rps'], '.2f')} | "
            f"{fmt(ratio, '.2f') + '×' if ratio else '–'}{mark(ratio and ratio >= 3)} | "
            f"{fmt(c16 and c16['p50_ms'])} / {fmt(c16 and c16['p99_ms'])} | {fmt(tail, '.2f')}{mark(tail and tail <= 3)} | "
            f"{rss[0] + mark(rss[1]) if rss else '–'} | {fails}{mark(fails == 0)} |")
    base = {r["clients"]: r for r in rows if r["system"] == BASELINE and r["task"] == "embed"}
    mine = {r["clients"]: r for r in rows if r["system"] == TRIDENT and r["task"] == "embed"}
    common = sorted(set(base) & set(mine))
    if common:
        lines += ["", f"`/embed`: Trident against {BASELINE} (sentence-transformers in FastAPI + uvicorn, one worker, "
                  "one request at a time, no batching; same checkpoint and threads):", "",
                  "| clients | Trident req/s | baseline req/s | Trident vs baseline | Trident p50 / p99 ms | "
                  "baseline p50 / p99 ms | Trident / baseline peak RSS MB |", "|---|---|---|---|---|---|---|"]
        for c in common:
            t, b = mine[c], base[c]
            rel = t["rps"] / b["rps"] if t["rps"] and b["rps"] else None
            lines.append(f"| {c} | {fmt(t['rps'], '.2f')} | {fmt(b['rps'], '.2f')} | {fmt(rel, '.2f')}× | "
                         f"{fmt(t['p50_ms'])} / {fmt(t['p99_ms'])} | {fmt(b['p50_ms'])} / {fmt(b['p99_ms'])} | "
                         f"{fmt(t['rss_peak_mb'], '.0f')} / {fmt(b['rss_peak_mb'], '.0f')} |")
        lines.append("")
        lines.append("(Trident's RSS holds all three models of the run; the baseline's only the embedder.)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
