#!/usr/bin/env python3
"""The Kubernetes topology on one machine: N `trident serve` behind HAProxy on 127.0.0.1.

    .venv-scale/bin/python deploy/lb/lb_sim.py --instances 3 --duration 20 --kill 2
    .venv-scale/bin/python deploy/lb/lb_sim.py --instances 1 --duration 15      # a benchmark run

Starts the instances (ports --base-port+1...), HAProxy (deploy/lb/haproxy.cfg.in: health
checks on /health, least-connections, L7 retries on connection failures, empty responses
and 503, redispatch to another server), then a bounded closed-loop load: --concurrency
clients, each sending one article per request to /ner or /classify in turn, for --duration
seconds or --max-requests requests, whichever ends first.

With --kill I, instance I gets --signal (KILL: a crash; TERM: Kubernetes' way, it drains) at
--kill-at of the run and is started again --restart-after seconds later; HAProxy takes it
out and back in by its health checks.

Checks (exit 1 if either fails):
1. no request failed: every request sent got 200 (HAProxy retried what it could);
2. the request counters add up: the sum over every instance's life of
   trident_requests_total{route=/ner|/classify, status=200} equals the requests sent. A life
   that is still running is read from its /metrics at the end; the killed life's /metrics
   died with it, so its count is read from its access log (--json-log, one line per
   request, written where the counter is incremented) - and for every live life the access
   log is checked to give exactly what /metrics says.

Every process started here is stopped on the way out, on failure and on Ctrl-C too.
Prints the figures as one JSON line at the end (--json-out appends them to a file).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
ROUTES = ("/ner", "/classify")


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError:
        return 0, ""


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a live process (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def parse_requests(metrics: str) -> dict:
    """{(route, status): count} from trident_requests_total."""
    out = {}
    for m in re.finditer(r'^trident_requests_total\{route="([^"]*)",status="(\d+)"\} (\d+)', metrics, re.M):
        out[(m.group(1), m.group(2))] = int(m.group(3))
    return out


class Instance:
    """One `trident serve`; each start is a new life with its own access log."""

    def __init__(self, index: int, port: int, args, log_dir: str):
        self.index, self.port, self.args, self.log_dir = index, port, args, log_dir
        self.lives: list[dict] = []
        self.proc = None

    @property
    def name(self) -> str:
        return f"s{self.index}"

    def start(self) -> None:
        life = len(self.lives) + 1
        log = os.path.join(self.log_dir, f"{self.name}-life{life}.log")
        cmd = [self.args.trident, "-q", "--threads", str(self.args.threads), "serve",
               "--host", "127.0.0.1", "--port", str(self.port), "--json-log",
               "--model", f"ner={self.args.ner_model}",
               "--model", f"sentiment:classify={self.args.sentiment_model}"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(log, "wb"))
        self.lives.append({"life": life, "pid": self.proc.pid, "log": log, "last_scrape": None,
                           "final": None, "ended": None, "cpu_s": 0.0})

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited while loading: see {self.lives[-1]['log']}")
            if http_get(f"http://127.0.0.1:{self.port}/health", 1)[0] == 200:
                return
            time.sleep(0.05)
        raise SystemExit(f"{self.name} not ready after {timeout} s")

    def kill(self, sig: int) -> None:
        self.lives[-1]["ended"] = signal.Signals(sig).name
        self.lives[-1]["cpu_s"] = proc_cpu(self.proc.pid)
        self.proc.send_signal(sig)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.lives[-1]["cpu_s"] = proc_cpu(self.proc.pid)
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def scrape(self) -> dict | None:
        status, text = http_get(f"http://127.0.0.1:{self.port}/metrics", 1)
        if status != 200:
            return None
        counts = parse_requests(text)
        self.lives[-1]["last_scrape"] = counts
        return counts


def log_counts(path: str) -> dict:
    """{(route, status): count} from a life's --json-log access log."""
    out: dict = {}
    with open(path, "rb") as f:
        for raw in f:
            if not raw.startswith(b"{"):
                continue
            try:
                r = json.loads(raw)
            except ValueError:
                continue
            k = (r.get("route"), str(r.get("status")))
            out[k] = out.get(k, 0) + 1
    return out


