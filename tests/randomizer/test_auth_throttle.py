"""Repeated authentication failures from one client are slowed down, then refused (issue 7).

In process, with the test's clock and a ``sleep`` that moves it (so every delay is measured
exactly, none waited): a client's first failures in its window are 401 at once, the next
ones 401 after growing delays, then 429 with ``Retry-After``; the window decays; the first
429 of a window is one ``auth.throttled`` audit entry; and a valid token from the throttled
client, an investigator's emergency unblinding included, is always served. The count shared
by several server processes is ``test_auth_throttle_served.py``'s.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import schemathesis
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import select

from randomizer import create_app
from randomizer.config import ConfigError, Settings
from randomizer.models import AuditEntry, AuthFailure, Participant
from randomizer.roles import SYSTEM
from randomizer.services.throttling import client_key
from randomizer.services.users import deactivate_user
from tests.conftest import ELIGIBLE, ApiClient, Clock
from tests.randomizer.test_api_errors import assert_problem

INVALID = {"Authorization": "Bearer " + "x" * 43}
ATTACKER = "198.51.100.7"
#: The default policy: 5 failures at once, 15 delayed, then 429; a 900 s window.
DELAYS = [0.25, 0.5, 1.0, 2.0] + [2.0] * 11


class Sleeper:
    """``sleep`` for the throttle: records each delay and moves the test's clock by it.

    ``during`` (if set) runs inside the next delay, as another request would meanwhile.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.delays: list[float] = []
        self.during: Any = None

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.clock.advance(seconds=seconds)
        during, self.during = self.during, None
        if during is not None:
            during()


@pytest.fixture
def sleeper(clock: Clock) -> Sleeper:
    return Sleeper(clock)


def make_api(trial_db: Any, db: Any, clock: Clock, sleeper: Sleeper, **settings: Any) -> ApiClient:
    base = Settings.from_env(
        {},
        database_url=trial_db.url,
        instance_dir=trial_db.settings.instance_dir,
        keys_dir=trial_db.settings.keys_dir,
        **settings,
    )
    app = create_app(
        {"settings": base, "database": db, "clock": clock, "sleep": sleeper, "TESTING": True}
    )
    return ApiClient(app.test_client(), trial_db.tokens, clock)


@pytest.fixture
def api(trial_db: Any, db: Any, clock: Clock, sleeper: Sleeper) -> ApiClient:
    return make_api(trial_db, db, clock, sleeper)


def from_client(api: ApiClient, address: str, path: str = "/trial", **kwargs: Any) -> Any:
    headers = kwargs.pop("headers", INVALID)
    return api.get(path, headers=headers, environ_base={"REMOTE_ADDR": address}, **kwargs)


def throttle(api: ApiClient, address: str = ATTACKER) -> list[Any]:
    """Send invalid tokens from ``address`` until one is refused with 429; the answers."""
    answers = []
    for _ in range(30):
        answers.append(from_client(api, address))
        if answers[-1].status_code == 429:
            return answers
    raise AssertionError("never throttled")


def throttled_entries(db: Any) -> list[dict[str, Any]]:
    with db.reading() as session:
        rows = session.scalars(
            select(AuditEntry.canonical)
            .where(AuditEntry.action == "auth.throttled")
            .order_by(AuditEntry.seq)
        )
        return [json.loads(row) for row in rows]


def audit_size(db: Any) -> int:
    with db.reading() as session:
        return len(session.scalars(select(AuditEntry.seq)).all())


def failures_of(db: Any, address: str) -> int | None:
    with db.reading() as session:
        record = session.get(AuthFailure, client_key(address))
        return None if record is None else record.failures


# The rule -----------------------------------------------------------------------------------


@pytest.mark.requirement("R-API")
def test_failures_are_401_at_once_then_401_after_growing_delays_then_429(api, db, sleeper, clock):
    started = clock.now

    answers = [from_client(api, ATTACKER) for _ in range(24)]

    statuses = [answer.status_code for answer in answers]
    assert statuses == [401] * 20 + [429] * 4
    for answer in answers[:20]:
        assert_problem(answer, 401)
        assert answer.headers["WWW-Authenticate"] == "Bearer"
    # Failures 6 to 20 waited 0.25 s doubling up to 2 s; the first five and the 429s nothing.
    assert sleeper.delays == DELAYS
    waited = sum(DELAYS)
    assert (clock.now - started).total_seconds() == pytest.approx(waited)
    for answer in answers[20:]:
        problem = assert_problem(answer, 429)
        assert problem["type"] == "/problems/too-many-requests"
        # Seconds until the window that began at the first failure ends.
        assert answer.headers["Retry-After"] == str(math.ceil(900 - waited))
        assert "Bearer" not in answer.get_data(as_text=True)
    # Nothing is counted beyond the failure that went over the limit: a flood writes nothing.
    assert failures_of(db, ATTACKER) == 21


