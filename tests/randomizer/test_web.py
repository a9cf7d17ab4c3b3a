"""The web pages through Flask's test client (issue 13: R-WEB-1, R-WEB-2)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from randomizer.services.throttling import ThrottlePolicy
from tests.conftest import ELIGIBLE
from tests.randomizer.web_client import CSRF, WebClient

ARM_WORDS = ("igpro20", "IgPro20", "placebo", "Placebo")


@pytest.fixture
def web(app: Any, trial_db: Any) -> WebClient:
    return WebClient(app.test_client(), trial_db.passwords)


def checklist_form(weight: str = "70", **changes: Any) -> dict[str, str]:
    answers = {**ELIGIBLE, **changes}
    form = {"weight_kg": weight, "confirm_stratum": "yes"}
    for name, value in answers.items():
        form[f"eligibility.{name}"] = (
            ("yes" if value else "no") if isinstance(value, bool) else str(value)
        )
    return form


def screen(web: WebClient, number: str, today: str) -> Any:
    web.get("/participants/new")
    return web.post(
        "/participants/new",
        {"screening_number": number, "screened_on": today, "strata.prior_ig": "no"},
    )


def randomise(web: WebClient, number: str, **changes: Any) -> Any:
    web.get(f"/participants/{number}/randomise")
    return web.post(f"/participants/{number}/randomise", checklist_form(**changes))


def body_without_trial_title(page: str) -> str:
    """The page less what the trial's own title may name (the products)."""
    return page.split('<main id="main">', 1)[1]


@pytest.mark.requirement("R-WEB-2")
def test_the_root_sends_anyone_not_signed_in_to_the_sign_in_form(web):
    answer = web.get("/")
    assert answer.status_code == 302 and answer.headers["Location"].endswith("/sign-in")
    form = web.get("/sign-in")
    assert form.status_code == 200
    assert 'name="username"' in web.page and 'name="password"' in web.page
    assert 'type="hidden" name="csrf_token"' in web.page


@pytest.mark.requirement("R-WEB-2")
def test_a_demo_user_signs_in_with_the_password_init_demo_wrote_and_sees_trial_user_and_role(web):
    answer = web.sign_in("coordinator-101")
    assert answer.status_code == 303
    home = web.get("/")
    assert home.status_code == 200
    assert "RECLAIIM" in web.page and "coordinator-101" in web.page
    assert '<span id="role">coordinator</span>' in web.page


@pytest.mark.requirement("R-WEB-2")
def test_a_wrong_password_is_refused_with_one_message_for_every_cause(web):
    wrong = web.sign_in("coordinator-101", "not the password at all")
    assert wrong.status_code == 401
    message = web.page.split('id="sign-in-error">', 1)[1].split("<", 1)[0]
    unknown = web.sign_in("nobody-here", "not the password at all")
    assert unknown.status_code == 401
    assert web.page.split('id="sign-in-error">', 1)[1].split("<", 1)[0] == message
    assert web.get("/").status_code == 302


@pytest.mark.requirement("R-WEB-2")
def test_any_post_without_the_csrf_token_is_refused_the_sign_in_included(web, trial_db):
    web.get("/sign-in")
    refused = web.post(
        "/sign-in",
        {"username": "coordinator-101", "password": trial_db.passwords["coordinator-101"]},
        csrf=False,
    )
    assert refused.status_code == 400
    assert web.get("/").status_code == 302  # not signed in
    web.sign_in("coordinator-101")
    web.get("/participants/new")
    forged = web.post(
        "/participants/new",
        {
            "screening_number": "101-0900",
            "screened_on": "2026-01-01",
            "strata.prior_ig": "no",
            "csrf_token": "forged",
        },
    )
    assert forged.status_code == 400
    web.get("/")
    assert web.post("/sign-out", {}, csrf=False).status_code == 400
    assert web.get("/").status_code == 200  # still signed in


