"""The validation report's files: ``report.json`` (for machines) and ``report.html`` (for an
inspector), and the environment the suite ran in (R-VAL).

The HTML is one self-contained page, escaped throughout: test ids and skip reasons are text
from the code under test, never markup.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sqlite3
import subprocess
import sys
from html import escape
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

STATUS_COLOURS = {
    "failed": "#b00020",
    "no test": "#b00020",
    "not run": "#b00020",
    "deferred": "#8a5a00",
    "passed": "#1b5e20",
}


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip()


def _distributions() -> dict[str, str]:
    """Every installed distribution sealroom requires (test extra included), with its version."""
    names = []
    for requirement in importlib.metadata.requires("sealroom") or []:
        name = requirement.split(";")[0]
        for stop in "<>=![ ":
            name = name.split(stop)[0]
        names.append(name.strip())
    versions = {}
    for name in sorted(set(names), key=str.lower):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _postgresql_version() -> str | None:
    url = os.environ.get("SEALROOM_TEST_DATABASE_URL")
    if not url:
        return None
    from sqlalchemy import create_engine, text

    from randomizer.db import normalise_url

    engine = create_engine(normalise_url(url))
    try:
        with engine.connect() as connection:
            return str(connection.execute(text("SHOW server_version")).scalar_one())
    except Exception as exc:  # the report says why, it does not hide the run's result
        return f"unreachable ({type(exc).__name__})"
    finally:
        engine.dispose()


def environment() -> dict[str, Any]:
    """What the suite ran on: commit, Python, databases, libraries (no credentials)."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    postgresql = _postgresql_version()
    return {
        "commit": _git("rev-parse", "HEAD"),
        "commit_date": _git("show", "-s", "--format=%cI", "HEAD"),
        "working_tree_clean": status == "" if status is not None else None,
        "sealroom_version": importlib.metadata.version("sealroom"),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "databases": {
            "sqlite": sqlite3.sqlite_version,
            "postgresql": postgresql
            or "not run: SEALROOM_TEST_DATABASE_URL is not set (storage tests ran on SQLite only)",
        },
        "libraries": _distributions(),
        "ci": bool(os.environ.get("CI")),
    }


