"""Emergency unblinding (URS §6 R-UNB, R-UNB-3; §1 R-BLIND-1; §7 R-AUD; issue 10).

``POST /participants/<sn>/unblind`` gives the arm to an investigator of the participant's
site or to a medical monitor, and to nobody else; every refusal is one audited entry and
changes nothing else; the arm leaves only once its sealed record has committed; the record
verifies; and afterwards every blinded reader still sees no arm, only who unblinded and when.
"""

from __future__ import annotations

import base64
import csv
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import event, func, select
from sqlalchemy.exc import OperationalError

from audit.checkpoint import parse_verifier_key, verify_checkpoint
from audit.entry import canonical_bytes
from audit.merkle import leaf_hash, verify_inclusion
from keys import SealedArm, UnsealError
from randomizer.cli import main as cli
from randomizer.domain import generate_lists
from randomizer.models import AuditEntry, OutboxMessage, Participant, Unblinding
from randomizer.roles import SYSTEM
from randomizer.services.users import add_user
from tests.conftest import APPENDIX_A_SEED, ApiClient, Clock, make_trial_database
from tests.randomizer.test_blinding import ARM_IDS, names_an_arm

#: A valid request body.
SAE = {"reason": "serious_adverse_event", "event_reference": "SAE-2026-0042"}
#: The participants of the role matrix (site 101 and 102 share their strata).
R101, S101, R102, S102, UNKNOWN = (
    "101-UB-101R",
    "101-UB-101S",
    "102-UB-102R",
    "102-UB-102S",
    "101-UB-999",
)
CASES = (R101, S101, R102, S102, UNKNOWN)
#: The users who may unblind, and what each gets for each case; everyone else gets 403.
ALLOWED = {
    "investigator-101": {R101: 200, S101: 409, R102: 404, S102: 404, UNKNOWN: 404},
    "investigator-102": {R101: 404, S101: 404, R102: 200, S102: 409, UNKNOWN: 404},
    "medical-monitor": {R101: 200, S101: 409, R102: 200, S102: 409, UNKNOWN: 404},
}
MAY_NOT = (
    "coordinator-101",
    "pharmacist-101",
    "coordinator-102",
    "pharmacist-102",
    "coordinator-201",
    "pharmacist-201",
    "sponsor",
    "statistician",
    "auditor",
    "admin",
)
#: Who may read a participant of site 101 or 102 (URS §8), besides the sponsor; all blinded.
READERS_101 = ("coordinator-101", "investigator-101", "pharmacist-101", "medical-monitor")
READERS_102 = ("coordinator-102", "investigator-102", "pharmacist-102", "medical-monitor")
BLINDED_LISTERS = ("sponsor", "medical-monitor", "auditor")


# Helpers ------------------------------------------------------------------------------------


def unblind(api: ApiClient, sn: str, user: str, body: Any = SAE, **kwargs: Any) -> Any:
    if "data" not in kwargs:
        kwargs["json"] = body
    return api.post(f"/participants/{sn}/unblind", user, **kwargs)


def entries(db: Any) -> list[dict[str, Any]]:
    with db.reading() as session:
        return [
            json.loads(c)
            for c in session.scalars(select(AuditEntry.canonical).order_by(AuditEntry.seq))
        ]


def canonical_entries(db: Any) -> list[str]:
    with db.reading() as session:
        return list(session.scalars(select(AuditEntry.canonical).order_by(AuditEntry.seq)))


def state(db: Any) -> dict[str, Any]:
    """Everything an unblinding may change, except the audit trail."""
    with db.reading() as session:
        return {
            "participants": sorted(
                session.execute(
                    select(
                        Participant.screening_number,
                        Participant.status,
                        Participant.unblinded,
                        Participant.randomization_number,
                        Participant.sealed_arm,
                    )
                ).all()
            ),
            "unblindings": sorted(
                session.execute(
                    select(Unblinding.participant_id, Unblinding.audit_seq, Unblinding.user_name)
                ).all()
            ),
            "outbox": sorted(
                session.execute(select(OutboxMessage.id, OutboxMessage.recipient)).all()
            ),
        }


def unblindings_of(db: Any, sn: str) -> list[Unblinding]:
    with db.reading() as session:
        rows = list(
            session.scalars(
                select(Unblinding)
                .join(Participant, Participant.id == Unblinding.participant_id)
                .where(Participant.screening_number == sn)
                .order_by(Unblinding.audit_seq)
            )
        )
        session.expunge_all()
    return rows