@pytest.mark.requirement("R-WEB-2")
def test_sign_out_is_a_post_and_ends_the_session_on_the_server(web, app):
    web.sign_in("coordinator-101")
    cookie = web.client.get_cookie("sealroom_session")
    web.get("/")
    assert web.client.get("/sign-out").status_code == 405  # no GET changes anything
    assert web.post("/sign-out", {}).status_code == 303
    assert web.get("/").status_code == 302
    # The old cookie, replayed, opens nothing: the session row has ended.
    replay = app.test_client()
    replay.set_cookie("sealroom_session", cookie.value)
    assert replay.get("/participants").status_code == 302


@pytest.mark.requirement("R-WEB-2")
def test_deactivating_a_user_ends_their_session_at_once(web, app, trial_db):
    web.sign_in("coordinator-102")
    assert web.get("/participants").status_code == 200
    admin = WebClient(app.test_client(), trial_db.passwords)
    admin.sign_in("admin")
    admin.get("/admin/users")
    done = admin.post(
        "/admin/users",
        {
            "action": "deactivate",
            "name": "coordinator-102",
            "password": trial_db.passwords["admin"],
        },
    )
    assert done.status_code == 200, admin.page
    assert web.get("/participants").status_code == 302


@pytest.mark.requirement("R-WEB-2")
def test_a_session_expires_when_idle(web, clock):
    web.sign_in("coordinator-101")
    assert web.get("/participants").status_code == 200
    clock.advance(minutes=31)
    assert web.get("/participants").status_code == 302


@pytest.mark.requirement("R-WEB-2")
def test_every_page_carries_the_security_headers(web):
    for path in ("/sign-in",):
        answer = web.get(path)
        csp = answer.headers["Content-Security-Policy"]
        assert "script-src" not in csp and "default-src 'none'" in csp
        assert "frame-ancestors 'none'" in csp
        assert answer.headers["X-Frame-Options"] == "DENY"
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.headers["Cache-Control"] == "no-store"
    web.sign_in("coordinator-101")
    cookie = web.client.get_cookie("sealroom_session")
    assert (
        cookie.http_only and not cookie.secure
    )  # plain HTTP here; SEALROOM_SECURE_COOKIES=1 behind TLS
    assert web.get("/participants").headers["Cache-Control"] == "no-store"
    assert "<script" not in web.page


@pytest.mark.requirement("R-WEB-2")
def test_failed_sign_ins_are_counted_in_the_database_and_slowed_not_locked(app, trial_db, db):
    state = app.extensions["sealroom"]
    waits: list[float] = []
    state.throttle.policy = ThrottlePolicy(
        window=state.throttle.policy.window, free_failures=2, max_failures=5, max_delayed=4
    )
    state.throttle.sleep = waits.append
    web = WebClient(app.test_client(), trial_db.passwords)
    statuses = [
        web.sign_in("investigator-101", "wrong password guess").status_code for _ in range(7)
    ]
    assert statuses[:5] == [401] * 5 and statuses[5:] == [429, 429]
    assert waits == [0.25, 0.5, 1.0]  # growing delays after the free failures
    # The right password still signs in: nobody is locked out of an emergency unblinding.
    assert web.sign_in("investigator-101").status_code == 303


@pytest.mark.requirement("R-WEB-1")
@pytest.mark.parametrize(
    ("user", "path", "status"),
    [
        ("coordinator-101", "/participants", 200),
        ("coordinator-101", "/participants/new", 200),
        ("coordinator-101", "/inventory", 403),
        ("coordinator-101", "/admin/users", 403),
        ("coordinator-101", "/audit", 403),
        ("pharmacist-101", "/inventory", 200),
        ("pharmacist-101", "/participants/new", 403),
        ("medical-monitor", "/participants", 200),
        ("sponsor", "/participants", 200),
        ("sponsor", "/inventory", 403),
        ("admin", "/admin/users", 200),
        ("admin", "/admin/outbox", 200),
        ("admin", "/participants", 403),
        ("auditor", "/audit", 200),
        ("auditor", "/participants", 403),
        ("statistician", "/", 200),
        ("statistician", "/participants", 403),
    ],
)
def test_each_role_reaches_its_pages_and_is_refused_the_others(web, user, path, status):
    web.sign_in(user)
    assert web.get(path).status_code == status


