#!/usr/bin/env python3
"""Exactly one result per input id: exit 0 when so, 1 on any lost, doubled or unknown id.

    check_ids.py --input articles.jsonl OUTPUT [OUTPUT ...]

OUTPUT is a JSON Lines file or a folder of them (Spark's part-* files, Ray's *.jsonl; names
starting with "." or "_" such as _SUCCESS and .crc files are skipped). Every output line must
be a whole JSON object with an "id"; a torn line (no newline at the end of a file, or not
JSON) fails the check.

Options:
  --require ner,sentiment   each row must carry these fields (a row with "error" fails
                            unless --allow-errors)
  --reference FIELD=FILE    compare each row's FIELD with the "result" of the same id in a
                            JSON Lines FILE written by the bare CLI (--format jsonl): labels,
                            words and offsets exactly, scores within --tolerance
  --json                    print the summary as one JSON object

Ids are compared as JSON values: 7 and "7" are different ids.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter


def output_files(paths):
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
                for f in sorted(files):
                    if not f.startswith((".", "_")):
                        yield os.path.join(root, f)
        elif os.path.exists(path):
            yield path
        else:
            raise SystemExit(f"check_ids: {path}: no such file or folder")


def key(value) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def read_jsonl(path, problems, what):
    with open(path, "rb") as f:
        data = f.read()
    if data and not data.endswith(b"\n"):
        problems.append(f"{path}: the last line is torn (no newline at the end)")
    for n, raw in enumerate(data.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except ValueError:
            problems.append(f"{path}:{n}: not JSON: {raw[:80]!r}")
            continue
        if not isinstance(row, dict) or "id" not in row:
            problems.append(f"{path}:{n}: {what} row without an id")
            continue
        yield row


def same(a, b, tol) -> bool:
    """Equal JSON values, numbers within tol (float rounding of other batch shapes)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) <= tol
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], tol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y, tol) for x, y in zip(a, b))
    return a == b


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="the job's input JSON Lines ({\"id\", ...})")
    p.add_argument("outputs", nargs="+")
    p.add_argument("--require", default="", help="comma-separated fields every row must have")
    p.add_argument("--allow-errors", action="store_true", help="rows with \"error\" are fine")
    p.add_argument("--reference", action="append", default=[], metavar="FIELD=FILE")
    p.add_argument("--tolerance", type=float, default=1e-4)
    p.add_argument("--json", action="store_true")
    p.add_argument("--show", type=int, default=5, help="problems to print per kind")
    a = p.parse_args()

    problems: list[str] = []
    inputs = Counter(key(r["id"]) for r in read_jsonl(a.input, problems, "input"))
    dup_inputs = [i for i, c in inputs.items() if c > 1]
    if dup_inputs:
        problems.append(f"the input itself repeats {len(dup_inputs)} ids, e.g. {dup_inputs[:3]}")

    files = list(output_files(a.outputs))
    seen: Counter = Counter()
    rows: dict = {}
    errors = []
    missing_fields = []
    required = [f for f in a.require.split(",") if f]
    for f in files:
        for row in read_jsonl(f, problems, "output"):
            k = key(row["id"])
            seen[k] += 1
            rows[k] = row
            if "error" in row:
                errors.append((k, row["error"]))
            elif any(field not in row for field in required):
                missing_fields.append(k)

    lost = [i for i in inputs if i not in seen]
    doubled = [i for i, c in seen.items() if c > 1]
    unknown = [i for i in seen if i not in inputs]

    mismatched: dict = {}
    for spec in a.reference:
        field, _, path = spec.partition("=")
        ref = {key(r["id"]): r for r in read_jsonl(path, problems, "reference")}
        bad = [k for k, row in rows.items()
               if k in ref and field in row and not same(row[field], ref[k].get("result"), a.tolerance)]
        missing = [k for k in rows if k not in ref]
        if missing:
            problems.append(f"reference {path} lacks {len(missing)} ids, e.g. {missing[:3]}")
        mismatched[field] = bad

    summary = {
        "inputs": sum(inputs.values()), "output_files": len(files), "rows": sum(seen.values()),
        "lost": len(lost), "doubled": len(doubled), "unknown": len(unknown),
        "errors": len(errors), "missing_fields": len(missing_fields),
        "mismatched": {f: len(v) for f, v in mismatched.items()}, "problems": len(problems),
    }
    failed = (lost or doubled or unknown or problems or missing_fields
              or (errors and not a.allow_errors) or any(mismatched.values()))
    summary["ok"] = not failed
    if a.json:
        print(json.dumps(summary))
    else:
        print("check_ids: {inputs} inputs, {rows} rows in {output_files} files: {lost} lost, "
              "{doubled} doubled, {unknown} unknown, {errors} errors".format(**summary)
              + "".join(f", {n} {f} differ from the reference" for f, n in summary["mismatched"].items())
              + (" -> OK" if not failed else " -> FAILED"))
    show = a.show
    for label, items in (("lost", lost), ("doubled", doubled), ("unknown", unknown),
                         ("without the required fields", missing_fields)):
        if items:
            print(f"  {label}: " + ", ".join(items[:show]) + (" ..." if len(items) > show else ""),
                  file=sys.stderr)
    for f, items in mismatched.items():
        if items:
            print(f"  {f} differs from the reference: " + ", ".join(items[:show]), file=sys.stderr)
    if errors and not a.allow_errors:
        for k, e in errors[:show]:
            print(f"  error row {k}: {e}", file=sys.stderr)
    for msg in problems[:show]:
        print(f"  {msg}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
