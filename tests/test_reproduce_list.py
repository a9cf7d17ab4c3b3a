"""docs/reproduce_list.py: an independent regeneration of the lists (URS §3, R-LIST).

Run as an independent statistician would: a separate interpreter without site-packages
(``-I -S``: the standard library only), given the definition file and the seed.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from randomizer.domain import bundled_trial_path
from tests.conftest import APPENDIX_A_SEED, make_trial_database
from tests.randomizer.test_backup import sealroom

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "reproduce_list.py"
LETTER = {"igpro20": "A", "placebo": "P"}
#: URS Appendix A: the first 16 slots of strata 1, 4 and 6.
APPENDIX_A = {
    1: "A P A P P A A P A P P A P A P A",
    4: "A P A P P A A A P P A A P P P A",
    6: "P A P A A P A P P A A P P P A A",
}


def reproduce(*args: str, seed: bytes = APPENDIX_A_SEED) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-I",
            "-S",
            str(SCRIPT),
            "--trial",
            str(bundled_trial_path()),
            "--seed",
            seed.hex(),
            *args,
        ],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.requirement("R-LIST")
@pytest.mark.parametrize("stratum", sorted(APPENDIX_A))
def test_the_script_gives_appendix_as_slots(stratum):
    result = reproduce("--stratum", str(stratum))

    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(result.stdout.splitlines()))[1:]
    assert " ".join(LETTER[arm] for _key, _number, arm in rows[:16]) == APPENDIX_A[stratum]
    assert rows[0][1] == f"R{stratum:02d}-0001"


@pytest.mark.requirement("R-LIST")
def test_a_stratum_may_be_named_by_its_key():
    by_key = reproduce("--stratum", "region=europe|prior_ig=no")

    assert by_key.stdout == reproduce("--stratum", "4").stdout


@pytest.mark.requirement("R-LIST")
def test_the_script_agrees_with_the_services_export_and_finds_a_changed_slot(scratch, tmp_path):
    trial = make_trial_database(scratch, "sqlite", tmp_path / "service", kits_per_arm=12)
    out = tmp_path / "lists.csv"
    exported = sealroom(
        trial, "lists", "export", "--seed", APPENDIX_A_SEED.hex(), "--out", str(out)
    )
    assert exported.exit_code == 0, exported.output

    same = reproduce("--all", "--compare", str(out))
    lines = out.read_text().splitlines()
    flipped = {"igpro20": "placebo", "placebo": "igpro20"}
    key, number, arm = lines[5].split(",")  # slot R01-0005
    changed = [*lines[:5], f"{key},{number},{flipped[arm]}", *lines[6:]]
    (tmp_path / "changed.csv").write_text("\n".join(changed) + "\n")
    different = reproduce("--stratum", "1", "--compare", str(tmp_path / "changed.csv"))

    assert same.returncode == 0 and same.stdout.startswith("SAME: "), same.stdout + same.stderr
    assert different.returncode == 1 and "R01-0005" in different.stdout