@pytest.mark.requirement("R-WEB-1")
@pytest.mark.requirement("R-BLIND-1")
def test_coordinator_screens_randomises_and_reads_kits_on_a_page_without_an_arm(web, clock, api):
    web.sign_in("coordinator-101")
    assert screen(web, "101-0001", clock.today().isoformat()).status_code == 201
    form = web.get("/participants/101-0001/randomise")
    assert form.status_code == 200
    for rule in ("I1", "I2", "I3"):  # every rule in the protocol's words
        assert f"<strong>{rule}</strong>" in web.page
    assert "region</code> = north_america" in web.page
    result = randomise(web, "101-0001")
    assert result.status_code == 201, web.page
    shown = api.get("/participants/101-0001", "coordinator-101").get_json()
    assert shown["randomization_number"] in web.page
    for kit in shown["kits"]:
        assert kit in web.page
    for page in (
        web.page,
        web.get("/participants/101-0001").get_data(as_text=True),
        web.get("/participants").get_data(as_text=True),
    ):
        assert not any(word in body_without_trial_title(page) for word in ARM_WORDS)


@pytest.mark.requirement("R-WEB-1")
def test_a_double_clicked_randomisation_acts_once(web, clock, api):
    web.sign_in("coordinator-101")
    screen(web, "101-0002", clock.today().isoformat())
    web.get("/participants/101-0002/randomise")
    form = {**checklist_form(), "csrf_token": web.csrf(), "form_key": web.form_key()}
    first = web.client.post("/participants/101-0002/randomise", data=form)
    again = web.client.post("/participants/101-0002/randomise", data=form)
    assert first.status_code == again.status_code == 201
    shown = api.get("/participants/101-0002", "coordinator-101").get_json()
    assert shown["randomization_number"] in again.get_data(as_text=True)
    # The first result, shown again (but for the CSRF token, which is signed with the time).
    assert CSRF.sub("", first.get_data(as_text=True)) == CSRF.sub("", again.get_data(as_text=True))


@pytest.mark.requirement("R-WEB-1")
def test_an_ineligible_answer_shows_the_failed_rule_in_the_protocols_words(web, clock):
    web.sign_in("coordinator-101")
    screen(web, "101-0003", clock.today().isoformat())
    refused = randomise(web, "101-0003", age_years=17)
    assert refused.status_code == 422
    assert "I1" in web.page and "aged 18 years or older" in web.page


@pytest.mark.requirement("R-WEB-1")
def test_an_unconfirmed_stratum_randomises_no_one(web, clock, api):
    web.sign_in("coordinator-101")
    screen(web, "101-0004", clock.today().isoformat())
    web.get("/participants/101-0004/randomise")
    form = checklist_form()
    del form["confirm_stratum"]
    assert web.post("/participants/101-0004/randomise", form).status_code == 422
    assert api.get("/participants/101-0004", "coordinator-101").get_json()["status"] == "screened"


@pytest.mark.requirement("R-WEB-1")
@pytest.mark.requirement("R-UNB-2")
def test_investigator_unblinds_with_an_electronic_signature_recorded_in_the_audit(
    web, clock, api, db
):
    api.screen_and_randomize("101-0005")
    web.sign_in("investigator-101")
    web.get("/participants/101-0005/unblind")
    assert "who will be told" in web.page.lower() or "are told" in web.page
    form = {"reason": "serious_adverse_event", "event_reference": "SAE-77", "confirm": "yes"}
    wrong = web.post("/participants/101-0005/unblind", {**form, "password": "not my password!"})
    assert wrong.status_code == 422
    assert not any(word in body_without_trial_title(web.page) for word in ARM_WORDS)
    assert api.get("/participants/101-0005", "investigator-101").get_json()["unblinded"] is False
    done = web.post(
        "/participants/101-0005/unblind",
        {**form, "password": web.passwords["investigator-101"]},
    )
    assert done.status_code == 200, web.page
    assert 'id="arm">IgPro20<' in web.page or 'id="arm">Placebo<' in web.page
    with db.reading() as session:
        from sqlalchemy import select

        from randomizer.models import AuditEntry

        entry = json.loads(
            session.scalars(
                select(AuditEntry.canonical)
                .where(AuditEntry.action == "participant.unblinded")
                .order_by(AuditEntry.seq.desc())
            ).first()
        )
        refused = session.scalars(
            select(AuditEntry.action).where(AuditEntry.action == "participant.unblind_refused")
        ).all()
    signature = entry["data"]["signature"]
    assert signature["signed_by"] == "investigator-101" and signature["meaning"]
    assert "signed_at" in signature and "password" not in json.dumps(entry)
    assert refused  # the wrong password's refusal is audited