def arm_of(db: Any, ctx: Any, sn: str) -> str:
    """The participant's arm, unsealed from its row (the test may know it)."""
    with db.reading() as session:
        sealed = session.scalars(
            select(Participant.sealed_arm).where(Participant.screening_number == sn)
        ).one()
    return ctx.sealer.unseal_arm(SealedArm.from_text(sealed), "participant", sn)


def seed_arm(definition: Any, randomization_number: str) -> str:
    """The arm Appendix A's seed puts at a randomisation number (``R02-0003``)."""
    stratum, position = randomization_number[1:].split("-")
    return generate_lists(APPENDIX_A_SEED, definition)[int(stratum)][int(position) - 1]


def enrol(api: ApiClient) -> dict[str, str]:
    """The matrix's participants; their randomisation numbers."""
    numbers = {}
    for sn, site in ((R101, "101"), (R102, "102")):
        response = api.screen_and_randomize(sn, user=f"coordinator-{site}", site=site)
        assert response.status_code == 201, response.get_json()
        numbers[sn] = response.get_json()["randomization_number"]
    assert api.screen(S101).status_code == 201
    assert api.screen(S102, user="coordinator-102", site="102").status_code == 201
    return numbers


@pytest.fixture
def api(api: ApiClient, db: Any, ctx: Any) -> ApiClient:
    """The demo's users plus an investigator at site 102 (created as ``sealroom users add``)."""
    with db.transaction() as session:
        _user, token = add_user(
            session,
            ctx,
            SYSTEM,
            "investigator-102",
            "investigator",
            "102",
            email="investigator-102@sealroom-demo.invalid",
        )
    api.tokens = {**api.tokens, "investigator-102": token}
    return api


# Who may unblind whom (URS §6) --------------------------------------------------------------


@pytest.mark.requirement("R-UNB")
@pytest.mark.requirement("R-AUD")
@pytest.mark.parametrize("user", [*ALLOWED, *MAY_NOT])
def test_only_the_sites_investigator_and_the_medical_monitor_unblind(api, ctx, db, user):
    enrol(api)
    expected = ALLOWED.get(user, dict.fromkeys(CASES, 403))
    bodies: dict[int, set[bytes]] = {}

    for sn in CASES:
        before_state, before_log = state(db), len(canonical_entries(db))
        response = unblind(api, sn, user)

        assert response.status_code == expected[sn], (sn, response.get_json())
        log = entries(db)
        assert len(log) == before_log + 1
        entry = log[-1]
        assert (entry["actor"], entry["subject"]) == (user, sn)
        role = entry["role"]
        if response.status_code == 200:
            answer = response.get_json()
            arm = ctx.definition.arm(arm_of(db, ctx, sn))
            assert answer["arm"] == {"id": arm.id, "label": arm.label}
            assert answer["screening_number"] == sn
            assert entry["action"] == "participant.unblinded"
            assert entry["data"]["reason"] == SAE["reason"]
            assert entry["data"]["event_reference"] == SAE["event_reference"]
            assert [u.user_name for u in unblindings_of(db, sn)][-1] == user
            assert [u.role for u in unblindings_of(db, sn)][-1] == role
            continue
        problem = response.get_json()
        assert names_an_arm(response.get_data(as_text=True)) is False
        bodies.setdefault(response.status_code, set()).add(response.get_data())
        # One refusal entry: who, role, the number as sent, why; nothing else changed.
        assert entry["action"] == "participant.unblind_refused"
        assert entry["data"]["screening_number"] == sn
        assert entry["data"]["reason"] == problem["type"].removeprefix("/problems/")
        assert entry["data"]["status"] == response.status_code
        assert not names_an_arm(json.dumps(entry))
        assert state(db) == before_state

    # URS §6: 403 whoever the participant; an investigator elsewhere gets the unknown's 404.
    for status in (403, 404):
        if status in bodies:
            assert len(bodies[status]) == 1, bodies[status]
    if user in MAY_NOT:
        assert json.loads(bodies[403].pop())["type"] == "/problems/forbidden"


