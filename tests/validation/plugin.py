"""Traceability for validation (R-VAL): every ``requirement`` marker, with each test's outcome.

Loaded by ``tests/conftest.py`` on every run, so that a test can hand evidence to the report
(the :func:`validation_evidence` fixture); the report itself is written only when pytest runs
with ``--validation-report DIR`` (``make validation``): ``DIR/report.json`` and
``DIR/report.html``.

A requirement (``docs/requirements.toml``) is *passed* when one of its tests passed and none
failed; *failed* when one failed; *not run* when its tests were all skipped (a missing
PostgreSQL, browser or HSM outside CI); *no test* when none carries its id. A group id (an
URS section such as ``R-NF``) counts its numbered members' tests too. The run fails when a
requirement has no passing test, unless the file defers it with a reason; a requirement
that was only skipped fails the run only when ``CI`` is set.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS_FILE = ROOT / "docs" / "requirements.toml"
REQUIREMENT_ID = re.compile(r"R-[A-Z]+(?:-[0-9]+)?")
BACKEND_NAMES = ("sqlite", "postgresql")

#: Statuses in the order the report lists them: what needs attention first.
STATUS_ORDER = ("failed", "no test", "not run", "deferred", "passed")
#: Statuses that fail ``make validation`` (``not run`` only when CI is set).
FAILING = ("failed", "no test")

#: How one backend's tests of a requirement sum up: a failure outweighs everything.
_BACKEND_RANK = ("failed", "passed", "skipped", "xfailed", "not run")

_COLLECTOR_KEY = pytest.StashKey["Collector"]()


@dataclass(frozen=True)
class Requirement:
    """One requirement of the URS as ``docs/requirements.toml`` states it."""

    id: str
    section: str
    statement: str
    deferred: str | None = None

    @property
    def group(self) -> str | None:
        """The group id of a numbered requirement (``R-NF`` for ``R-NF-3``), else None."""
        head, _, number = self.id.rpartition("-")
        return head if number.isdigit() and head.count("-") == 1 else None


@dataclass
class CollectedTest:
    """One collected test (one backend of a parametrised test) and how it ended."""

    nodeid: str
    requirements: tuple[str, ...]
    backend: str | None
    outcome: str = "not run"  # passed, failed, skipped, xfailed, not run
    reason: str | None = None
    duration: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "nodeid": self.nodeid,
            "backend": self.backend,
            "outcome": self.outcome,
            "reason": self.reason,
            "duration_seconds": round(self.duration, 3),
        }


def load_requirements(path: Path = REQUIREMENTS_FILE) -> list[Requirement]:
    """The requirements of ``path``, in file order; a malformed file raises ValueError."""
    document = tomllib.loads(path.read_text(encoding="utf-8"))
    requirements: list[Requirement] = []
    seen: set[str] = set()
    for index, entry in enumerate(document.get("requirement", [])):
        where = f"{path.name}: requirement[{index}]"
        unknown = set(entry) - {"id", "section", "statement", "deferred"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        rid, statement = entry.get("id"), entry.get("statement")
        if not isinstance(rid, str) or not REQUIREMENT_ID.fullmatch(rid):
            raise ValueError(f"{where}: id must look like R-ABC or R-ABC-1, got {rid!r}")
        if rid in seen:
            raise ValueError(f"{where}: {rid} is listed twice")
        if not isinstance(statement, str) or not statement.strip():
            raise ValueError(f"{where}: {rid} needs a statement")
        deferred = entry.get("deferred")
        if deferred is not None and (not isinstance(deferred, str) or not deferred.strip()):
            raise ValueError(f"{where}: {rid}'s deferral needs a reason")
        seen.add(rid)
        requirements.append(
            Requirement(rid, str(entry.get("section", "")), statement.strip(), deferred)
        )
    if not requirements:
        raise ValueError(f"{path.name}: no requirement listed")
    return requirements


def backend_of(item: pytest.Item) -> str | None:
    """The database backend a storage test runs on (from its parameters), else None."""
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return None
    for value in callspec.params.values():
        if isinstance(value, str) and value in BACKEND_NAMES:
            return value
    return None


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr or "skipped")


def assess(
    requirements: Sequence[Requirement], results: Sequence[CollectedTest], *, ci: bool
) -> list[dict[str, Any]]:
    """Each requirement's status and evidence, the ones needing attention first.

    ``results`` are every collected test's; a requirement's own tests and, for a group id, its
    members' tests are its evidence.
    """
    by_id: dict[str, list[CollectedTest]] = {r.id: [] for r in requirements}
    for result in results:
        for rid in result.requirements:
            by_id.setdefault(rid, []).append(result)
    members: dict[str, list[str]] = {}
    for requirement in requirements:
        if requirement.group in by_id:
            members.setdefault(requirement.group, []).append(requirement.id)

    assessed = []
    for order, requirement in enumerate(requirements):
        own = by_id[requirement.id]
        via = [(m, t) for m in members.get(requirement.id, []) for t in by_id[m]]
        outcomes = [t.outcome for t in own] + [t.outcome for _, t in via]
        if "failed" in outcomes:
            status = "failed"
        elif "passed" in outcomes:
            status = "passed"
        elif outcomes:
            status = "not run"
        else:
            status = "no test"
        reasons = sorted(
            {t.reason for t in own + [t for _, t in via] if t.outcome != "passed" and t.reason}
        )
        if status != "passed" and status != "failed" and requirement.deferred:
            status = "deferred"
        fails = status in FAILING or (status == "not run" and ci)
        by_backend: dict[str, str] = {}
        for test in own + [t for _, t in via]:
            if test.backend is not None:
                seen = by_backend.setdefault(test.backend, test.outcome)
                by_backend[test.backend] = min(seen, test.outcome, key=_BACKEND_RANK.index)
        assessed.append(
            {
                "id": requirement.id,
                "section": requirement.section,
                "statement": requirement.statement,
                "status": status,
                "fails_run": fails,
                "deferred": requirement.deferred,
                "reasons": reasons,
                "passed": outcomes.count("passed"),
                "by_backend": by_backend,
                "tests": [t.as_json() for t in own],
                "via_members": [{"member": m, **t.as_json()} for m, t in via],
                "_order": order,
            }
        )
    assessed.sort(key=lambda r: (STATUS_ORDER.index(r["status"]), r["_order"]))
    for entry in assessed:
        del entry["_order"]
    return assessed


def unknown_ids(requirements: Sequence[Requirement], results: Sequence[CollectedTest]) -> list[str]:
    """Ids that markers name but ``docs/requirements.toml`` does not list."""
    known = {r.id for r in requirements}
    return sorted({rid for t in results for rid in t.requirements} - known)


#: The ``user_properties`` names that carry a test's traceability from where it runs (a
#: pytest-xdist worker, or this process) to the process that writes the report.
_REQUIREMENTS_PROPERTY = "sealroom_requirements"
_BACKEND_PROPERTY = "sealroom_backend"
_EVIDENCE_PROPERTY = "sealroom_validation_evidence"


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Puts each test's requirement ids and backend on the reports it will send.

    Last, so that the items deselected (-m, -k) are gone: they are not part of this run. Under
    pytest-xdist the workers collect and the controller writes the report: reports carry their
    ``user_properties`` across, markers do not.
    """
    for item in items:
        ids = tuple(
            dict.fromkeys(
                str(arg) for marker in item.iter_markers("requirement") for arg in marker.args
            )
        )
        item.user_properties.append((_REQUIREMENTS_PROPERTY, ids))
        item.user_properties.append((_BACKEND_PROPERTY, backend_of(item)))