@pytest.mark.requirement("R-WEB-1")
@pytest.mark.requirement("R-KIT-2")
def test_pharmacist_sees_inventory_without_arms_and_marks_a_kit_damaged_with_its_replacement(
    web, api
):
    randomised = api.screen_and_randomize("101-0006").get_json()
    kit = randomised["kits"][0]
    web.sign_in("pharmacist-101")
    assert web.get("/inventory").status_code == 200
    assert not any(word in body_without_trial_title(web.page) for word in ARM_WORDS)
    web.get(f"/kits/{kit}")
    changed = web.post(f"/kits/{kit}", {"status": "damaged", "reason": "dropped on the floor"})
    assert changed.status_code == 200, web.page
    replacement = web.page.split('id="replacement">', 1)[1].split("<", 1)[0]
    assert replacement in api.get("/participants/101-0006", "pharmacist-101").get_json()["kits"]
    assert not any(word in body_without_trial_title(web.page) for word in ARM_WORDS)


@pytest.mark.requirement("R-WEB-1")
def test_medical_monitor_finds_a_participant_of_any_site(web, api):
    api.screen("201-0007", user="coordinator-201", site="201")
    web.sign_in("medical-monitor")
    web.get("/participants?q=201-00")
    assert "201-0007" in web.page


@pytest.mark.requirement("R-WEB-1")
def test_auditor_pages_through_entries_and_searches_by_action(web):
    web.sign_in("auditor")
    web.get("/audit")
    assert "sealroom/RECLAIIM" in web.page and 'id="next-page"' in web.page
    web.get("/audit?action=user.created")
    assert "user.created" in web.page and "kit.stocked" not in web.page


@pytest.mark.requirement("R-WEB-1")
def test_admin_adds_a_user_who_can_then_sign_in_but_never_a_statistician(web, app, trial_db):
    web.sign_in("admin")
    web.get("/admin/users")
    signed = {"password": trial_db.passwords["admin"], "new_password": "a long new passphrase"}
    refused = web.post(
        "/admin/users", {"action": "add", "name": "stats-2", "role": "statistician", **signed}
    )
    assert refused.status_code == 403
    added = web.post(
        "/admin/users",
        {"action": "add", "name": "coord-9", "role": "coordinator", "site": "101", **signed},
    )
    assert added.status_code == 200, web.page
    newcomer = WebClient(app.test_client(), {"coord-9": "a long new passphrase"})
    assert newcomer.sign_in("coord-9").status_code == 303


@pytest.mark.requirement("R-WEB-1")
def test_auditor_checks_that_the_log_extends_a_checkpoint_kept_earlier(web, api):
    web.sign_in("auditor")
    kept = web.client.get(
        "/api/v1/audit/checkpoint", headers={"Authorization": f"Bearer {api.tokens['auditor']}"}
    ).get_data(as_text=True)
    api.screen("101-0010")  # the log grows after the checkpoint was kept
    web.get("/audit")
    checked = web.post("/audit/consistency", {"checkpoint": kept})
    assert checked.status_code == 200
    assert 'id="consistency">Consistent' in web.page
    web.get("/audit")
    forged = kept.replace(kept.splitlines()[2], "A" * 43 + "=")
    assert web.post("/audit/consistency", {"checkpoint": forged}).status_code == 422


@pytest.mark.requirement("R-WEB-3")
def test_the_stylesheet_is_served_from_this_site(web):
    web.get("/sign-in")
    assert 'href="/assets/sealroom.css"' in web.page
    sheet = web.client.get("/assets/sealroom.css")
    assert sheet.status_code == 200 and sheet.mimetype == "text/css"
    assert ":focus-visible" in sheet.get_data(as_text=True)
    assert "@media print" in sheet.get_data(as_text=True)
