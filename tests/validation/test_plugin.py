"""The validation report's rules (R-VAL): what passes, what fails the run, and the files.

The assessment is checked on hand-made outcomes; the plugin itself is checked by running
pytest on a small planted test module with ``--validation-report`` (pytester), so both a
covering test and a gap are seen to land in ``report.json`` and ``report.html``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.validation.plugin import (
    REQUIREMENTS_FILE,
    CollectedTest,
    Requirement,
    assess,
    load_requirements,
    unknown_ids,
)

pytest_plugins = ["pytester"]

REQUIREMENTS = [
    Requirement("R-NF", "10", "Non-functional."),
    Requirement("R-NF-1", "10", "Concurrency."),
    Requirement("R-NF-2", "10", "Atomicity."),
    Requirement("R-WEB-1", "11", "Pages.", deferred="not built yet: issue 13"),
    Requirement("R-CFG", "2", "Definition."),
]


def status(results: list[CollectedTest], ci: bool = False) -> dict[str, tuple[str, bool]]:
    return {r["id"]: (r["status"], r["fails_run"]) for r in assess(REQUIREMENTS, results, ci=ci)}


@pytest.mark.requirement("R-VAL")
def test_a_requirement_passes_with_one_passing_test_and_no_failing_one():
    results = [
        CollectedTest("t1", ("R-NF-1",), "sqlite", "passed"),
        CollectedTest("t2", ("R-NF-1",), "postgresql", "skipped", "no PostgreSQL"),
        CollectedTest("t3", ("R-NF-2",), "sqlite", "passed"),
        CollectedTest("t4", ("R-NF-2",), "postgresql", "failed", "failed in call"),
    ]
    seen = status(results)
    report = {r["id"]: r for r in assess(REQUIREMENTS, results, ci=False)}

    assert seen["R-NF-1"] == ("passed", False)
    assert report["R-NF-1"]["by_backend"] == {"sqlite": "passed", "postgresql": "skipped"}
    assert report["R-NF-2"]["by_backend"] == {"sqlite": "passed", "postgresql": "failed"}
    assert seen["R-NF-2"] == ("failed", True)
    # A group id counts its members' tests: one of them failed.
    assert seen["R-NF"] == ("failed", True)


@pytest.mark.requirement("R-VAL")
def test_a_requirement_without_a_test_fails_the_run_unless_deferred():
    seen = status([CollectedTest("t1", ("R-NF-1",), None, "passed")])

    assert seen["R-CFG"] == ("no test", True)
    assert seen["R-WEB-1"] == ("deferred", False)
    assert seen["R-NF-2"] == ("no test", True)
    assert seen["R-NF"] == ("passed", False)


@pytest.mark.requirement("R-VAL")
def test_a_requirement_only_skipped_is_not_run_and_fails_only_in_ci():
    results = [CollectedTest("t1", ("R-CFG",), "postgresql", "skipped", "no browser")]

    outside, inside = status(results)["R-CFG"], status(results, ci=True)["R-CFG"]
    report = {r["id"]: r for r in assess(REQUIREMENTS, results, ci=False)}

    assert outside == ("not run", False)
    assert inside == ("not run", True)
    assert report["R-CFG"]["reasons"] == ["no browser"]


@pytest.mark.requirement("R-VAL")
def test_requirements_without_a_passing_test_come_first():
    results = [CollectedTest("t1", ("R-CFG",), None, "passed")]

    order = [r["id"] for r in assess(REQUIREMENTS, results, ci=False)]

    assert order == ["R-NF", "R-NF-1", "R-NF-2", "R-WEB-1", "R-CFG"]


@pytest.mark.requirement("R-VAL")
def test_a_marker_naming_an_unlisted_id_is_found():
    results = [CollectedTest("t1", ("R-CFG", "R-NOPE-9"), None, "passed")]

    assert unknown_ids(REQUIREMENTS, results) == ["R-NOPE-9"]


@pytest.mark.requirement("R-VAL")
def test_the_project_lists_every_urs_section_and_each_id_once():
    requirements = load_requirements()
    ids = [r.id for r in requirements]
    groups = {"R-API", "R-AUD", "R-CFG", "R-CLI", "R-FIX", "R-KIT", "R-LIST", "R-NF"}
    groups |= {"R-RCPT", "R-ROLE", "R-SEAL", "R-UNB"}

    assert len(ids) == len(set(ids))
    assert groups <= set(ids)
    assert {"R-VAL", "R-BLIND-1", "R-BLIND-2", "R-KEY-4", "R-NF-8", "R-REP-5"} <= set(ids)
    assert all(r.deferred is None or r.deferred.startswith("not built yet") for r in requirements)


@pytest.mark.requirement("R-VAL")
def test_a_deferral_without_a_reason_is_refused(tmp_path: Path):
    bad = tmp_path / "requirements.toml"
    bad.write_text('[[requirement]]\nid = "R-CFG"\nstatement = "x"\ndeferred = ""\n')

    with pytest.raises(ValueError, match="deferral needs a reason"):
        load_requirements(bad)


PLANTED = """
import pytest

@pytest.mark.requirement("R-CFG")
def test_covers():
    pass

@pytest.mark.requirement("R-NF-1")
def test_skipped():
    pytest.skip("no PostgreSQL here")

def test_hands_evidence(validation_evidence):
    validation_evidence["checkpoint"] = 7
"""


@pytest.mark.requirement("R-VAL")
@pytest.mark.parametrize("workers", [None, "2"], ids=["one-process", "xdist"])
def test_the_plugin_writes_both_files_and_fails_on_a_gap(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, workers: str | None
):
    # Under pytest-xdist (make validation) the workers run the tests and the controller, which
    # collects nothing itself, writes the report from what their reports carry.
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("SEALROOM_TEST_DATABASE_URL", raising=False)
    pytester.makepyfile(test_planted=PLANTED)
    pytester.makeini("[pytest]\nmarkers =\n    requirement(id): URS id\n    slow: slow\n")
    out = pytester.path / "validation"

    arguments = ["-p", "tests.validation.plugin", f"--validation-report={out}", "-m", "not slow"]
    if workers is None:
        result = pytester.runpytest_inprocess(*arguments)
    else:
        monkeypatch.setenv("PYTHONPATH", str(REQUIREMENTS_FILE.parents[1]))
        result = pytester.runpytest_subprocess(*arguments, "-p", "xdist", "-n", workers)

    report = json.loads((out / "report.json").read_text())
    by_id = {r["id"]: r for r in report["requirements"]}
    html = (out / "report.html").read_text()
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # gaps: R-NF-2, R-API, ...
    assert by_id["R-CFG"]["status"] == "passed"
    assert by_id["R-NF-1"]["status"] == "not run"
    assert by_id["R-NF-1"]["reasons"] == ["no PostgreSQL here"]
    assert by_id["R-API"]["status"] == "no test"  # its one test was deselected: not run here
    assert report["tests"] == 3
    assert report["evidence"] == {"test_planted.py::test_hands_evidence": {"checkpoint": 7}}
    assert {r.id for r in load_requirements(REQUIREMENTS_FILE)} == set(by_id)
    assert report["passed"] is False
    assert report["environment"]["python"]
    assert html.index('id="R-API"') < html.index('id="R-CFG"')