@pytest.mark.requirement("R-UNB")
def test_a_throttled_clients_valid_tokens_are_served_an_emergency_unblinding_too(api, sleeper):
    assert api.screen("101-0001").status_code == 201
    assert api.randomize("101-0001", eligibility=dict(ELIGIBLE)).status_code == 201
    throttle(api)
    delays = len(sleeper.delays)
    investigator = {"Authorization": f"Bearer {api.tokens['investigator-101']}"}

    unblinded = api.post(
        "/participants/101-0001/unblind",
        headers=investigator,
        json={"reason": "serious_adverse_event", "event_reference": "SAE-2026-0042"},
        environ_base={"REMOTE_ADDR": ATTACKER},
    )
    trial = from_client(api, ATTACKER, headers=investigator)

    assert unblinded.status_code == 200, unblinded.get_json()
    assert unblinded.get_json()["arm"]["id"] in {"igpro20", "placebo"}
    assert trial.status_code == 200
    assert len(sleeper.delays) == delays  # and at once
    # While the same client's invalid tokens are still refused.
    assert from_client(api, ATTACKER).status_code == 429


def test_the_first_429_of_a_window_is_one_audit_entry_naming_the_client_never_the_token(
    api, db, caplog
):
    caplog.set_level("DEBUG")
    token = "Q" * 43

    for _ in range(25):
        from_client(api, ATTACKER, headers={"Authorization": f"Bearer {token}"})

    (entry,) = throttled_entries(db)
    assert entry["actor"] == entry["role"] == "system"
    assert entry["subject"] == ATTACKER
    assert entry["data"]["client"] == ATTACKER
    assert entry["data"]["failures"] == 21
    assert entry["data"]["window_seconds"] == 900
    assert {"window_started_at", "until"} <= set(entry["data"])
    assert token[:8] not in json.dumps(entry)
    assert any(ATTACKER in record.getMessage() for record in caplog.records)
    assert not any(token[:8] in record.getMessage() for record in caplog.records)


def test_the_window_decays_and_a_new_window_counts_from_one(api, db, clock, sleeper):
    refused = throttle(api)[-1]

    clock.advance(seconds=int(refused.headers["Retry-After"]))
    delays = len(sleeper.delays)
    again = [from_client(api, ATTACKER) for _ in range(5)]

    assert [answer.status_code for answer in again] == [401] * 5
    assert len(sleeper.delays) == delays  # at once: the count started again
    assert failures_of(db, ATTACKER) == 5
    # Throttled again in the new window: a second entry.
    throttle(api)
    assert len(throttled_entries(db)) == 2


def test_failures_are_counted_per_client_and_an_ipv6_host_is_its_64(api, db, sleeper):
    throttle(api, "2001:db8:1:2::1")

    same_64 = from_client(api, "2001:db8:1:2:ffff::9")
    other_64 = from_client(api, "2001:db8:1:3::1")
    other_ipv4 = from_client(api, "203.0.113.5")

    assert same_64.status_code == 429
    assert other_64.status_code == other_ipv4.status_code == 401
    assert failures_of(db, "203.0.113.5") == 1


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("2001:db8::1", "2001:db8::/64"),
        ("2001:db8:0:0:ffff:1:2:3", "2001:db8::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        (None, "unknown"),
        ("", "unknown"),
        ("not an address", "unknown"),
    ],
)
def test_the_client_key_is_the_ipv4_address_or_the_ipv6_64(address, key):
    assert client_key(address) == key


def test_malformed_credentials_count_and_a_missing_one_does_not(api, db):
    for header in ("Basic Y29vcmRpbmF0b3I6cw==", "Bearer short", "Bearer " + "x" * 43):
        assert from_client(api, ATTACKER, headers={"Authorization": header}).status_code == 401
    for _ in range(30):
        assert from_client(api, ATTACKER, headers={}).status_code == 401

    assert failures_of(db, ATTACKER) == 3


def test_one_process_holds_at_most_max_delayed_requests_in_a_delay(trial_db, db, clock, sleeper):
    api = make_api(trial_db, db, clock, sleeper, auth_max_delayed=1, auth_free_failures=1)
    assert from_client(api, ATTACKER).status_code == 401  # the free one
    meanwhile: list[Any] = []
    sleeper.during = lambda: meanwhile.append(from_client(api, ATTACKER))

    delayed = from_client(api, ATTACKER)

    # The other request arrived while the only delay was taken: 429 at once, not waited.
    assert delayed.status_code == 401
    (other,) = meanwhile
    assert_problem(other, 429)
    assert other.headers["Retry-After"] == "1"  # its own delay, 0.5 s, rounded up
    assert sleeper.delays == [0.25]
    # Once the delay is over, the next failure waits its turn again.
    assert from_client(api, ATTACKER).status_code == 401
    assert sleeper.delays == [0.25, 1.0]


def test_with_no_delays_allowed_the_delayed_failures_are_429_at_once(trial_db, db, clock, sleeper):
    api = make_api(trial_db, db, clock, sleeper, auth_max_delayed=0)

    answers = [from_client(api, ATTACKER) for _ in range(7)]

    assert [answer.status_code for answer in answers] == [401] * 5 + [429] * 2
    assert sleeper.delays == []
    assert throttled_entries(db) == []  # not over the limit: only no delay could be given