def ok_count(counts: dict) -> int:
    return sum(v for (route, status), v in counts.items() if route in ROUTES and status == "200")


def other_count(counts: dict) -> int:
    return sum(v for (route, status), v in counts.items() if route in ROUTES and status != "200")


def haproxy_config(args, ports) -> str:
    with open(os.path.join(HERE, "haproxy.cfg.in"), encoding="utf-8") as f:
        cfg = f.read()
    servers = "\n".join(f"    server s{i} 127.0.0.1:{p} check" for i, p in enumerate(ports, 1))
    return (cfg.replace("@FRONTEND_PORT@", str(args.base_port))
               .replace("@STATS_PORT@", str(args.base_port + 99))
               .replace("@SERVERS@", servers))


def haproxy_stats(args) -> list[dict]:
    status, text = http_get(f"http://127.0.0.1:{args.base_port + 99}/stats;csv", 2)
    if status != 200:
        return []
    lines = text.lstrip("# ").splitlines()
    head = lines[0].split(",")
    return [dict(zip(head, line.split(","))) for line in lines[1:] if line]


def backend_up(args, n: int) -> bool:
    rows = [r for r in haproxy_stats(args) if r.get("pxname") == "trident" and r.get("svname", "").startswith("s")]
    return sum(1 for r in rows if r.get("status") == "UP") == n


