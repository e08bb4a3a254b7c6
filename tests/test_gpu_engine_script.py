"""``bench/gpu_engine.py`` runs end to end on CPU with the tiny model (its GPU path is the same code
with full-size checkpoints), and prints what its docstring promises."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.services import REPO_ROOT


def test_the_engine_benchmark_runs_on_cpu_with_the_tiny_model_and_prints_every_measurement():
    # given the benchmark script, asked for its smoke run
    command = [sys.executable, "bench/gpu_engine.py", "--device", "cpu", "--tiny"]

    # when it runs as a subprocess from the repository root
    finished = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)

    # then it succeeded
    assert finished.returncode == 0, finished.stdout + finished.stderr
    lines = finished.stdout.splitlines()
    # and it printed a summary line whose JSON names every concurrency level it measured
    (summary_line,) = [line for line in lines if line.startswith("summary: ")]
    summary = json.loads(summary_line.removeprefix("summary: "))
    decode = summary["models"]["tiny"]["decode"]
    assert sorted(decode, key=int) == [str(rows) for rows in summary["concurrency"]] == ["1", "8", "32", "64"]
    # and one human-readable line for each of those levels, with the tokens it actually generated
    for rows in summary["concurrency"]:
        assert any(line.startswith(f"tiny rows={rows}: ") and "tokens/s" in line for line in lines), finished.stdout
        assert decode[str(rows)]["tokens"] > 0
    # and lines and numbers for vision, time to first token and peak memory
    for measurement in ("vision", "ttft", "peak memory"):
        assert any(line.startswith(f"tiny {measurement}: ") for line in lines), finished.stdout
    model = summary["models"]["tiny"]
    assert model["vision"]["tiles"] == 8 * 7  # eight 6-tile requests and their thumbnails
    assert model["ttft_ms"] > 0 and model["peak_memory_bytes"] > 0
