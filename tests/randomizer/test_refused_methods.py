"""A wrong method on an operation whose refusals are audited is itself audited (URS §7;
issue 7, finding 6): Flask refuses it before any view runs, but it is a refused
randomisation (dispensing, kit change, unblinding ...) like any other."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from randomizer.models import AuditEntry


def audit_size(db) -> int:
    with db.reading() as session:
        return session.scalar(select(func.count()).select_from(AuditEntry))


def last_entry(db) -> dict:
    with db.reading() as session:
        return json.loads(
            session.scalars(select(AuditEntry.canonical).order_by(AuditEntry.seq.desc())).first()
        )


@pytest.mark.requirement("R-AUD")
@pytest.mark.parametrize(
    ("method", "path", "action", "subject"),
    [
        ("PUT", "/participants/101-M-1/randomize", "participant.randomization_refused", "101-M-1"),
        ("GET", "/participants/101-M-1/randomize", "participant.randomization_refused", "101-M-1"),
        ("DELETE", "/participants/101-M-1/dispense", "participant.dispense_refused", "101-M-1"),
        ("GET", "/participants/101-M-1/unblind", "participant.unblind_refused", "101-M-1"),
        ("PATCH", "/participants/101-M-1/withdraw", "participant.withdrawn_refused", "101-M-1"),
        ("GET", "/kits/K1234-5678/status", "kit.status_change_refused", "K1234-5678"),
    ],
)
def test_a_wrong_method_by_an_authenticated_user_is_an_audited_refusal(
    api, db, method, path, action, subject
):
    before = audit_size(db)

    response = api.request(method, path, "coordinator-101")

    assert response.status_code == 405
    assert response.mimetype == "application/problem+json"
    assert audit_size(db) == before + 1
    entry = last_entry(db)
    assert (entry["action"], entry["subject"], entry["actor"]) == (
        action,
        subject,
        "coordinator-101",
    )
    assert (entry["data"]["reason"], entry["data"]["status"]) == ("method-not-allowed", 405)


@pytest.mark.requirement("R-AUD")
def test_a_wrong_method_without_a_valid_token_or_on_an_unaudited_route_is_not_audited(api, db):
    before = audit_size(db)

    anonymous = api.request("PUT", "/participants/101-M-2/randomize")
    bad_token = api.request(
        "PUT", "/participants/101-M-2/randomize", headers={"Authorization": "Bearer " + "x" * 43}
    )
    unaudited = api.request("PUT", "/participants", "coordinator-101")

    assert {anonymous.status_code, bad_token.status_code, unaudited.status_code} == {405}
    assert audit_size(db) == before