async def load(args, texts, instances, t_end_wall) -> dict:
    import aiohttp

    results = []  # (t_start, latency_s, status, served_by, route)
    sent = 0
    url = f"http://127.0.0.1:{args.base_port}"
    stop_at = time.monotonic() + args.duration
    events = {}

    async def client(k: int, session):
        nonlocal sent
        rng = random.Random(k)
        i = k
        while time.monotonic() < stop_at and sent < args.max_requests:
            sent += 1
            route = ROUTES[i % 2]
            text = texts[rng.randrange(len(texts))]
            body = {"inputs": text} if route == "/ner" else {"inputs": text, "model": "sentiment"}
            t0 = time.monotonic()
            try:
                async with session.post(url + route, json=body) as r:
                    await r.read()
                    results.append((t0, time.monotonic() - t0, r.status, r.headers.get("X-Served-By", ""), route))
            except Exception as e:  # noqa: BLE001 - every failure counts
                results.append((t0, time.monotonic() - t0, 0, f"{type(e).__name__}", route))
            i += 1

    async def scraper():
        while time.monotonic() < stop_at:
            for inst in instances:
                await asyncio.to_thread(inst.scrape)
            await asyncio.sleep(0.25)

    async def chaos():
        if args.kill is None:
            return
        inst = instances[args.kill - 1]
        await asyncio.sleep(args.kill_at * args.duration)
        events["killed_at_s"] = round(args.kill_at * args.duration, 2)
        await asyncio.to_thread(inst.kill, getattr(signal, f"SIG{args.signal}"))
        await asyncio.sleep(args.restart_after)
        inst.start()
        events["restarted_at_s"] = round(args.kill_at * args.duration + args.restart_after, 2)
        await asyncio.to_thread(inst.wait_ready)
        events["ready_again_at_s"] = round(args.duration - (stop_at - time.monotonic()), 2)

    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        t0 = time.monotonic()
        await asyncio.gather(*(client(k, session) for k in range(args.concurrency)), scraper(), chaos())
        wall = time.monotonic() - t0
    return {"results": results, "sent": sent, "wall": wall, "events": events}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--instances", type=int, default=3)
    p.add_argument("--duration", type=float, default=20.0, help="seconds of load")
    p.add_argument("--max-requests", type=int, default=100_000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--kill", type=int, help="the instance (1..N) to kill and restart mid-run")
    p.add_argument("--kill-at", type=float, default=0.35)
    p.add_argument("--restart-after", type=float, default=2.0)
    p.add_argument("--signal", choices=["KILL", "TERM"], default="KILL")
    p.add_argument("--base-port", type=int, default=18100)
    p.add_argument("--threads", type=int, default=int(os.environ.get("TRIDENT_THREADS", "1")))
    p.add_argument("--trident", default=os.environ.get("TRIDENT_BIN", os.path.join(ROOT, "target/release/trident")))
    p.add_argument("--ner-model", default=os.environ.get("TRIDENT_NER_MODEL", os.path.join(ROOT, "weights/bert-tiny-ner")))
    p.add_argument("--sentiment-model", default=os.environ.get(
        "TRIDENT_SENTIMENT_MODEL", os.path.join(ROOT, "weights/distilbert-tiny-sst2")))
    p.add_argument("--articles", default=os.environ.get("ARTICLES", os.path.join(ROOT, ".scale/articles.jsonl")))
    p.add_argument("--work-dir", default=os.path.join(os.environ.get("SCALE_DIR", os.path.join(ROOT, ".scale")), "lb"))
    p.add_argument("--label", default="")
    p.add_argument("--json-out", help="append the figures line to this file")
    args = p.parse_args()

    texts = [json.loads(line)["text"] for line in open(args.articles, encoding="utf-8") if line.strip()]
    os.makedirs(args.work_dir, exist_ok=True)
    for f in os.listdir(args.work_dir):
        if f.endswith(".log"):
            os.remove(os.path.join(args.work_dir, f))
    ports = [args.base_port + i for i in range(1, args.instances + 1)]
    instances = [Instance(i, port, args, args.work_dir) for i, port in enumerate(ports, 1)]
    haproxy = None
    haproxy_cpu = 0.0

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    try:
        for inst in instances:
            inst.start()
        for inst in instances:
            inst.wait_ready()
        cfg_path = os.path.join(args.work_dir, "haproxy.cfg")
        with open(cfg_path, "w", encoding="utf-8") as f:
            f.write(haproxy_config(args, ports))
        haproxy = subprocess.Popen(["haproxy", "-db", "-f", cfg_path], stdin=subprocess.DEVNULL,
                                   stdout=open(os.path.join(args.work_dir, "haproxy.log"), "wb"),
                                   stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not backend_up(args, args.instances):
            if haproxy.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"haproxy did not come up: see {args.work_dir}/haproxy.log")
            time.sleep(0.1)
        before = {inst.name: inst.scrape() for inst in instances}
        cpu_before = {inst.name: proc_cpu(inst.proc.pid) for inst in instances}
        import resource
        client_before = resource.getrusage(resource.RUSAGE_SELF)

        run = asyncio.run(load(args, texts, instances, None))
        client_after = resource.getrusage(resource.RUSAGE_SELF)
        time.sleep(0.5)
        stats = {r["svname"]: r for r in haproxy_stats(args) if r.get("pxname") == "trident"}
    finally:
        if haproxy is not None and haproxy.poll() is None:
            haproxy_cpu = proc_cpu(haproxy.pid)
            haproxy.terminate()
            haproxy.wait(10)
        finals = {}
        for inst in instances:
            if inst.proc is not None and inst.proc.poll() is None:
                finals[inst.name] = inst.scrape()
                inst.lives[-1]["final"] = finals[inst.name]
            inst.stop()

    results = run["results"]
    sent = run["sent"]
    ok = [r for r in results if r[2] == 200]
    failed = [r for r in results if r[2] != 200]
    lat = sorted(r[1] for r in ok)

    def pct(q):
        return round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3, 1) if lat else None

    # The counters: every life of every instance.
    lives = []
    counted = 0
    mirror_ok = True
    for inst in instances:
        for life in inst.lives:
            from_log = log_counts(life["log"])
            base = before.get(inst.name) if life["life"] == 1 else {}
            base = base or {}
            if life["final"] is not None:
                n = ok_count(life["final"]) - ok_count(base)
                source = "/metrics"
                if ok_count(life["final"]) != ok_count(from_log) or other_count(life["final"]) != other_count(from_log):
                    mirror_ok = False
            else:
                n = ok_count(from_log) - ok_count(base)
                source = "access log (the process is gone)"
            counted += n
            lives.append({"instance": inst.name, "life": life["life"], "ended": life["ended"] or "stopped at the end",
                          "ok_200": n, "non_200": other_count(life["final"] or from_log), "source": source,
                          "last_scrape_200": ok_count(life["last_scrape"] or {}) - ok_count(base)})

    # CPU per request answered: every life of every server (less what the first lives spent
    # loading before the load began), HAProxy, and this client.
    server_cpu = sum(l["cpu_s"] for inst in instances for l in inst.lives) - sum(cpu_before.values())
    client_cpu = (client_after.ru_utime - client_before.ru_utime) + (client_after.ru_stime - client_before.ru_stime)
    backend = stats.get("BACKEND", {})
    fig = {
        "job": "lb", "label": args.label or f"lb-{args.instances}x" + (f"-kill{args.signal}" if args.kill else ""),
        "instances": args.instances, "concurrency": args.concurrency, "sent": sent, "ok": len(ok),
        "failed": len(failed), "counted_200": counted, "seconds": round(run["wall"], 2),
        "req_per_s": round(len(ok) / run["wall"], 1), "p50_ms": pct(0.50), "p95_ms": pct(0.95),
        "p99_ms": pct(0.99), "haproxy_retries": int(backend.get("wretr") or 0),
        "haproxy_redispatches": int(backend.get("wredis") or 0),
        "per_server": {k: int(v.get("stot") or 0) for k, v in stats.items() if k.startswith("s")},
        "server_cpu_ms_per_req": round(server_cpu / max(1, len(ok)) * 1e3, 3),
        "haproxy_cpu_ms_per_req": round(haproxy_cpu / max(1, len(ok)) * 1e3, 3),
        "client_cpu_ms_per_req": round(client_cpu / max(1, len(ok)) * 1e3, 3),
        "events": run["events"], "load1": float(open("/proc/loadavg").read().split()[0]),
    }
    print(f"load: {sent} requests sent in {run['wall']:.1f} s by {args.concurrency} clients to "
          f"{args.instances} instance(s): {len(ok)} answered 200, {len(failed)} failed; "
          f"{fig['req_per_s']} req/s, p50 {fig['p50_ms']} ms, p99 {fig['p99_ms']} ms; "
          f"HAProxy retried {fig['haproxy_retries']} and redispatched {fig['haproxy_redispatches']}; "
          f"CPU per request: servers {fig['server_cpu_ms_per_req']} ms, HAProxy {fig['haproxy_cpu_ms_per_req']} ms, "
          f"client {fig['client_cpu_ms_per_req']} ms")
    if run["events"]:
        print(f"kill: instance s{args.kill} got SIG{args.signal} at {run['events'].get('killed_at_s')} s, "
              f"restarted at {run['events'].get('restarted_at_s')} s, ready at {run['events'].get('ready_again_at_s')} s")
    for life in lives:
        print(f"  {life['instance']} life {life['life']} ({life['ended']}): {life['ok_200']} requests answered 200 "
              f"(from its {life['source']}; last periodic scrape {life['last_scrape_200']}), {life['non_200']} other")
    for r in failed[:5]:
        print(f"  failed: {r[4]} at +{r[0]:.2f}: status {r[2]} {r[3]}", file=sys.stderr)
    checks_ok = True
    if failed:
        print(f"CHECK FAILED: {len(failed)} requests failed", file=sys.stderr)
        checks_ok = False
    if counted != sent:
        print(f"CHECK FAILED: the instances' counters add up to {counted}, not the {sent} requests sent",
              file=sys.stderr)
        checks_ok = False
    if not mirror_ok:
        print("CHECK FAILED: an access log disagrees with its /metrics", file=sys.stderr)
        checks_ok = False
    if checks_ok:
        print(f"checks: no request failed; the counters add up: {counted} = {sent} requests sent")
    fig["checks_ok"] = checks_ok
    fig["lives"] = lives
    print(json.dumps(fig))
    if args.json_out:
        with open(args.json_out, "a", encoding="utf-8") as f:
            f.write(json.dumps(fig) + "\n")
    return 0 if checks_ok else 1


if __name__ == "__main__":
    sys.exit(main())