@pytest.mark.requirement("R-UNB")
def test_the_role_is_checked_before_the_participant_and_the_body(api):
    enrol(api)
    invalid = {"reason": "curiosity", "event_reference": ""}

    answers = {
        unblind(api, sn, "pharmacist-101", body).get_data()
        for sn in CASES
        for body in (SAE, invalid, {})
    }
    answers.add(unblind(api, R101, "pharmacist-101", data="not json").get_data())

    assert len(answers) == 1
    assert json.loads(answers.pop())["status"] == 403


@pytest.mark.requirement("R-UNB")
def test_visibility_and_state_are_checked_before_the_body(api):
    enrol(api)
    invalid = {"reason": "curiosity"}

    elsewhere = unblind(api, R102, "investigator-101", invalid)
    unknown = unblind(api, UNKNOWN, "investigator-101", SAE)
    never_randomised = unblind(api, S101, "investigator-101", invalid)

    assert elsewhere.status_code == unknown.status_code == 404
    assert elsewhere.get_data() == unknown.get_data()
    assert never_randomised.status_code == 409
    assert never_randomised.get_json()["type"] == "/problems/conflict"


@pytest.mark.requirement("R-UNB")
@pytest.mark.requirement("R-AUD")
def test_a_malformed_screening_number_is_audited_as_sent(api, db):
    before = len(canonical_entries(db))

    response = api.post("/participants/S.UB%201%C3%A9/unblind", "medical-monitor", json=SAE)

    assert response.status_code == 404
    log = entries(db)
    assert len(log) == before + 1
    assert log[-1]["action"] == "participant.unblind_refused"
    assert log[-1]["subject"] is None
    assert log[-1]["data"]["screening_number"] == "S.UB 1?"  # printable ASCII only


VALID_OTHER = {"reason": "other", "event_reference": "EVT-1", "detail": "Suspected SUSAR."}


@pytest.mark.requirement("R-UNB")
@pytest.mark.requirement("R-AUD")
@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, {"reason", "event_reference"}),
        ({"event_reference": "SAE-1"}, {"reason"}),
        ({"reason": "serious_adverse_event"}, {"event_reference"}),
        ({"reason": "curiosity", "event_reference": "SAE-1"}, {"reason"}),
        ({"reason": None, "event_reference": "SAE-1"}, {"reason"}),
        ({"reason": 1, "event_reference": "SAE-1"}, {"reason"}),
        ({"reason": "serious_adverse_event", "event_reference": ""}, {"event_reference"}),
        ({"reason": "serious_adverse_event", "event_reference": "S" * 65}, {"event_reference"}),
        ({"reason": "serious_adverse_event", "event_reference": "SAE\t1"}, {"event_reference"}),
        ({"reason": "serious_adverse_event", "event_reference": "SAE\n1"}, {"event_reference"}),
        ({"reason": "serious_adverse_event", "event_reference": 42}, {"event_reference"}),
        ({"reason": "other", "event_reference": "EVT-1"}, {"detail"}),
        ({"reason": "other", "event_reference": "EVT-1", "detail": None}, {"detail"}),
        ({"reason": "other", "event_reference": "EVT-1", "detail": ""}, {"detail"}),
        ({**VALID_OTHER, "detail": "d" * 2001}, {"detail"}),
        ({**SAE, "detail": "d" * 2001}, {"detail"}),
        ({**SAE, "arm": "placebo"}, {"arm"}),
    ],
)
def test_an_invalid_body_is_refused_naming_the_field_and_audited(api, db, body, fields):
    enrol(api)
    before_state, before_log = state(db), len(canonical_entries(db))

    response = unblind(api, R101, "investigator-101", body)

    assert response.status_code == 422, response.get_json()
    problem = response.get_json()
    assert problem["type"] == "/problems/validation"
    assert set(problem["errors"]) == fields
    assert "arm" not in problem or fields == {"arm"}
    assert state(db) == before_state
    log = entries(db)
    assert len(log) == before_log + 1
    assert log[-1]["action"] == "participant.unblind_refused"
    assert log[-1]["data"]["reason"] == "validation"
    assert log[-1]["data"]["screening_number"] == R101
    assert set(log[-1]["data"]["fields"]) == fields


@pytest.mark.requirement("R-UNB")
def test_an_unparseable_body_is_refused_and_audited(api, db):
    enrol(api)
    before_state, before_log = state(db), len(canonical_entries(db))

    response = unblind(
        api, R101, "investigator-101", data="{not json", content_type="application/json"
    )

    assert response.status_code == 400
    assert response.get_json()["type"] == "/problems/validation"
    assert state(db) == before_state
    log = entries(db)
    assert len(log) == before_log + 1
    assert log[-1]["action"] == "participant.unblind_refused"


