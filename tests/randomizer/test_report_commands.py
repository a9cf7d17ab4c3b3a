"""``sealroom report``, ``sealroom export dm`` and ``sealroom simulate`` (issue 14).

The slow test is the issue's "done when": a served demo trial after ``sealroom simulate
--participants 60``; its reports, read back through the commands, count what the
simulation did, and the balance agrees with an independent count of the DM export.
"""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

import pyreadstat
import pytest

from randomizer.simulation import ELIGIBLE, INELIGIBLE, plans
from tests.conftest import TrialDatabase, make_trial_database
from tests.randomizer.served import Server
from tests.randomizer.test_backup import sealroom

pytestmark = pytest.mark.requirement("R-CLI")


@pytest.fixture(params=["sqlite"])
def small_trial(request: pytest.FixtureRequest, scratch: Any, tmp_path: Path) -> TrialDatabase:
    return make_trial_database(scratch, request.param, tmp_path / "service", kits_per_arm=12)


@pytest.mark.requirement("R-REP-3")
@pytest.mark.requirement("R-REP-4")
@pytest.mark.requirement("R-REP-5")
def test_the_commands_write_reports_pictures_and_an_audited_export(small_trial, tmp_path):
    written = {}
    for name, out in (
        ("enrollment", "enrollment.json"),
        ("enrollment", "enrollment.csv"),
        ("enrollment", "enrollment.svg"),
        ("screen-failures", "failures.png"),
        ("balance", "balance.svg"),
    ):
        result = sealroom(small_trial, "report", name, "--out", str(tmp_path / out))
        assert result.exit_code == 0, result.output
        written[out] = (tmp_path / out).read_bytes()
        assert (tmp_path / out).stat().st_mode & 0o077 == 0
    dm = sealroom(small_trial, "export", "dm", "--out", str(tmp_path / "dm.csv"))

    assert json.loads(written["enrollment.json"])["totals"]["screened"] == 0
    assert written["enrollment.csv"].startswith(b"group,name,screened,")
    assert "cumulative randomisations" in written["enrollment.svg"].decode()
    ET.fromstring(written["balance.svg"])
    assert written["failures.png"].startswith(b"\x89PNG")
    assert dm.exit_code == 0 and "0 participants written" in dm.output
    assert (tmp_path / "dm.csv").read_text().startswith("STUDYID,DOMAIN,USUBJID,SUBJID,")


def test_an_out_file_of_another_kind_is_a_usage_error(small_trial, tmp_path):
    for args in (
        ("report", "balance", "--out", str(tmp_path / "b.pdf")),
        ("report", "screen-failures", "--out", str(tmp_path / "f.csv")),
        ("export", "dm", "--out", str(tmp_path / "dm.sas7bdat")),
    ):
        result = sealroom(small_trial, *args)
        assert result.exit_code == 2, result.output
        assert not list(tmp_path.glob(f"*{Path(args[-1]).suffix}"))


def test_the_simulated_answers_are_seeded_and_fail_what_they_say():
    today = date(2026, 12, 1)
    first = list(plans(400, ["101", "102", "201"], random.Random(7), today))
    again = list(plans(400, ["101", "102", "201"], random.Random(7), today))

    assert first == again
    ineligible = [
        p
        for p in first
        if any(p.eligibility[k] != v for k, v in ELIGIBLE.items() if k != "age_years")
        or p.eligibility["age_years"] < 18
    ]
    late = [p for p in first if (today - p.screened_on).days > 21]
    assert 20 < len(ineligible) < 80 and 5 < len(late) < 40
    assert not set(map(id, ineligible)) & set(map(id, late))
    assert {p.site for p in first} == {"101", "102", "201"}
    assert len(INELIGIBLE) == 9


@pytest.mark.slow
@pytest.mark.requirement("R-REP-1")
@pytest.mark.requirement("R-REP-2")
@pytest.mark.requirement("R-REP-3")
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_after_simulating_60_participants_the_reports_count_what_was_done(
    backend, scratch, tmp_path
):
    from tests.conftest import BACKENDS

    if backend not in BACKENDS:
        pytest.skip("SEALROOM_TEST_DATABASE_URL is not set")
    trial = make_trial_database(scratch, backend, tmp_path / "service")
    service = Server(trial, tmp_path / "service", workers=1).start()
    try:
        simulated = sealroom(
            trial,
            "simulate",
            "--participants",
            "60",
            "--url",
            f"http://127.0.0.1:{service.port}",
            "--tokens",
            str(tmp_path / "service" / "tokens.json"),
            "--seed",
            "14",
        )
    finally:
        service.stop()
    assert simulated.exit_code == 0, simulated.output
    outcomes = dict(
        (name, int(n))
        for n, name in (
            part.split(" ", 1) for part in simulated.output.split(": ", 1)[1].strip().split(", ")
        )
    )
    for name, out in (("enrollment", "e.json"), ("balance", "b.json")):
        assert sealroom(trial, "report", name, "--out", str(tmp_path / out)).exit_code == 0
    for out in ("dm.csv", "dm.xpt"):
        assert sealroom(trial, "export", "dm", "--out", str(tmp_path / out)).exit_code == 0
    enrollment = json.loads((tmp_path / "e.json").read_text())
    balance = json.loads((tmp_path / "b.json").read_text())
    rows = list(csv.DictReader((tmp_path / "dm.csv").open()))
    frame, _meta = pyreadstat.read_xport(str(tmp_path / "dm.xpt"))

    assert sum(outcomes.values()) == 60
    assert enrollment["totals"]["screened"] == 60
    assert enrollment["totals"]["randomized"] == outcomes["randomized"] == len(rows) == len(frame)
    assert enrollment["totals"]["screen_failed"] == outcomes.get("ineligible", 0) + outcomes.get(
        "screening-window", 0
    )
    assert enrollment["screen_failures"]["outside_window"] == outcomes.get("screening-window", 0)
    assert sum(s["randomized"] for s in enrollment["sites"]) == len(rows)
    independent = Counter((row["STRATAR"], row["ARMCD"].lower()) for row in rows)
    for stratum in balance["strata"]:
        for arm, n in stratum["counts"].items():
            assert n == independent[(stratum["stratum"], arm)]
    assert list(frame["SUBJID"]) == [row["SUBJID"] for row in rows]
    assert list(frame["ARMCD"]) == [row["ARMCD"] for row in rows]


@pytest.mark.requirement("R-REP-4")
def test_drawing_a_picture_writes_nothing_into_the_users_home(tmp_path):
    """matplotlib keeps its cache in a private temporary directory, not ~/.config or
    ~/.cache, and draws with Agg even where a display is set."""
    home = tmp_path / "home"
    home.mkdir()
    code = (
        "from randomizer import pictures\n"
        "report = {'trial': 'T', 'screen_failures': {'by_rule': [{'rule': 'I1', "
        "'participants': 2}], 'outside_window': 0}}\n"
        "assert pictures.screen_failures(report, 'png').startswith(b'\\x89PNG')\n"
        "import matplotlib, os\n"
        "assert matplotlib.get_backend().lower() == 'agg'\n"
        "print(os.environ['MPLCONFIGDIR'])\n"
    )
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")
    }
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "HOME": str(home), "DISPLAY": ":0"},
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert list(home.iterdir()) == []
    assert not result.stdout.strip().startswith(str(home))
