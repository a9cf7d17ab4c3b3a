"""Performance is measured by benchmarks/ and reported as figures and as ratios (R-NF-4).

Runs the randomisation benchmark for a handful of participants, on each backend, and checks
that it reports the minimal Flask endpoint doing one database write beside the service's
endpoints, in the same run, with each endpoint's ratio to it. Only the report's form is
checked, never a figure: the machine is shared and timings vary.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import BACKENDS, PG_URL

ROOT = Path(__file__).resolve().parents[1]
FIGURE = r"median\s+[\d.]+ ms\s+mean\s+[\d.]+ ms\s+\d+/s"


@pytest.mark.slow
@pytest.mark.requirement("R-NF-4")
@pytest.mark.parametrize("backend", BACKENDS)
def test_the_randomisation_benchmark_reports_figures_and_ratios_to_a_minimal_write(backend):
    database = ["--database-url", PG_URL] if backend == "postgresql" else []
    result = subprocess.run(
        [sys.executable, "benchmarks/randomize.py", "--participants", "5", *database],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )

    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    minimal = [line for line in lines if line.startswith("minimal Flask write")]
    randomise = [line for line in lines if line.startswith("POST .../randomize")]
    assert len(minimal) == len(randomise) == 1, result.stdout
    assert re.search(FIGURE, minimal[0])
    assert re.search(FIGURE + r"\s+x\s*[\d.]+ the minimal write \(median\)", randomise[0])
