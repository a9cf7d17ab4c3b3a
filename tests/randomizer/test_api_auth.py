"""Bearer-token authentication (URS §8, §1 R-ROLE): 401 before anything else runs.

A missing, malformed, unknown, revoked or deactivated token gets the same 401 problem with
``WWW-Authenticate: Bearer``; ``GET /health`` is the one endpoint that needs no token.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select, update

from randomizer.models import AuditEntry, Participant, User
from randomizer.roles import SYSTEM
from randomizer.services.users import deactivate_user, issue_token

UNKNOWN_TOKEN = "x" * 43


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_unauthorized(response: Any) -> None:
    assert response.status_code == 401
    assert response.mimetype == "application/problem+json"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    body = response.get_json()
    assert body["type"] == "/problems/unauthorized"
    assert body["status"] == 401
    assert body["title"] and body["detail"]


def audit_count(db: Any) -> int:
    with db.reading() as session:
        return session.scalar(select(func.count()).select_from(AuditEntry))


@pytest.mark.requirement("R-API")
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": "Basic Y29vcmRpbmF0b3ItMTAxOnNlY3JldA=="},
        {"Authorization": "Token abcdefghijklmnopqrstuvwxyz"},
        {"Authorization": "Bearer short"},
        {"Authorization": "Bearer " + "a" * 129},
        {"Authorization": "Bearer abc.def/ghi+jkl=mnopqrstuvwxyz"},
        {"Authorization": "Bearer " + UNKNOWN_TOKEN},
    ],
    ids=[
        "missing",
        "empty",
        "scheme-only",
        "scheme-and-space",
        "basic",
        "other-scheme",
        "too-short",
        "too-long",
        "bad-characters",
        "unknown",
    ],
)
def test_request_without_a_valid_token_is_unauthorized(api, headers):
    assert_unauthorized(api.get("/trial", headers=headers))


@pytest.mark.requirement("R-API")
@pytest.mark.parametrize(
    "header",
    ["bearer {token}", "Bearer  {token}", "Bearer {token} ", "Bearer {token}x", " Bearer {token}"],
)
def test_a_real_token_in_a_malformed_header_is_unauthorized(api, header):
    token = api.tokens["coordinator-101"]

    assert_unauthorized(api.get("/trial", headers={"Authorization": header.format(token=token)}))


@pytest.mark.requirement("R-ROLE")
def test_deactivated_users_token_stops_working_at_once(api, ctx, db):
    assert api.get("/trial", "coordinator-101").status_code == 200

    with db.transaction() as session:
        deactivate_user(session, ctx, SYSTEM, "coordinator-101")

    assert_unauthorized(api.get("/trial", "coordinator-101"))
    assert_unauthorized(api.screen("101-0001", user="coordinator-101"))
    # Other users are untouched.
    assert api.get("/trial", "investigator-101").status_code == 200


@pytest.mark.requirement("R-ROLE")
def test_inactive_user_is_refused_even_if_a_token_was_left_unrevoked(api, db):
    # Deactivation revokes the tokens too; the active flag alone must still be enough.
    with db.transaction() as session:
        session.execute(update(User).where(User.name == "coordinator-101").values(active=False))

    assert_unauthorized(api.get("/trial", "coordinator-101"))


@pytest.mark.requirement("R-ROLE")
def test_replaced_token_stops_working_and_the_new_one_works(api, ctx, db):
    old = api.tokens["coordinator-101"]

    with db.transaction() as session:
        new = issue_token(session, ctx, SYSTEM, "coordinator-101")

    assert_unauthorized(api.get("/trial", headers=bearer(old)))
    assert api.get("/trial", headers=bearer(new)).status_code == 200
    body = {
        "screening_number": "101-0001",
        "site": "101",
        "screened_on": api.clock.today().isoformat(),
        "strata": {"prior_ig": "no"},
    }
    assert api.post("/participants", headers=bearer(new), json=body).status_code == 201


@pytest.mark.requirement("R-API")
def test_revoked_deactivated_and_unknown_tokens_get_the_same_401(api, ctx, db):
    with db.transaction() as session:
        issue_token(session, ctx, SYSTEM, "coordinator-101")
        deactivate_user(session, ctx, SYSTEM, "coordinator-102")

    replaced = api.get("/trial", "coordinator-101")
    deactivated = api.get("/trial", "coordinator-102")
    unknown = api.get("/trial", headers=bearer(UNKNOWN_TOKEN))

    for response in (replaced, deactivated, unknown):
        assert_unauthorized(response)
    assert replaced.get_data() == deactivated.get_data() == unknown.get_data()


@pytest.mark.requirement("R-API")
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/trial"),
        ("POST", "/participants"),
        ("GET", "/participants/101-0001"),
        ("GET", "/participants/101-9999"),
        ("POST", "/participants/101-0001/randomize"),
        ("POST", "/participants/101-9999/randomize"),
    ],
)
def test_every_endpoint_but_health_needs_a_token(api, db, method, path):
    assert api.screen("101-0001").status_code == 201
    before = audit_count(db)

    response = api.request(method, path, json={"junk": True})

    assert_unauthorized(response)
    assert audit_count(db) == before


@pytest.mark.requirement("R-API")
def test_token_is_checked_before_role_and_body(api, db):
    # An unknown token with a body that is wrong in every way: 401, and nothing happens.
    response = api.post(
        "/participants",
        headers=bearer(UNKNOWN_TOKEN),
        data=b"\xff not json",
        content_type="text/plain",
    )

    assert_unauthorized(response)
    with db.reading() as session:
        assert session.scalar(select(func.count()).select_from(Participant)) == 0


@pytest.mark.requirement("R-API")
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer " + UNKNOWN_TOKEN}])
def test_health_needs_no_token(api, headers):
    response = api.get("/health", headers=headers)

    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


@pytest.mark.requirement("R-API")
def test_trial_needs_a_token(api):
    assert_unauthorized(api.get("/trial"))
    assert api.get("/trial", "auditor").status_code == 200


# Token lifetime (issue 7: SEALROOM_TOKEN_DAYS) ----------------------------------------------


@pytest.mark.requirement("R-API")
def test_a_token_works_until_it_expires_then_gets_the_same_401_as_an_unknown_one(api, clock):
    token = api.tokens["coordinator-101"]
    assert api.get("/trial", headers=bearer(token)).status_code == 200

    clock.advance(days=364, hours=23)
    still = api.get("/trial", headers=bearer(token))
    clock.advance(hours=2)  # past the 365 days of the demo's tokens
    expired = api.get("/trial", headers=bearer(token))
    unknown = api.get("/trial", headers=bearer(UNKNOWN_TOKEN))

    assert still.status_code == 200
    assert_unauthorized(expired)
    assert expired.get_data() == unknown.get_data()


@pytest.mark.requirement("R-API")
def test_an_expired_token_is_renewed_with_a_new_token(api, db, ctx, clock):
    clock.advance(days=366)
    assert_unauthorized(api.get("/trial", headers=bearer(api.tokens["auditor"])))
    with db.transaction() as session:
        renewed = issue_token(session, ctx, SYSTEM, "auditor")

    assert api.get("/trial", headers=bearer(renewed)).status_code == 200


@pytest.mark.parametrize("days", ["0", "-1", "3651", "1.5", "a year"])
def test_token_days_must_be_1_to_3650_whole_days(days):
    from randomizer.config import ConfigError, Settings

    with pytest.raises(ConfigError, match="SEALROOM_TOKEN_DAYS"):
        Settings.from_env({"SEALROOM_TOKEN_DAYS": days})
    assert Settings.from_env({"SEALROOM_TOKEN_DAYS": "30"}).token_days == 30