@pytest.mark.requirement("R-UNB")
def test_the_longest_reference_and_detail_are_accepted_and_recorded(api, db):
    enrol(api)
    body = {"reason": "other", "event_reference": "R" * 64, "detail": "d" * 2000}

    response = unblind(api, R101, "medical-monitor", body)

    assert response.status_code == 200, response.get_json()
    entry = entries(db)[-1]
    assert entry["data"]["event_reference"] == "R" * 64
    assert entry["data"]["detail"] == "d" * 2000
    [row] = unblindings_of(db, R101)
    assert (row.reason, row.event_reference, row.detail) == ("other", "R" * 64, "d" * 2000)


@pytest.mark.requirement("R-UNB")
@pytest.mark.parametrize(
    "steps",
    [
        [("withdraw", "coordinator-101")],
        [("discontinue", "coordinator-101")],
        [("flag-error", "admin")],
        [("discontinue", "investigator-101"), ("withdraw", "coordinator-101")],
    ],
)
def test_any_participant_ever_randomised_can_be_unblinded_whatever_its_status(api, ctx, db, steps):
    enrol(api)
    for path, user in steps:
        changed = api.post(f"/participants/{R101}/{path}", user, json={"reason": "Test."})
        assert changed.status_code == 200, changed.get_json()
    withdrawn = api.post(f"/participants/{S101}/withdraw", "coordinator-101", json={"reason": "x"})
    assert withdrawn.get_json()["status"] == "withdrawn"

    randomised = unblind(api, R101, "investigator-101")
    never = unblind(api, S101, "investigator-101")

    assert randomised.status_code == 200
    assert randomised.get_json()["arm"]["id"] == arm_of(db, ctx, R101)
    assert never.status_code == 409  # withdrawn before randomisation: there is no arm
    assert never.get_json()["type"] == "/problems/conflict"


@pytest.mark.requirement("R-UNB")
def test_unblinding_again_is_a_new_audited_event(api, db):
    enrol(api)

    first = unblind(api, R101, "investigator-101")
    second = unblind(api, R101, "medical-monitor", {**SAE, "event_reference": "SAE-2026-0043"})

    assert first.status_code == second.status_code == 200
    assert first.get_json()["arm"] == second.get_json()["arm"]
    assert first.get_json()["receipt"]["seq"] < second.get_json()["receipt"]["seq"]
    rows = unblindings_of(db, R101)
    assert [(r.user_name, r.role, r.event_reference) for r in rows] == [
        ("investigator-101", "investigator", "SAE-2026-0042"),
        ("medical-monitor", "medical_monitor", "SAE-2026-0043"),
    ]
    unblinded = [e for e in entries(db) if e["action"] == "participant.unblinded"]
    assert [e["seq"] for e in unblinded] == [r.audit_seq for r in rows]


# The arm is the allocation, and the blind holds for everyone else (R-UNB, R-BLIND-1) -------


@pytest.mark.requirement("R-UNB")
@pytest.mark.requirement("R-BLIND-1")
def test_the_arm_returned_is_the_seeds_allocation(api, ctx, db):
    """Six participants in one stratum cover both arms (blocks of 2 and 4, ratio 1:1)."""
    arms = set()
    for n in range(6):
        sn = f"101-UB-ALLOC-{n}"
        number = api.screen_and_randomize(sn).get_json()["randomization_number"]
        response = unblind(api, sn, "investigator-101")
        assert response.status_code == 200
        arm = response.get_json()["arm"]
        assert arm["id"] == seed_arm(ctx.definition, number)
        assert arm["label"] == ctx.definition.arm(arm["id"]).label
        arms.add(arm["id"])
    assert arms == set(ARM_IDS)