def test_the_settings_change_the_window_and_the_counts(trial_db, db, clock, sleeper):
    api = make_api(
        trial_db,
        db,
        clock,
        sleeper,
        auth_window_seconds=60,
        auth_free_failures=2,
        auth_max_failures=3,
    )

    answers = [from_client(api, ATTACKER) for _ in range(4)]

    assert [answer.status_code for answer in answers] == [401, 401, 401, 429]
    assert sleeper.delays == [0.25]
    assert answers[-1].headers["Retry-After"] == "60"  # 59.75 s left, rounded up


def test_old_failure_records_are_pruned(api, db, clock):
    from_client(api, "203.0.113.1")
    clock.advance(seconds=2 * 900 + 1)

    from_client(api, "203.0.113.2")  # a later failure prunes what is two windows old

    assert failures_of(db, "203.0.113.1") is None
    assert failures_of(db, "203.0.113.2") == 1


# Behind a reverse proxy ---------------------------------------------------------------------


def test_a_forwarded_address_is_trusted_only_with_trusted_proxies(trial_db, db, clock, sleeper):
    forwarded = {**INVALID, "X-Forwarded-For": "203.0.113.9, 192.0.2.200"}
    direct = make_api(trial_db, db, clock, sleeper)
    proxied = make_api(trial_db, db, clock, sleeper, trusted_proxies=1)

    from_client(direct, "10.0.0.1", headers=forwarded)
    from_client(proxied, "10.0.0.1", headers=forwarded)

    # Without trusted proxies the header is ignored; with one, its last address is the client.
    assert failures_of(db, "10.0.0.1") == 1
    assert failures_of(db, "192.0.2.200") == 1
    assert failures_of(db, "203.0.113.9") is None


@pytest.mark.parametrize(
    "environ",
    [
        {"SEALROOM_AUTH_WINDOW": "0"},
        {"SEALROOM_AUTH_MAX_FAILURES": "twenty"},
        {"SEALROOM_AUTH_FREE_FAILURES": "21"},
        {"SEALROOM_AUTH_MAX_DELAYED": "-1"},
        {"SEALROOM_TRUSTED_PROXIES": "11"},
    ],
)
def test_throttle_settings_are_checked(environ):
    with pytest.raises(ConfigError, match=next(iter(environ))):
        Settings.from_env(environ)
    assert Settings.from_env({"SEALROOM_TRUSTED_PROXIES": "2"}).trusted_proxies == 2


# The document -------------------------------------------------------------------------------


@pytest.mark.requirement("R-API")
def test_every_authenticated_operation_answers_429_as_its_document_says(api):
    throttle(api)
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", api.client.application)
    checked, public = 0, []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.definition.raw.get("security") == []:
            public.append(operation.label)
            continue
        declared = operation.definition.raw["responses"]["429"]
        assert declared["headers"]["Retry-After"]["required"] is True
        case = operation.Case(
            path_parameters={p.name: "101-0001" for p in operation.path_parameters}
        )

        response = case.call(headers=INVALID, environ_base={"REMOTE_ADDR": ATTACKER})

        assert response.status_code == 429, operation.label
        # Status, content type, headers and body as documented (schemathesis' own checks; its
        # ignored_auth check would take a 429 to an invalid token for auth not enforced).
        case.validate_response(
            response,
            headers=INVALID,
            checks=[
                status_code_conformance,
                content_type_conformance,
                response_headers_conformance,
                response_schema_conformance,
            ],
        )
        checked += 1
    assert sorted(public) == ["GET /api/v1/audit/verifier-key", "GET /api/v1/health"]
    assert checked >= 19


@pytest.mark.requirement("R-API")
@pytest.mark.requirement("R-ROLE")
def test_a_randomisation_whose_token_fails_in_its_own_transaction_is_counted_and_changes_nothing(
    api, db, ctx
):
    # The randomisation looks its token up in its own writing transaction: a token that is
    # not valid there (deactivated a moment ago) rolls it back, is counted and refused like
    # any other, and a valid one from the same client is still served.
    assert api.screen("101-0001").status_code == 201
    token = api.tokens["coordinator-101"]
    with db.transaction() as session:
        deactivate_user(session, ctx, SYSTEM, "coordinator-101")
    entries = audit_size(db)

    refused = [
        api.post(
            "/participants/101-0001/randomize",
            headers=headers,
            json={"weight_kg": 70, "eligibility": dict(ELIGIBLE)},
            environ_base={"REMOTE_ADDR": ATTACKER},
        )
        for headers in ({"Authorization": f"Bearer {token}"}, INVALID, {"Authorization": "Bearer"})
    ]

    assert [answer.status_code for answer in refused] == [401, 401, 401]
    assert refused[0].get_data() == refused[1].get_data()
    assert failures_of(db, ATTACKER) == 3
    assert audit_size(db) == entries
    with db.reading() as session:
        participant = session.scalars(
            select(Participant).where(Participant.screening_number == "101-0001")
        ).one()
        assert participant.status == "screened"
    served = api.randomize(
        "101-0001", user="investigator-101", environ_base={"REMOTE_ADDR": ATTACKER}
    )
    assert served.status_code == 201, served.get_json()
