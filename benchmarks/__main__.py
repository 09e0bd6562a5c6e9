"""``python -m benchmarks [--quick] [--only NAME ...]``: run, print the table, write JSON.

Each backend (and the backend-free replay measurements) runs in a child process of its own,
so that its peak RSS is its own and a failure in one leaves the others' figures standing.
Results go to ``benchmarks/results/<UTC time>.json`` and ``benchmarks/results/latest.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ._backends import BACKENDS, Unavailable, open_backend
from ._sizes import DEFAULT, QUICK, Sizes
from ._timing import Row, Stat

TARGETS = ("replay", *BACKENDS)
RESULTS = Path(__file__).parent / "results"


def _worker(name: str, sizes: Sizes) -> dict[str, Any]:
    started = time.perf_counter()
    rows: list[Row] = []
    skipped = None
    if name == "replay":
        from . import compaction, replay

        rows = replay.measure(sizes) + compaction.measure(sizes)
    else:
        from . import store_costs, turns

        try:
            with open_backend(name) as env:
                rows = store_costs.measure(env, sizes)
                rows += turns.measure(env, sizes)
        except Unavailable as exc:
            skipped = str(exc)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    if skipped is None:
        rows.append(Row(name, "peak RSS of the run (MiB)", Stat(peak, peak, peak, 1), unit="MiB"))
    return {
        "target": name,
        "skipped": skipped,
        "seconds": time.perf_counter() - started,
        "rows": [row.to_json() for row in rows],
    }


def _format(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1000:.3f} ms"
    if unit in ("B", "turns/s"):
        return f"{value:,.0f} {unit}"
    return f"{value:,.1f} {unit}"


def _print_rows(result: dict[str, Any]) -> None:
    if result["skipped"]:
        print(f"{result['target']:10}  skipped: {result['skipped']}", flush=True)
        return
    for row in result["rows"]:
        value, unit = row["value"], row["unit"]
        text = _format(value["median"], unit)
        if value["n"] > 1:
            text += f" [{_format(value['min'], unit)}..{_format(value['max'], unit)}]"
        line = f"{row['backend']:10}  {row['metric']:52} {text:40}"
        if row["reference"] is not None:
            ref = _format(row["reference"]["median"], unit)
            line += f" {row['reference_name']}: {ref}; ratio {row['ratio']:.2f}"
            if row["target"] is not None:
                line += f" (target <= {row['target']}: {row['verdict']})"
        if row["note"]:
            line += f"  {row['note']}"
        print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke-run sizes (~1 minute)")
    parser.add_argument(
        "--only", action="append", choices=TARGETS, help="run only this (repeatable)"
    )
    parser.add_argument("--worker", choices=TARGETS, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help="write the JSON results here as well")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else DEFAULT
    if args.worker:
        json.dump(_worker(args.worker, sizes), sys.stdout)
        return 0

    results: list[dict[str, Any]] = []
    failed = False
    for name in args.only or TARGETS:
        command = [sys.executable, "-m", "benchmarks", "--worker", name]
        command += ["--quick"] if args.quick else []
        done = subprocess.run(
            command, capture_output=True, text=True, cwd=Path(__file__).parent.parent
        )
        if done.returncode != 0:
            failed = True
            print(f"{name:10}  FAILED:\n{done.stderr}", file=sys.stderr, flush=True)
            results.append({"target": name, "skipped": None, "error": done.stderr, "rows": []})
            continue
        result = json.loads(done.stdout)
        results.append(result)
        _print_rows(result)
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "sizes": "quick" if args.quick else "default",
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "results": results,
    }
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for path in (RESULTS / f"{stamp}.json", RESULTS / "latest.json", args.out):
        if path is not None:
            path.write_text(json.dumps(report, indent=1) + "\n")
    misses = [
        f"{row['backend']}: {row['metric']}"
        for result in results
        for row in result["rows"]
        if row["verdict"] == "MISS"
    ]
    print(f"\ntargets missed: {len(misses)}" + "".join(f"\n  {m}" for m in misses))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