@pytest.mark.requirement("R-BLIND-1")
@pytest.mark.requirement("R-UNB")
def test_after_unblinding_blinded_readers_see_who_and_when_never_the_arm(api, db):
    enrol(api)
    first = unblind(api, R101, "investigator-101").get_json()
    second = unblind(api, R101, "medical-monitor").get_json()
    also = unblind(api, R102, "investigator-102").get_json()

    expected = {
        R101: [
            {"by": "investigator-101", "role": "investigator", "at": first["unblinded_at"]},
            {"by": "medical-monitor", "role": "medical_monitor", "at": second["unblinded_at"]},
        ],
        R102: [{"by": "investigator-102", "role": "investigator", "at": also["unblinded_at"]}],
        S101: [],
        S102: [],
    }
    readers = {
        R101: (*READERS_101, "sponsor"),
        S101: (*READERS_101, "sponsor"),
        R102: (*READERS_102, "sponsor"),
        S102: (*READERS_102, "sponsor"),
    }
    for sn, users in readers.items():
        for user in users:
            response = api.get(f"/participants/{sn}", user)
            assert response.status_code == 200, (sn, user)
            assert not names_an_arm(response.get_data(as_text=True)), (sn, user)
            view = response.get_json()
            assert "arm" not in view
            assert view["unblinded"] is bool(expected[sn]), (sn, user)
            assert view["unblindings"] == expected[sn], (sn, user)
    # The blinded lists of unblindings and the auditor's log hold no arm either.
    for user in BLINDED_LISTERS:
        assert not names_an_arm(api.get("/unblindings", user).get_data(as_text=True))
    log = api.get("/audit/entries?start=0", "auditor")
    assert log.status_code == 200
    assert not names_an_arm(log.get_data(as_text=True))


# The record (R-AUD, R-RCPT) -----------------------------------------------------------------


@pytest.mark.requirement("R-AUD")
@pytest.mark.requirement("R-UNB")
def test_the_entry_holds_the_arm_only_sealed(api, ctx, db):
    enrol(api)
    body = {"reason": "pregnancy", "event_reference": "PREG-7", "detail": "Reported at visit 3."}

    answer = unblind(api, R101, "investigator-101", body).get_json()

    with db.reading() as session:
        canonical = session.get(AuditEntry, answer["receipt"]["seq"]).canonical
    assert not names_an_arm(canonical)
    entry = json.loads(canonical)
    assert entry["action"] == "participant.unblinded"
    assert (entry["actor"], entry["role"], entry["subject"]) == (
        "investigator-101",
        "investigator",
        R101,
    )
    data = entry["data"]
    assert data["reason"] == "pregnancy"
    assert data["event_reference"] == "PREG-7"
    assert data["detail"] == "Reported at visit 3."
    assert data["site"] == "101"
    sealed = SealedArm.from_json(data["sealed_arm"])
    assert ctx.sealer.unseal_arm(sealed, "participant", R101) == answer["arm"]["id"]
    # Bound to its participant: it does not open as another's.
    with pytest.raises(UnsealError):
        ctx.sealer.unseal_arm(sealed, "participant", R102)
    [row] = unblindings_of(db, R101)
    assert row.audit_seq == entry["seq"]


@pytest.mark.requirement("R-RCPT")
@pytest.mark.requirement("R-UNB")
def test_the_receipt_proves_offline_that_the_unblinding_was_recorded(api):
    enrol(api)

    answer = unblind(api, R101, "medical-monitor")

    receipt = answer.get_json()["receipt"]
    key = parse_verifier_key(api.get("/audit/verifier-key").get_data(as_text=True))
    checkpoint = verify_checkpoint(receipt["checkpoint"], key)
    entry = json.loads(receipt["entry"])
    assert canonical_bytes(entry) == receipt["entry"].encode()
    assert (entry["seq"], entry["action"], entry["subject"]) == (
        receipt["seq"],
        "participant.unblinded",
        R101,
    )
    assert not names_an_arm(receipt["entry"])
    assert checkpoint.size == receipt["seq"] + 1
    proof = [base64.b64decode(h) for h in receipt["inclusion_proof"]]
    leaf = leaf_hash(receipt["entry"].encode())
    assert verify_inclusion(leaf, receipt["seq"], checkpoint.size, proof, checkpoint.root)


# Write-ahead: no record, no arm -------------------------------------------------------------


