#!/usr/bin/env python3
"""NER and sentiment over JSON Lines articles with Ray Data, one Trident per actor.

    examples/ray/cluster.sh start
    .venv-scale/bin/python examples/ray/job.py --input .scale/articles --output .scale/ray-out \
        --workers 2 --mode serve [--kill actor --kill-at 0.4]
    examples/ray/cluster.sh stop

Reads every *.jsonl under --input ({"id", "text", ...}), runs `map_batches` on a fixed pool
of --workers actors (one per node: each needs the node's one "trident" slot), each owning
one Trident (`--mode serve`: a `trident serve` loaded once; `--mode cli`: a CLI process per
batch), and writes JSON Lines {"id", "ner", "sentiment"} under --output, one file per write
task (a retried task rewrites its own file).

--kill actor|trident kills, once --kill-at of the rows are written, one actor's process
(SIGKILL: Ray restarts the actor and retries its task) or the Trident process under it (the
batch fails with TridentDied, which the actor retries on a fresh process). Either way the
output must still hold each id once: check it with examples/scale/check_ids.py.

Prints one JSON line of figures at the end (rows, seconds, articles/s, load average).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import signal
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SCALE = os.path.join(HERE, "..", "scale")
sys.path.insert(0, SCALE)

import ray  # noqa: E402
from ray.data.datasource import BlockBasedFileDatasink  # noqa: E402

from trident_worker import TridentDied, netns_cpu_seconds, runner, trident_children  # noqa: E402


class Trident:
    """A Ray Data actor: one Trident (server or CLI) for its whole life."""

    def __init__(self, mode, binary, ner_model, sentiment_model, threads):
        self.runner = runner(mode, binary, ner_model, sentiment_model, threads)

    def __call__(self, batch):
        # batch: {"id": ndarray, "text": ndarray}; the result: one JSON Lines row per input.
        ids = [x.item() if hasattr(x, "item") else x for x in batch["id"]]
        rows = self.runner.run(ids, [str(t) for t in batch["text"]])
        return {"id": batch["id"], "line": rows}

    def __del__(self):
        try:
            self.runner.close()
        except Exception:
            pass


class JsonLinesDatasink(BlockBasedFileDatasink):
    """Writes the "line" column as it is: whole lines, exactly what Trident answered."""

    def __init__(self, path):
        super().__init__(path, file_format="jsonl")

    def write_block_to_file(self, block, file):
        lines = block.to_arrow().column("line").to_pylist()
        file.write("".join(line + "\n" for line in lines).encode())


def count_written(out_dir: str) -> int:
    n = 0
    for f in glob.glob(os.path.join(out_dir, "*.jsonl")):
        try:
            with open(f, "rb") as fh:
                n += fh.read().count(b"\n")
        except OSError:
            pass
    return n


def killer(args, total: int, done: threading.Event, report: dict) -> None:
    """Kill one worker (or its Trident) once --kill-at of the rows are written."""
    while not done.is_set():
        if count_written(args.output) >= args.kill_at * total:
            break
        time.sleep(0.05)
    # A Trident process under a Ray actor (ray::Trident... / ray::MapWorker...).
    deadline = time.monotonic() + 30
    while not done.is_set() and time.monotonic() < deadline:
        procs = trident_children(args.trident, parent_prefix="ray::")
        if procs:
            pid, ppid = procs[-1]
            victim = ppid if args.kill == "actor" else pid
            os.kill(victim, signal.SIGKILL)
            report["killed"] = {"what": args.kill, "pid": victim,
                                "at_rows": count_written(args.output),
                                "at_s": round(time.monotonic() - report["t0"], 2)}
            print(f"killed {args.kill} pid {victim} at {report['killed']['at_rows']} rows written",
                  file=sys.stderr, flush=True)
            return
        time.sleep(0.02)
    report["killed"] = None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS", "127.0.0.1:6390"))
    p.add_argument("--input", required=True, help="a JSON Lines file or a folder of *.jsonl")
    p.add_argument("--output", required=True, help="folder for the results (emptied first)")
    p.add_argument("--workers", type=int, default=2, help="Trident actors (one per node)")
    p.add_argument("--mode", choices=["serve", "cli"], default="serve")
    p.add_argument("--batch-size", type=int, default=125)
    p.add_argument("--trident", default=os.environ.get("TRIDENT_BIN", "trident"))
    p.add_argument("--ner-model", default=os.environ.get("TRIDENT_NER_MODEL", "dslim/bert-base-NER"))
    p.add_argument("--sentiment-model", default=os.environ.get(
        "TRIDENT_SENTIMENT_MODEL", "distilbert/distilbert-base-uncased-finetuned-sst-2-english"))
    p.add_argument("--threads", type=int, default=int(os.environ.get("TRIDENT_THREADS", "1")))
    p.add_argument("--kill", choices=["actor", "trident"], help="kill one worker mid-job")
    p.add_argument("--kill-at", type=float, default=0.4, help="fraction of rows written first")
    p.add_argument("--label", default="", help="a name for this run in the figures")
    args = p.parse_args()

    files = sorted(glob.glob(os.path.join(args.input, "*.jsonl"))) if os.path.isdir(args.input) else [args.input]
    total = sum(1 for f in files for line in open(f, encoding="utf-8") if line.strip())
    os.makedirs(args.output, exist_ok=True)
    for f in glob.glob(os.path.join(args.output, "*")):
        os.remove(f)

    env = {k: v for k, v in os.environ.items() if k.startswith(("TRIDENT_", "HF_"))}
    # On one machine PYTHONPATH is enough; on a real cluster ship the module with py_modules.
    env["PYTHONPATH"] = os.path.abspath(SCALE)
    ray.init(address=args.address, runtime_env={"env_vars": env},
             logging_level="ERROR", log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    # A batch whose Trident died is retried on the same (or a restarted) actor.
    ctx.actor_task_retry_on_errors = [TridentDied]

    cpu0 = netns_cpu_seconds()
    t0 = time.monotonic()
    report = {"t0": t0}
    done = threading.Event()
    kt = None
    if args.kill:
        kt = threading.Thread(target=killer, args=(args, total, done, report), daemon=True)
        kt.start()

    ds = ray.data.read_json(files, lines=True, override_num_blocks=len(files))
    ds = ds.select_columns(["id", "text"]).map_batches(
        Trident,
        fn_constructor_args=(args.mode, args.trident, args.ner_model, args.sentiment_model, args.threads),
        batch_size=args.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=args.workers),
        num_cpus=1,
        resources={"trident": 1},
    )
    ds.write_datasink(JsonLinesDatasink(args.output))
    seconds = time.monotonic() - t0
    cpu1 = netns_cpu_seconds()
    done.set()
    if kt:
        kt.join(1)
    ray.shutdown()

    written = count_written(args.output)
    fig = {"job": "ray", "label": args.label or f"ray-{args.mode}-{args.workers}w",
           "mode": args.mode, "workers": args.workers, "articles": total, "rows": written,
           "seconds": round(seconds, 2), "articles_per_s": round(total / seconds, 1),
           "load1": float(open("/proc/loadavg").read().split()[0])}
    if cpu0 is not None and cpu1 is not None:
        # Every live process of the local cluster (daemons, driver, workers, trident), per
        # article. Undercounts: actors and their servers that exit before the count are
        # reaped outside the namespace (figures.py leaves this out for Ray).
        fig["cpu_s"] = round(cpu1 - cpu0, 2)
        fig["cpu_ms_per_article"] = round((cpu1 - cpu0) / total * 1e3, 2)
    if args.kill:
        fig["killed"] = report.get("killed")
    print(json.dumps(fig), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
