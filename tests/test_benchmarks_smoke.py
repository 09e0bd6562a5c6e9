"""The benchmark harness runs end to end (its figures are not checked: timing claims live in
benchmarks/README.md, never in asserts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_quick_run_on_memory_prints_the_table_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "memory", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "append one turn (2 steps)" in done.stdout
    assert "targets missed:" in done.stdout
    report = json.loads(out.read_text())
    (result,) = report["results"]
    assert result["target"] == "memory" and result["skipped"] is None
    metrics = {row["metric"] for row in result["rows"]}
    assert {"load 100 steps", "peak RSS of the run (MiB)"} <= metrics
    for row in result["rows"]:
        assert row["value"]["min"] <= row["value"]["median"] <= row["value"]["max"]


def test_unknown_target_is_refused_before_anything_runs() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--only", "oracle"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "invalid choice: 'oracle'" in done.stderr
