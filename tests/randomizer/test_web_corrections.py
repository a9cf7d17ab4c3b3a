"""The admin's signed correction pages (issue 13: R-FIX, R-WEB-1, R-WEB-2).

An admin finds a randomised participant of any site, then flags it randomised in error or
records its right screening factors, each with a reason, a confirmation and the admin's
password again (an electronic signature, recorded in the correction's audit entry). A wrong
password is refused and audited like any other refusal, and counts against the sign-in
throttle; a double click acts once; no other role may correct; no page shows an arm.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import select

from randomizer.models import AuditEntry
from randomizer.services.throttling import ThrottlePolicy
from tests.randomizer.test_web import ARM_WORDS, body_without_trial_title
from tests.randomizer.web_client import CSRF, WebClient

FLAGGED = "participant.flagged_randomized_in_error"
CORRECTED = "participant.stratum_corrected"


@pytest.fixture
def web(app: Any, trial_db: Any) -> WebClient:
    return WebClient(app.test_client(), trial_db.passwords)


@pytest.fixture
def admin(web: WebClient) -> WebClient:
    web.sign_in("admin")
    return web


def audited(db: Any, action: str) -> list[dict[str, Any]]:
    with db.reading() as session:
        rows = session.scalars(
            select(AuditEntry.canonical).where(AuditEntry.action == action).order_by(AuditEntry.seq)
        )
        return [json.loads(row) for row in rows]


def no_arm(page: str) -> bool:
    return not any(word in body_without_trial_title(page) for word in ARM_WORDS)


def flag(web: WebClient, number: str, password: str | None = None, **changes: Any) -> Any:
    web.get(f"/participants/{number}/flag-error")
    form = {
        "reason": "Not eligible after all: consent form unsigned",
        "confirm": "yes",
        "password": password if password is not None else web.passwords["admin"],
        **changes,
    }
    return web.post(f"/participants/{number}/flag-error", form)


def correct(web: WebClient, number: str, password: str | None = None, **changes: Any) -> Any:
    web.get(f"/participants/{number}/correct-stratum")
    form = {
        "strata.prior_ig": "yes",
        "reason": "Prior IVIG found in the hospital record",
        "confirm": "yes",
        "password": password if password is not None else web.passwords["admin"],
        **changes,
    }
    return web.post(f"/participants/{number}/correct-stratum", form)


@pytest.mark.requirement("R-FIX")
@pytest.mark.requirement("R-WEB-1")
def test_admin_finds_a_participant_of_any_site_with_links_to_its_corrections(admin, api):
    api.screen_and_randomize("201-0001", user="coordinator-201", site="201")
    assert admin.get("/").status_code == 200
    assert 'href="/corrections"' in admin.page
    found = admin.get("/corrections?screening_number=201-0001")
    assert found.status_code == 200
    assert 'href="/participants/201-0001/correct-stratum"' in admin.page
    assert 'href="/participants/201-0001/flag-error"' in admin.page
    assert "<code>prior_ig</code> = no" in admin.page
    assert no_arm(admin.page)
    assert admin.get("/corrections?screening_number=201-9999").status_code == 404
    api.screen("201-0002", user="coordinator-201", site="201")
    admin.get("/corrections?screening_number=201-0002")
    assert "never randomised" in admin.page and "/flag-error" not in admin.page


@pytest.mark.requirement("R-FIX")
@pytest.mark.requirement("R-WEB-1")
def test_admin_flags_a_participant_with_a_signature_recorded_in_the_audit(admin, api, db):
    api.screen_and_randomize("101-0001")
    form = admin.get("/participants/101-0001/flag-error")
    assert form.status_code == 200 and no_arm(admin.page)
    assert 'name="password" type="password"' in admin.page
    done = flag(admin, "101-0001")
    assert done.status_code == 200, admin.page
    assert '<dd id="status">randomized_in_error</dd>' in admin.page and no_arm(admin.page)
    [entry] = audited(db, FLAGGED)
    assert entry["data"]["reason"] == "Not eligible after all: consent form unsigned"
    signature = entry["data"]["signature"]
    assert signature["signed_by"] == "admin" and signature["role"] == "admin"
    assert signature["meaning"].startswith("I flag this participant as randomised in error")
    assert signature["signed_at"] == entry["time"]
    assert admin.passwords["admin"] not in json.dumps(entry)
    shown = api.get("/participants/101-0001", "coordinator-101").get_json()
    assert shown["status"] == "randomized_in_error"


@pytest.mark.requirement("R-FIX")
@pytest.mark.requirement("R-WEB-1")
def test_admin_corrects_the_stratum_beside_the_original_with_a_signature(admin, api, db):
    randomised = api.screen_and_randomize("101-0002").get_json()
    admin.get("/participants/101-0002/correct-stratum")
    # The factors as the trial defines them, the recorded level chosen.
    assert 'name="strata.prior_ig" value="no" required checked' in admin.page
    assert 'name="strata.prior_ig" value="yes" required>' in admin.page
    done = correct(admin, "101-0002")
    assert done.status_code == 200, admin.page
    [entry] = audited(db, CORRECTED)
    assert entry["data"]["strata"] == {"prior_ig": "yes"}
    assert entry["data"]["randomized_stratum"] == randomised["stratum"]
    assert entry["data"]["corrected_stratum"] in admin.page
    assert entry["data"]["signature"]["signed_by"] == "admin"
    assert entry["data"]["signature"]["meaning"].startswith("I record these screening factors")
    shown = api.get("/participants/101-0002", "coordinator-101").get_json()
    assert shown["stratum"] == randomised["stratum"]  # the randomisation's never changes
    assert shown["corrected_stratum"] == entry["data"]["corrected_stratum"]
    assert no_arm(admin.page)
    # The same factors again: already recorded, refused on the field.
    again = correct(admin, "101-0002")
    assert again.status_code == 422 and "already recorded" in admin.page


@pytest.mark.requirement("R-FIX")
@pytest.mark.requirement("R-WEB-2")
@pytest.mark.parametrize("correction", [flag, correct])
def test_a_wrong_password_refuses_the_correction_and_is_audited(admin, api, db, correction):
    api.screen_and_randomize("101-0003")
    refused = correction(admin, "101-0003", password="not the admin password")
    assert refused.status_code == 422
    assert 'id="password-error"' in admin.page and "signature is refused" in admin.page
    assert no_arm(admin.page)
    action = FLAGGED if correction is flag else CORRECTED
    assert audited(db, action) == []
    [entry] = audited(db, f"{action}_refused")
    assert entry["data"]["status"] == 422 and entry["data"]["fields"] == ["password"]
    assert "not the admin password" not in json.dumps(entry)
    shown = api.get("/participants/101-0003", "coordinator-101").get_json()
    assert shown["status"] == "randomized" and shown["corrected_stratum"] is None


@pytest.mark.requirement("R-FIX")
@pytest.mark.requirement("R-WEB-2")
def test_wrong_signature_passwords_count_against_the_sign_in_throttle(app, trial_db, api):
    state = app.extensions["sealroom"]
    waits: list[float] = []
    state.throttle.policy = ThrottlePolicy(
        window=state.throttle.policy.window, free_failures=1, max_failures=2, max_delayed=4
    )
    state.throttle.sleep = waits.append
    api.screen_and_randomize("101-0004")
    admin = WebClient(app.test_client(), trial_db.passwords)
    admin.sign_in("admin")
    statuses = [flag(admin, "101-0004", password="a wrong guess").status_code for _ in range(3)]
    assert statuses == [422, 422, 429]
    assert waits == [0.25]  # the second failure waited; the third is beyond the limit
    assert "Too many wrong passwords" in admin.page
    # The right password is always accepted: nobody is locked out.
    assert flag(admin, "101-0004").status_code == 200, admin.page


@pytest.mark.requirement("R-FIX")
@pytest.mark.requirement("R-WEB-1")
def test_a_double_clicked_correction_acts_once(admin, api, db):
    api.screen_and_randomize("101-0005")
    admin.get("/participants/101-0005/flag-error")
    form = {
        "reason": "Randomised twice by mistake",
        "confirm": "yes",
        "password": admin.passwords["admin"],
        "csrf_token": admin.csrf(),
        "form_key": admin.form_key(),
    }
    first = admin.client.post("/participants/101-0005/flag-error", data=form)
    again = admin.client.post("/participants/101-0005/flag-error", data=form)
    assert first.status_code == again.status_code == 200
    assert CSRF.sub("", first.get_data(as_text=True)) == CSRF.sub("", again.get_data(as_text=True))
    assert len(audited(db, FLAGGED)) == 1
    assert audited(db, f"{FLAGGED}_refused") == []


@pytest.mark.requirement("R-FIX")
@pytest.mark.requirement("R-WEB-2")
def test_a_correction_without_the_csrf_token_is_refused(admin, api, db):
    api.screen_and_randomize("101-0006")
    admin.get("/participants/101-0006/correct-stratum")
    refused = admin.post(
        "/participants/101-0006/correct-stratum",
        {
            "strata.prior_ig": "yes",
            "reason": "forged",
            "confirm": "yes",
            "password": admin.passwords["admin"],
        },
        csrf=False,
    )
    assert refused.status_code == 400
    assert audited(db, CORRECTED) == []


@pytest.mark.requirement("R-FIX")
@pytest.mark.requirement("R-WEB-1")
def test_an_unconfirmed_correction_corrects_nothing(admin, api, db):
    api.screen_and_randomize("101-0007")
    refused = flag(admin, "101-0007", confirm="")
    assert refused.status_code == 422 and 'id="confirm-error"' in admin.page
    assert audited(db, FLAGGED) == []


@pytest.mark.requirement("R-FIX")
@pytest.mark.requirement("R-WEB-1")
@pytest.mark.parametrize(
    "user", ["coordinator-101", "investigator-101", "medical-monitor", "sponsor", "auditor"]
)
def test_no_other_role_may_correct_and_a_refused_correction_is_audited(web, api, db, user):
    api.screen_and_randomize("101-0008")
    web.sign_in(user)
    assert web.get("/corrections").status_code == 403
    assert web.get("/participants/101-0008/flag-error").status_code == 403
    assert web.get("/participants/101-0008/correct-stratum").status_code == 403
    refused = web.post(
        "/participants/101-0008/flag-error",
        {"reason": "trying", "confirm": "yes", "password": web.passwords[user]},
    )
    assert refused.status_code == 403
    assert no_arm(web.page)
    [entry] = audited(db, f"{FLAGGED}_refused")
    assert entry["actor"] == user and entry["data"]["status"] == 403
    assert audited(db, FLAGGED) == []


@pytest.mark.requirement("R-FIX")
@pytest.mark.requirement("R-WEB-1")
def test_a_french_admin_reads_the_meaning_in_french_and_the_audit_keeps_it_in_english(
    admin, api, db
):
    api.screen_and_randomize("101-0009")
    admin.get("/language")
    admin.post("/language", {"language": "fr"})
    admin.get("/participants/101-0009/correct-stratum")
    assert "Corriger la strate" in admin.page
    assert "enregistre ces facteurs de sélection pour ce participant" in admin.page
    assert correct(admin, "101-0009").status_code == 200, admin.page
    assert "Correction enregistrée" in admin.page
    [entry] = audited(db, CORRECTED)
    assert entry["data"]["signature"]["meaning"].startswith("I record these screening factors")
