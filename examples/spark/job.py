#!/usr/bin/env python3
"""NER and sentiment over JSON Lines articles on a Spark standalone cluster.

    examples/spark/cluster.sh start
    .venv-scale/bin/python examples/spark/job.py --input .scale/articles --output .scale/spark-out \
        --workers 2 [--variant pipe|udf] [--kill worker|trident --kill-at 0.4]
    examples/spark/cluster.sh stop

--variant pipe (the default): `textFile → pipe → saveAsTextFile`, all on the JVM side
(`JavaRDD.pipe`), so no Python runs in the data path: each partition's lines go to
examples/spark/trident-pipe.sh, which runs `trident ner` and `trident classify` with
`--format jsonl --input -` and pairs their lines. (PySpark's own `RDD.pipe` would feed the
process from a Python worker; the Java RDD's does not.)

--variant udf: a pandas UDF (`mapInPandas`) per partition, each Python worker keeping one
`trident serve` (examples/scale/trident_worker.py) for its life. For comparison.

--workers N caps the application at N cores (spark.cores.max; one 1-core executor per
worker). Output: JSON Lines part-* files under --output, written by Spark's output
committer, so a retried task's output replaces the failed attempt's, never adds to it.

--kill worker kills, once --kill-at of the partitions have finished, the worker JVM that is
running a trident and everything under it (its executor, the pipe, trident: a lost node);
--kill trident kills only the trident process. Spark reruns the lost tasks on what is left.
Prints one JSON line of figures at the end.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SCALE = os.path.abspath(os.path.join(HERE, "..", "scale"))
sys.path.insert(0, SCALE)

from trident_worker import netns_cpu_seconds, trident_children  # noqa: E402


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def descendants(pid: int) -> list:
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            kids.setdefault(parent(int(d)), []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def killer(args, sc, done: threading.Event, report: dict) -> None:
    tracker = sc.statusTracker()
    while not done.is_set():
        finished = total = 0
        for sid in tracker.getActiveStageIds():
            info = tracker.getStageInfo(sid)
            if info:
                finished += info.numCompletedTasks
                total += info.numTasks
        if total and finished >= args.kill_at * total:
            break
        time.sleep(0.05)
    deadline = time.monotonic() + 60
    while not done.is_set() and time.monotonic() < deadline:
        procs = trident_children(args.trident)
        for pid, _ in procs:
            # trident ← sh (trident-pipe.sh) or python (udf) ← executor JVM ← worker JVM
            chain, p = [], pid
            for _ in range(6):
                p = parent(p)
                if not p:
                    break
                chain.append(p)
            worker = next((c for c in chain if "deploy.worker.Worker" in cmdline(c)), None)
            if worker is None:
                continue
            if args.kill == "trident":
                victims = [pid]
            else:
                # The whole node: the worker, its executor, the pipe and trident at once.
                victims = descendants(worker)
                for v in victims:
                    try:
                        os.kill(v, signal.SIGSTOP)
                    except OSError:
                        pass
            for v in victims:
                try:
                    os.kill(v, signal.SIGKILL)
                except OSError:
                    pass
            report["killed"] = {"what": args.kill, "pids": victims,
                                "at_s": round(time.monotonic() - report["t0"], 2)}
            print(f"killed {args.kill}: pids {victims}", file=sys.stderr, flush=True)
            return
        time.sleep(0.02)
    report["killed"] = None


def udf_partition(batches):
    """mapInPandas: one `trident serve` per Python worker, kept across partitions."""
    import pandas as pd
    import trident_worker as tw

    global _RUNNER
    if "_RUNNER" not in globals():
        _RUNNER = tw.runner("serve", os.environ["TRIDENT_BIN"], os.environ["TRIDENT_NER_MODEL"],
                            os.environ["TRIDENT_SENTIMENT_MODEL"], int(os.environ.get("TRIDENT_THREADS", "1")))
    for df in batches:
        lines = _RUNNER.run(list(df["id"]), list(df["text"]))
        yield pd.DataFrame({"value": lines})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--master", default=os.environ.get("SPARK_MASTER", "spark://127.0.0.1:7078"))
    p.add_argument("--input", required=True, help="a JSON Lines file or a folder of *.jsonl")
    p.add_argument("--output", required=True, help="folder for the results (replaced)")
    p.add_argument("--workers", type=int, default=2, help="cores for the job (one per worker)")
    p.add_argument("--partitions", type=int, default=24)
    p.add_argument("--variant", choices=["pipe", "udf"], default="pipe")
    p.add_argument("--trident", default=os.environ.get("TRIDENT_BIN", "trident"))
    p.add_argument("--ner-model", default=os.environ.get("TRIDENT_NER_MODEL", "dslim/bert-base-NER"))
    p.add_argument("--sentiment-model", default=os.environ.get(
        "TRIDENT_SENTIMENT_MODEL", "distilbert/distilbert-base-uncased-finetuned-sst-2-english"))
    p.add_argument("--threads", type=int, default=int(os.environ.get("TRIDENT_THREADS", "1")))
    p.add_argument("--kill", choices=["worker", "trident"], help="kill one worker mid-job")
    p.add_argument("--kill-at", type=float, default=0.4, help="fraction of the tasks finished first")
    p.add_argument("--label", default="")
    args = p.parse_args()

    files = sorted(glob.glob(os.path.join(args.input, "*.jsonl"))) if os.path.isdir(args.input) else [args.input]
    total = sum(1 for f in files for line in open(f, encoding="utf-8") if line.strip())
    shutil.rmtree(args.output, ignore_errors=True)

    from pyspark.sql import SparkSession

    env = {
        "TRIDENT_BIN": os.path.abspath(args.trident) if os.sep in args.trident else args.trident,
        "TRIDENT_NER_MODEL": args.ner_model, "TRIDENT_SENTIMENT_MODEL": args.sentiment_model,
        "TRIDENT_THREADS": str(args.threads), "PYTHONPATH": SCALE,
        # The Python workers of the udf variant: this venv's interpreter (pandas, pyarrow).
        "PYSPARK_PYTHON": sys.executable,
    }
    os.environ["PYSPARK_PYTHON"] = sys.executable
    for k in ("TRIDENT_KERNELS", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE"):
        if k in os.environ:
            env[k] = os.environ[k]
    t_session = time.monotonic()
    b = (SparkSession.builder.master(args.master).appName(args.label or "trident-ner-sentiment")
         .config("spark.cores.max", str(args.workers))
         .config("spark.executor.cores", "1")
         .config("spark.executor.memory", "512m")
         .config("spark.driver.memory", "512m")
         .config("spark.driver.host", "127.0.0.1")
         .config("spark.driver.bindAddress", "127.0.0.1")
         .config("spark.ui.enabled", "false")
         .config("spark.ui.showConsoleProgress", "false")
         .config("spark.task.maxFailures", "8")
         # Re-run a lost executor's tasks promptly; speculation off (no duplicate attempts).
         .config("spark.speculation", "false")
         .config("spark.pyspark.python", sys.executable))
    for k, v in env.items():
        b = b.config(f"spark.executorEnv.{k}", v)
    spark = b.getOrCreate()
    sc = spark.sparkContext
    sc.setLogLevel("ERROR")
    # Wait for the executors (one per worker) so the timing starts with the workers up.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if sc._jsc.sc().getExecutorMemoryStatus().size() - 1 >= args.workers:
            break
        time.sleep(0.2)
    session_s = time.monotonic() - t_session

    cpu0 = netns_cpu_seconds()
    t0 = time.monotonic()
    report = {"t0": t0}
    done = threading.Event()
    kt = None
    if args.kill:
        kt = threading.Thread(target=killer, args=(args, sc, done, report), daemon=True)
        kt.start()

    inputs = ",".join(os.path.abspath(f) for f in files)
    if args.variant == "pipe":
        jvm = sc._jvm
        command = jvm.java.util.ArrayList()
        command.add(os.path.join(HERE, "trident-pipe.sh"))
        lines = sc._jsc.textFile(inputs, args.partitions)
        lines.pipe(command).saveAsTextFile(os.path.abspath(args.output))
    else:
        df = spark.read.json([os.path.abspath(f) for f in files]).select("id", "text").repartition(args.partitions)
        out = df.mapInPandas(udf_partition, schema="value string")
        out.write.text(os.path.abspath(args.output))
    seconds = time.monotonic() - t0
    cpu1 = netns_cpu_seconds()
    done.set()
    if kt:
        kt.join(1)
    spark.stop()

    rows = sum(open(f, "rb").read().count(b"\n") for f in glob.glob(os.path.join(args.output, "part-*")))
    fig = {"job": "spark", "label": args.label or f"spark-{args.variant}-{args.workers}w",
           "mode": args.variant, "workers": args.workers, "articles": total, "rows": rows,
           "seconds": round(seconds, 2), "articles_per_s": round(total / seconds, 1),
           "session_s": round(session_s, 1),
           "load1": float(open("/proc/loadavg").read().split()[0])}
    if cpu0 is not None and cpu1 is not None:
        # Every process of the local cluster (daemons, driver, workers, trident), per article.
        fig["cpu_s"] = round(cpu1 - cpu0, 2)
        fig["cpu_ms_per_article"] = round((cpu1 - cpu0) / total * 1e3, 2)
    if args.kill:
        fig["killed"] = report.get("killed")
    print(json.dumps(fig), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