def write_report(report: dict[str, Any], directory: Path) -> None:
    """Write ``report.json`` and ``report.html`` into ``directory`` (created if missing)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "report.json").write_text(
        json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (directory / "report.html").write_text(render_html(report), encoding="utf-8")


def _rows(pairs: list[tuple[str, Any]]) -> str:
    return "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in pairs)


def _tests_table(tests: list[dict[str, Any]], member: bool = False) -> str:
    if not tests:
        return ""
    head = "<th>via</th>" if member else ""
    rows = []
    for test in tests:
        colour = "#1b5e20" if test["outcome"] == "passed" else "#b00020"
        via = f"<td>{escape(test['member'])}</td>" if member else ""
        rows.append(
            f"<tr>{via}<td><code>{escape(test['nodeid'])}</code></td>"
            f"<td>{escape(test['backend'] or '-')}</td>"
            f'<td style="color:{colour}">{escape(test["outcome"])}</td>'
            f"<td>{escape(test['reason'] or '')}</td></tr>"
        )
    return (
        f"<table class=tests><tr>{head}<th>test</th><th>database</th><th>outcome</th>"
        f"<th>reason</th></tr>{''.join(rows)}</table>"
    )


def _requirement(entry: dict[str, Any]) -> str:
    colour = STATUS_COLOURS[entry["status"]]
    notes = []
    if entry["deferred"]:
        notes.append(f"Deferred: {entry['deferred']}")
    if entry["status"] == "not run" and entry["reasons"]:
        notes.append("Not run: " + "; ".join(entry["reasons"]))
    if entry["fails_run"]:
        notes.append("This requirement fails the validation run.")
    note = "".join(f"<p class=note>{escape(n)}</p>" for n in notes)
    backends = ", ".join(f"{b}: {o}" for b, o in sorted(entry.get("by_backend", {}).items()))
    if backends:
        note += f"<p>By database: {escape(backends)}</p>"
    via = ""
    if entry["via_members"]:
        via = (
            f"<details><summary>{len(entry['via_members'])} tests of its members</summary>"
            f"{_tests_table(entry['via_members'], member=True)}</details>"
        )
    return (
        f'<section id="{escape(entry["id"])}" style="border-left:6px solid {colour}">'
        f'<h3>{escape(entry["id"])} <span style="color:{colour}">{escape(entry["status"])}'
        f"</span> <small>URS §{escape(entry['section'])} · {entry['passed']} passing</small></h3>"
        f"<p>{escape(entry['statement'])}</p>{note}"
        f"<details{' open' if entry['status'] != 'passed' else ''}><summary>"
        f"{len(entry['tests'])} tests</summary>{_tests_table(entry['tests'])}</details>{via}"
        "</section>"
    )


def _table(headings: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headings)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table class=tests><tr>{head}</tr>{body}</table>"


def _range(field: dict[str, Any]) -> str:
    low, high = field.get("minimum"), field.get("maximum")
    if low is None and high is None:
        return ""
    return f"{'' if low is None else low} to {'' if high is None else high}"


def _demo(record: dict[str, Any]) -> str:
    """One scripted demo run: the configuration it ran on, its steps and where it ended."""
    config = record.get("configuration_under_test", {})
    parts = [
        "<h4>Configuration under test</h4>",
        _rows(
            [
                ("trial", config.get("trial")),
                ("registry id", config.get("registry_id")),
                ("definition commitment", config.get("definition_commitment")),
                ("", config.get("definition_commitment_note")),
                ("as seen by", config.get("as_seen_by")),
            ]
        ).join(("<table>", "</table>")),
        _table(
            ["arm", "label", "ratio"],
            [[a["id"], a["label"], a["ratio"]] for a in config.get("arms", [])],
        ),
        _table(
            ["stratification factor", "levels", "source"],
            [[f["id"], ", ".join(f["levels"]), f["source"]] for f in config.get("factors", [])],
        ),
        _table(["stratum", "key"], [[st["number"], st["key"]] for st in config.get("strata", [])]),
        _table(
            ["eligibility field", "type", "range", "label"],
            [
                [f["id"], f["type"], _range(f), f["label"]]
                for f in config.get("eligibility", {}).get("fields", [])
            ],
        ),
        _table(
            ["eligibility rule", "in the protocol's words", "eligible when"],
            [
                [r["id"], r["text"], r.get("eligible_when", "")]
                for r in config.get("eligibility", {}).get("rules", [])
            ],
        ),
        _rows(
            [
                ("screening window (days)", config.get("screening", {}).get("window_days")),
                ("grams per kit", config.get("kits", {}).get("grams_per_kit")),
                (
                    "kits not dispensed within this many days of expiry",
                    config.get("kits", {}).get("do_not_dispense_days"),
                ),
                ("dose (g/kg/week)", config.get("dosing", {}).get("grams_per_kg_per_week")),
                ("visit window (days either side)", config.get("visits", {}).get("window_days")),
                ("unblinding reasons", ", ".join(config.get("unblinding", {}).get("reasons", []))),
            ]
        ).join(("<table>", "</table>")),
        _table(
            ["kit type of arm", "description", "g IgG"],
            [
                [k["arm"], k["description"], k["grams_igg"]]
                for k in config.get("kits", {}).get("types", [])
            ],
        ),
        _table(
            ["visit", "week", "dispenses weeks"],
            [
                [v["id"], v["week"], v["dispenses_weeks"]]
                for v in config.get("visits", {}).get("schedule", [])
            ],
        ),
        "<h4>Scripted demo run</h4>",
        _table(
            ["step", "result"],
            [
                [step["step"], ", ".join(f"{k}: {v}" for k, v in step.items() if k != "step")]
                for step in record.get("demo_run", [])
            ],
        ),
        f"<p>Verifier key: <code>{escape(str(record.get('verifier_key')))}</code></p>",
        f"<p>The checkpoint the log ended at (size {escape(str(record.get('checkpoint_size')))}):"
        f"</p><pre>{escape(str(record.get('checkpoint')))}</pre>",
        "<details><summary>As recorded (JSON)</summary>"
        f"<pre>{escape(json.dumps(record, indent=2, ensure_ascii=False))}</pre></details>",
    ]
    return "".join(parts)


def _evidence(evidence: dict[str, Any]) -> str:
    if not evidence:
        return "<p class=note>No scripted demo ran in this run.</p>"
    return "".join(
        f"<h3>Database: {escape(str(record.get('backend')))}</h3>"
        f"<p><code>{escape(nodeid)}</code></p>{_demo(record)}"
        for nodeid, record in evidence.items()
    )


def render_html(report: dict[str, Any]) -> str:
    """The report as one self-contained HTML page, requirements needing attention first."""
    env = report["environment"]
    verdict = "PASSED" if report["passed"] else "FAILED"
    colour = "#1b5e20" if report["passed"] else "#b00020"
    summary = ", ".join(f"{count} {status}" for status, count in report["summary"].items())
    unknown = "".join(
        f"<p class=note>A marker names {escape(rid)}, which docs/requirements.toml does not "
        "list.</p>"
        for rid in report["unknown_requirement_ids"]
    )
    environment_rows = _rows(
        [
            ("commit", env["commit"]),
            ("commit date", env["commit_date"]),
            ("working tree clean", env["working_tree_clean"]),
            ("sealroom", env["sealroom_version"]),
            ("Python", f"{env['python_implementation']} {env['python']}"),
            ("platform", env["platform"]),
            ("SQLite", env["databases"]["sqlite"]),
            ("PostgreSQL", env["databases"]["postgresql"]),
            ("CI", env["ci"]),
            ("pytest exit status", report["pytest_exit_status"]),
        ]
    )
    libraries = _rows(sorted(env["libraries"].items()))
    requirements = "".join(_requirement(entry) for entry in report["requirements"])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Sealroom validation report {escape(str(env["commit"] or ""))[:12]}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; max-width: 80rem; }}
section {{ padding: .2rem 1rem; margin: .8rem 0; background: #fafafa; }}
table {{ border-collapse: collapse; }} th, td {{ text-align: left; padding: .15rem .6rem; }}
table.tests td, table.tests th {{ border-bottom: 1px solid #ddd; font-size: .9rem; }}
.note {{ color: #b00020; }} pre {{ background: #f3f3f3; padding: .6rem; overflow-x: auto; }}
</style></head><body>
<h1>Sealroom validation report: <span style="color:{colour}">{verdict}</span></h1>
<p>{escape(summary)}; {report["tests"]} tests collected,
{report["tests_without_requirement"]} of them without a requirement marker.</p>
{unknown}
<h2>Software and environment under test</h2><table>{environment_rows}</table>
<details><summary>Library versions</summary><table>{libraries}</table></details>
<h2>Requirements</h2>
<p>Requirements without a passing test come first, in red; deferred ones next; then the
passing ones. Each lists its tests, the database each ran on and the outcome.</p>
{requirements}
<h2>Configuration under test and scripted demo run</h2>
{_evidence(report["evidence"])}
</body></html>
"""