@pytest.mark.requirement("R-UNB")
@pytest.mark.requirement("R-NF-2")
def test_a_failed_commit_answers_503_without_the_arm_and_marks_nothing(api, app, db):
    enrol(api)
    before_state, before_log = state(db), canonical_entries(db)
    listener = app.extensions["sealroom"].db.sessions

    def fail(_session: Any) -> None:
        raise OperationalError("COMMIT", {}, Exception("server closed the connection"))

    event.listen(listener, "before_commit", fail)
    try:
        response = unblind(api, R101, "investigator-101")
    finally:
        event.remove(listener, "before_commit", fail)

    assert response.status_code == 503
    assert response.mimetype == "application/problem+json"
    problem = response.get_json()
    assert problem["type"] == "/problems/unavailable"
    assert "arm" not in problem and "receipt" not in problem
    assert not names_an_arm(response.get_data(as_text=True))
    assert state(db) == before_state  # not unblinded, no Unblinding row, no message
    assert canonical_entries(db) == before_log
    assert api.get(f"/participants/{R101}", "coordinator-101").get_json()["unblinded"] is False
    assert api.get("/unblindings", "statistician").get_json() == []
    # Once the database commits again, the unblinding goes through.
    again = unblind(api, R101, "investigator-101")
    assert again.status_code == 200
    assert len(unblindings_of(db, R101)) == 1


@pytest.mark.requirement("R-UNB")
def test_a_failed_checkpoint_gives_no_arm_and_marks_nothing(api, app, db, monkeypatch):
    enrol(api)
    before_state, before_log = state(db), canonical_entries(db)

    def refuse(_session: Any) -> str:
        raise OperationalError("INSERT INTO audit_checkpoint", {}, Exception("disk full"))

    monkeypatch.setattr(app.extensions["sealroom"].ctx.audit, "checkpoint", refuse)
    response = unblind(api, R101, "investigator-101")

    assert response.status_code == 503
    assert not names_an_arm(response.get_data(as_text=True))
    assert "arm" not in response.get_json()
    assert state(db) == before_state
    assert canonical_entries(db) == before_log


# Idempotency-Key: ignored, never replayed (URS §8) -------------------------------------------


@pytest.mark.requirement("R-UNB")
def test_an_idempotency_key_is_ignored_and_every_request_is_a_new_unblinding(api, db):
    enrol(api)
    headers = {"Idempotency-Key": "7f3c2a4e-unblind-once"}

    first = unblind(api, R101, "investigator-101", headers=headers)
    second = unblind(api, R101, "investigator-101", headers=headers)
    # Even another body under the same key is not a mismatch: the key plays no part.
    third = unblind(
        api, R101, "investigator-101", {**SAE, "event_reference": "SAE-X"}, headers=headers
    )

    assert first.status_code == second.status_code == third.status_code == 200
    seqs = [r.get_json()["receipt"]["seq"] for r in (first, second, third)]
    assert len(set(seqs)) == 3
    assert "Idempotent-Replay" not in second.headers
    unblinded = [e for e in entries(db) if e["action"] == "participant.unblinded"]
    assert [e["seq"] for e in unblinded] == seqs
    assert [r.audit_seq for r in unblindings_of(db, R101)] == seqs


# GET /unblindings (R-UNB-3) -----------------------------------------------------------------


@pytest.mark.requirement("R-UNB-3")
@pytest.mark.requirement("R-BLIND-1")
def test_the_statistician_lists_arms_the_blinded_readers_the_same_list_without(api, ctx, db):
    enrol(api)
    unblind(api, R101, "investigator-101")
    unblind(api, R102, "medical-monitor", VALID_OTHER)
    unblind(api, R101, "medical-monitor")

    full = api.get("/unblindings", "statistician")
    blinded = {user: api.get("/unblindings", user) for user in BLINDED_LISTERS}

    assert full.status_code == 200
    items = full.get_json()
    assert [(i["screening_number"], i["by"]) for i in items] == [
        (R101, "investigator-101"),
        (R102, "medical-monitor"),
        (R101, "medical-monitor"),
    ]
    for item in items:
        arm = ctx.definition.arm(arm_of(db, ctx, item["screening_number"]))
        assert item["arm"] == {"id": arm.id, "label": arm.label}
    assert items[1]["reason"] == "other"
    assert items[1]["detail"] == VALID_OTHER["detail"]
    assert items[1]["site"] == "102"
    assert all(r.status_code == 200 for r in blinded.values())
    assert len({r.get_data() for r in blinded.values()}) == 1
    without = blinded["sponsor"].get_json()
    assert without == [{k: v for k, v in item.items() if k != "arm"} for item in items]


