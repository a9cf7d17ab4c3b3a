"""Contract fuzzing: schemathesis against ``/api/v1/openapi.json`` (R-NF-3, R-API, issue 7).

Every operation of the document gets requests that schemathesis generates from it, valid
and invalid (both its generation modes, derandomised, a few dozen an operation), sent to the
in-process Flask app with the token of a demo user drawn for each request (every role; mostly
one that may call the operation), on SQLite and on PostgreSQL, with participants screened and
randomised first so that the state-changing endpoints are reached with numbers that exist.
Every answer must:

* never be a 5xx;
* conform to the document: its status, content type, headers and body, the refusal of what
  the document refuses, the refusal without a token of what it says needs one (schemathesis'
  checks);
* if an error, be ``application/problem+json`` with ``type``, ``title``, ``status`` (the
  HTTP status) and ``detail``;
* if a refusal, have written nothing but its audit entry: the participant, kit, slot and other
  trial tables are as they were (an audited refusal with an Idempotency-Key keeps its
  replayable answer too, so that table only alongside a new audit entry).

Each operation is its own test, driven through schemathesis' strategies: its pytest plugin
(``schemathesis.pytest.from_fixture``) does not run under pytest 9.2, whose nodes no longer
have ``_nodeid``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.generation.modes import GenerationMode
from sqlalchemy import func, select, text

from randomizer.models import AuditEntry, IdempotencyRecord
from tests.conftest import ELIGIBLE

pytestmark = [pytest.mark.slow]

#: Generated requests per operation and backend (half valid, half not, on average).
MAX_EXAMPLES = 50

#: How schemathesis generates and checks (the examples' count is Hypothesis' setting).
CONFIG = """
[generation]
allow-x00 = true
# The tokens are the demo users' (drawn for each request), not generated.
with-security-parameters = false

[checks.positive_data_acceptance]
# Data the document admits may still be refused for what no schema can say: another site
# (403), a number that does not exist (404), a state (409), eligibility or dates (422).
expected-statuses = ["2xx", "401", "403", "404", "409", "422"]
"""

#: Tables a refused request must leave as they were; the audit tables are the refusal's own.
TRIAL_TABLES = (
    "trial",
    "data_key",
    "site",
    "stratum",
    "slot",
    "participant",
    "kit",
    "user_account",
    "api_token",
    "unblinding",
    "stratum_correction",
    "outbox_message",
)

SITES = ["101", "102", "201"]
#: Users whose role may call an operation (by the path's last part), drawn mostly, so
#: that generated requests get past the role check and reach the service's own checks.
LIKELY_USERS = {
    "participants": ["coordinator-101", "investigator-101", "coordinator-102"],
    "randomize": ["coordinator-101", "investigator-101"],
    "dispense": ["pharmacist-101", "coordinator-101", "investigator-101"],
    "withdraw": ["coordinator-101", "investigator-101"],
    "discontinue": ["coordinator-101", "investigator-101"],
    "flag-error": ["admin"],
    "correct-stratum": ["admin"],
    "unblind": ["investigator-101", "medical-monitor"],
    "status": ["pharmacist-101"],
    "{kit_number}": ["pharmacist-101", "admin"],
    "inventory": ["pharmacist-101", "admin"],
    "{screening_number}": ["coordinator-101", "medical-monitor", "sponsor"],
    "entries": ["auditor"],
    "inclusion": ["auditor", "coordinator-101"],
    "unblindings": ["statistician", "sponsor", "auditor", "medical-monitor"],
    "notifications": ["admin"],
}
USER_SITES = {"coordinator-102": "102"}


def fingerprint(db: Any) -> str:
    """A digest of every row of the trial tables."""
    digest = hashlib.sha256()
    with db.reading() as session:
        for table in TRIAL_TABLES:
            rows = session.execute(text(f"SELECT * FROM {table}")).all()
            digest.update(table.encode())
            for row in sorted(repr(tuple(row)) for row in rows):
                digest.update(row.encode())
    return digest.hexdigest()


def counts(db: Any) -> tuple[int, int]:
    with db.reading() as session:
        return (
            session.scalar(select(func.count()).select_from(AuditEntry)),
            session.scalar(select(func.count()).select_from(IdempotencyRecord)),
        )


@pytest.fixture
def known(api: Any) -> dict[str, list[str]]:
    """Participants in several states, and kit numbers, for the fuzzer to aim at."""
    for number in ("101-FZ-0001", "101-FZ-0002", "101-FZ-0003"):
        assert api.screen(number).status_code == 201
    kits: list[str] = []
    for number in ("101-FZ-0002", "101-FZ-0003"):
        response = api.randomize(number, eligibility=dict(ELIGIBLE))
        assert response.status_code == 201, response.get_json()
        kits += response.get_json()["kits"]
    assert api.screen("102-FZ-1021", user="coordinator-102", site="102").status_code == 201
    return {
        "screening_number": ["101-FZ-0001", "101-FZ-0002", "101-FZ-0003", "102-FZ-1021"],
        "kit_number": kits,
        "site": SITES,
    }


@pytest.fixture
def app(db: Any, trial_db: Any, clock: Any) -> Any:
    """The service, its authentication throttle never reached.

    Schemathesis' ``ignored_auth`` check sends an invalid token after answers to valid ones
    (a few dozen a test, from one client) and takes any answer but 401 or 403 for
    authentication not enforced: the throttle's delays and 429s would be flagged, although
    the document declares them. Their answers are checked against the document in
    ``test_auth_throttle.py``.
    """
    from randomizer import create_app

    settings = replace(trial_db.settings, auth_free_failures=10**5, auth_max_failures=10**5)
    return create_app({"settings": settings, "database": db, "clock": clock, "TESTING": True})


@pytest.fixture
def fuzzed_api(app: Any) -> Any:
    return schemathesis.openapi.from_wsgi(
        "/api/v1/openapi.json",
        app,
        config=schemathesis.config.SchemathesisConfig.from_str(CONFIG),
    )


def problem_details(ctx: Any, response: Any, case: Any) -> bool | None:
    """An error is an RFC 9457 problem details object of its own status."""
    if response.status_code < 400:
        return None
    media_type = response.headers.get("content-type", [""])[0].split(";")[0]
    assert media_type == "application/problem+json", (response.status_code, media_type)
    body = json.loads(response.content)
    assert {"type", "title", "status", "detail"} <= set(body), body
    assert body["status"] == response.status_code, body
    assert all(isinstance(body[k], str) and body[k] for k in ("type", "title", "detail")), body
    return True


def documented_operations() -> list[tuple[str, str]]:
    """The document's operations, read from an app that needs no database (for collection)."""
    from flask import Flask

    from randomizer import api
    from randomizer.domain import bundled_trial_path, parse_trial
    from randomizer.schemas import build_trial_schemas

    app = Flask(__name__)
    api.init_app(app, build_trial_schemas(parse_trial(bundled_trial_path().read_text("utf-8"))))
    document = json.loads(app.test_client().get("/api/v1/openapi.json").get_data())
    return [
        (method.upper(), path)
        for path, item in sorted(document["paths"].items())
        for method in sorted(item)
        if method in {"get", "post", "put", "patch", "delete"}
    ]