class Collector:
    """Gathers each test's requirements and outcome from the reports of its phases."""

    def __init__(self, config: pytest.Config, out: Path | None) -> None:
        self.config = config
        self.out = out
        self.results: dict[str, CollectedTest] = {}
        self.evidence: dict[str, Any] = {}
        self.environment: dict[str, Any] = {}

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        # At the start: the commit and versions are those of the code the tests load.
        if self.out is not None:
            from tests.validation.report import environment

            self.environment = environment()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        properties = dict(report.user_properties)
        result = self.results.get(report.nodeid)
        if result is None:
            if _REQUIREMENTS_PROPERTY not in properties:
                return  # not a test of this session's items (pytester's inner runs)
            result = self.results[report.nodeid] = CollectedTest(
                report.nodeid,
                tuple(properties[_REQUIREMENTS_PROPERTY]),
                properties.get(_BACKEND_PROPERTY),
            )
        if properties.get(_EVIDENCE_PROPERTY):
            self.evidence[report.nodeid] = properties[_EVIDENCE_PROPERTY]
        result.duration += report.duration
        if report.failed:
            result.outcome = "failed"
            result.reason = f"failed in {report.when}"
        elif report.skipped and result.outcome != "failed":
            if hasattr(report, "wasxfail"):
                result.outcome, result.reason = "xfailed", str(report.wasxfail)
            else:
                result.outcome, result.reason = "skipped", _skip_reason(report)
        elif report.when == "call" and report.passed and result.outcome == "not run":
            result.outcome = "passed"

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.out is None:
            return
        from tests.validation.report import write_report

        requirements = load_requirements()
        results = list(self.results.values())
        ci = bool(os.environ.get("CI"))
        assessed = assess(requirements, results, ci=ci)
        unknown = unknown_ids(requirements, results)
        report = {
            "format": "sealroom-validation/v1",
            "ci": ci,
            "pytest_exit_status": int(exitstatus),
            "environment": self.environment,
            "summary": {
                status: sum(1 for r in assessed if r["status"] == status) for status in STATUS_ORDER
            },
            "unknown_requirement_ids": unknown,
            "requirements": assessed,
            "evidence": self.evidence,
            "tests_without_requirement": sum(1 for t in results if not t.requirements),
            "tests": len(results),
        }
        failing = [r["id"] for r in assessed if r["fails_run"]]
        report["passed"] = not failing and not unknown and exitstatus == 0
        write_report(report, self.out)
        terminal = session.config.pluginmanager.get_plugin("terminalreporter")
        if terminal is not None:
            terminal.write_line(f"validation report: {self.out / 'report.html'}")
            for rid in unknown:
                terminal.write_line(f"validation: marker names {rid}, not in requirements.toml")
            for rid in failing:
                status = next(r["status"] for r in assessed if r["id"] == rid)
                terminal.write_line(f"validation: {rid} has no passing test ({status})")
        if (failing or unknown) and session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--validation-report",
        metavar="DIR",
        default=None,
        help="write DIR/report.json and DIR/report.html: each URS requirement, its tests and "
        "their outcomes (make validation)",
    )


def pytest_configure(config: pytest.Config) -> None:
    out = config.getoption("--validation-report")
    collector = Collector(config, Path(out) if out else None)
    config.stash[_COLLECTOR_KEY] = collector
    config.pluginmanager.register(collector, "sealroom-validation")


@pytest.fixture
def validation_evidence(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """A dict whose contents the report shows under ``evidence``, keyed by the test's id.

    Only plain JSON values belong in it; nothing secret (the report is an artefact anyone
    on the project may read).
    """
    store: dict[str, Any] = {}
    yield store
    if store:  # travels on the teardown report, to the process that writes the report
        request.node.user_properties.append((_EVIDENCE_PROPERTY, store))