@pytest.mark.requirement("R-UNB-3")
@pytest.mark.parametrize(
    "user",
    [
        "coordinator-101",
        "investigator-101",
        "pharmacist-101",
        "coordinator-201",
        "pharmacist-201",
        "admin",
    ],
)
def test_other_roles_may_not_list_unblindings(api, user):
    enrol(api)
    unblind(api, R101, "investigator-101")

    response = api.get("/unblindings", user)

    assert response.status_code == 403
    assert not names_an_arm(response.get_data(as_text=True))


# Outbox: messages written with the unblinding -------------------------------------------------


@pytest.mark.requirement("R-UNB-2")
def test_the_unblinding_writes_its_messages_in_its_own_transaction(api, db):
    """Without a mail server (the demo) they wait in the outbox, undelivered."""
    enrol(api)

    unblind(api, R101, "medical-monitor")
    unblind(api, R102, "medical-monitor")

    with db.reading() as session:
        rows = list(session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))
        session.expunge_all()
    # No safety contact is configured here: the site's investigators with an address only.
    assert [(r.about, r.recipient, r.status, r.attempts) for r in rows] == [
        (R101, "investigator-101@sealroom-demo.invalid", "pending", 0),
        (R102, "investigator-102@sealroom-demo.invalid", "pending", 0),
    ]
    assert all(not names_an_arm(r.subject + r.body) for r in rows)
    listed = api.get("/notifications", "admin").get_json()
    assert [n["recipient"] for n in listed] == [r.recipient for r in rows]


@pytest.mark.requirement("R-UNB-2")
def test_a_refused_unblinding_writes_no_message(api, db):
    enrol(api)

    for sn, user in ((R101, "sponsor"), (R102, "investigator-101"), (S101, "medical-monitor")):
        assert unblind(api, sn, user).status_code in (403, 404, 409)
    assert unblind(api, R101, "investigator-101", {"reason": "other"}).status_code == 422

    with db.reading() as session:
        assert session.scalar(select(func.count()).select_from(OutboxMessage)) == 0


# On a database of its own: the CLI's verification and list export ---------------------------


@pytest.fixture
def own_trial(scratch: Any, backend: str, tmp_path: Path) -> Any:
    from randomizer import create_app

    trial = make_trial_database(scratch, backend, tmp_path, kits_per_arm=12)
    app = create_app({"settings": trial.settings, "TESTING": True})
    yield trial, ApiClient(app.test_client(), trial.tokens, Clock())
    app.extensions["sealroom"].db.dispose()


def run_cli(trial: Any, *args: str) -> Any:
    return CliRunner().invoke(
        cli,
        ["--database-url", trial.url, *args],
        env={
            "SEALROOM_KEYS_DIR": str(trial.settings.keys_dir),
            "SEALROOM_DATABASE_URL": None,
            "SEALROOM_SMTP_URL": None,
            "SEALROOM_NOTIFY_UNBLINDING": None,
        },
    )


@pytest.mark.requirement("R-AUD")
@pytest.mark.requirement("R-UNB")
@pytest.mark.requirement("R-CLI")
def test_the_log_verifies_after_unblindings_and_the_exported_list_tells_the_truth(
    own_trial, tmp_path
):
    trial, client = own_trial
    answers = {}
    for n in range(4):
        sn = f"101-UB-CLI-{n}"
        number = client.screen_and_randomize(sn).get_json()["randomization_number"]
        response = client.post(f"/participants/{sn}/unblind", "investigator-101", json=SAE)
        assert response.status_code == 200
        answers[number] = response.get_json()["arm"]["id"]
    path = f"/participants/{sn}/unblind"
    assert client.post(path, "sponsor", json=SAE).status_code == 403
    assert client.post(path, "medical-monitor", json=SAE).status_code == 200

    key = client.get("/audit/verifier-key").get_data(as_text=True).strip()
    verified = run_cli(trial, "audit", "verify", "--verifier-key", key)
    assert verified.exit_code == 0, verified.output
    assert "OK" in verified.output

    out = tmp_path / "lists.csv"
    exported = run_cli(trial, "lists", "export", "--seed", APPENDIX_A_SEED.hex(), "--out", str(out))
    assert exported.exit_code == 0, exported.output
    with out.open(newline="") as table:
        allocation = {row["randomization_number"]: row["arm"] for row in csv.DictReader(table)}
    assert answers == {number: allocation[number] for number in answers}
    assert set(answers.values()) == set(ARM_IDS)