@pytest.mark.requirement("R-NF-3")
@pytest.mark.requirement("R-API")
@pytest.mark.parametrize(
    ("method", "path"), documented_operations(), ids=lambda value: value.removeprefix("/api/v1")
)
def test_every_answer_to_generated_requests_is_as_documented(
    method: str, path: str, api: Any, db: Any, fuzzed_api: Any, known: dict[str, list[str]]
) -> None:
    operation = fuzzed_api[path][method]
    cases = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )

    @given(case=cases, data=st.data())
    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def answer_is_as_documented(case: Any, data: Any) -> None:
        users = sorted(api.tokens)
        likely = LIKELY_USERS.get(path.rsplit("/", 1)[1])
        if likely and data.draw(st.integers(0, 3), label="likely user"):  # 3 times in 4
            users = likely
        user = data.draw(st.sampled_from(users), label="user")
        # Changes are made by assignment, so that schemathesis sees them and tells again
        # whether the case is still schema-violating (an edit in place it would not see).
        for name, values in known.items():
            if name in (case.path_parameters or {}) and data.draw(st.booleans(), label=name):
                value = data.draw(st.sampled_from(values), label=name)
                case.path_parameters = {**case.path_parameters, name: value}
        if isinstance(case.body, dict) and data.draw(st.booleans(), label="plausible body"):
            # The user's own site and today, which no schema can say.
            plausible = {"site": USER_SITES.get(user, "101"), "screened_on": api.clock.today()}
            case.body = {
                **case.body,
                **{k: str(v) for k, v in plausible.items() if k in case.body},
            }
        headers = {"Authorization": f"Bearer {api.tokens[user]}"}
        before, (entries, records) = fingerprint(db), counts(db)

        response = case.call(headers=headers)

        after, (entries_after, records_after) = fingerprint(db), counts(db)
        case.validate_response(response, headers=headers, additional_checks=[problem_details])
        if response.status_code >= 400:
            assert after == before, f"{response.status_code} changed the trial's tables"
            if entries_after == entries:
                assert records_after == records, "an unaudited refusal stored its answer"

    answer_is_as_documented()
