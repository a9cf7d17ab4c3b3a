"""The shipment and report pages through Flask's test client (R-WEB-1, R-WEB-2, R-SHIP,
R-REP-1, R-REP-2, R-REP-4): the same services as the API, the same refusals, no arm on a
blinded page."""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from randomizer.models import AuditEntry, Kit, Shipment
from tests.randomizer.test_blinding import names_an_arm
from tests.randomizer.test_shipments import (
    generate,
    kits_where,
    leave_per_arm,
    screen_and_randomize_102,
)
from tests.randomizer.test_web import body_without_trial_title
from tests.randomizer.web_client import CSRF, WebClient


@pytest.fixture
def web(app: Any, trial_db: Any) -> WebClient:
    return WebClient(app.test_client(), trial_db.passwords)


def other(app: Any, trial_db: Any, user: str) -> WebClient:
    client = WebClient(app.test_client(), trial_db.passwords)
    client.sign_in(user)
    return client


def stock_depot(db: Any, ctx: Any, lot: str = "L-WEB-1", count: int = 40) -> list[str]:
    return generate(db, ctx, lot, count, ctx.today() + timedelta(days=500))


def send(web: WebClient, **form: str) -> Any:
    web.get("/shipments")
    return web.post("/shipments", form)


def created_id(page: str) -> int:
    """The new shipment's id, as the page links to it."""
    return int(page.split('id="created">', 1)[1].split('href="/shipments/', 1)[1].split('"')[0])


def shipment_kits(db: Any, shipment: int) -> list[str]:
    return sorted(k.kit_number for k in kits_where(db, Kit.shipment_id == shipment))


def audited(db: Any, action: str) -> list[dict[str, Any]]:
    with db.reading() as session:
        rows = session.scalars(
            select(AuditEntry.canonical).where(AuditEntry.action == action).order_by(AuditEntry.seq)
        )
        return [json.loads(row) for row in rows]


def error_beside(page: str, field: str) -> str:
    """The message shown beside ``field`` (its ``<field>-error`` paragraph)."""
    marker = f'id="{field.replace(".", "-")}-error">'
    assert marker in page, f"no error beside {field}"
    return page.split(marker, 1)[1].split("<", 1)[0]


@pytest.mark.requirement("R-WEB-1")
@pytest.mark.parametrize(
    ("user", "path", "status"),
    [
        ("pharmacist-101", "/shipments", 200),
        ("admin", "/shipments", 200),
        ("coordinator-101", "/shipments", 403),
        ("sponsor", "/shipments", 403),
        ("statistician", "/shipments", 403),
        ("admin", "/admin/quarantine", 200),
        ("pharmacist-101", "/admin/quarantine", 403),
        ("sponsor", "/reports/enrollment", 200),
        ("admin", "/reports/enrollment", 200),
        ("statistician", "/reports/enrollment", 200),
        ("coordinator-101", "/reports/enrollment", 403),
        ("pharmacist-101", "/reports/enrollment", 403),
        ("auditor", "/reports/enrollment", 403),
        ("statistician", "/reports/balance", 200),
        ("statistician", "/reports/supply", 200),
        ("sponsor", "/reports/balance", 403),
        ("admin", "/reports/balance", 403),
        ("admin", "/reports/supply", 403),
        ("medical-monitor", "/reports/supply", 403),
        ("sponsor", "/reports/pictures/enrollment.svg", 200),
        ("sponsor", "/reports/pictures/screen-failures.svg", 200),
        ("sponsor", "/reports/pictures/balance.svg", 403),
        ("statistician", "/reports/pictures/balance.svg", 200),
        ("coordinator-101", "/reports/pictures/enrollment.svg", 403),
        ("statistician", "/reports/pictures/no-such.svg", 404),
    ],
)
def test_each_role_reaches_its_shipment_and_report_pages_and_is_refused_the_others(
    web, user, path, status
):
    web.sign_in(user)
    assert web.get(path).status_code == status


@pytest.mark.requirement("R-WEB-1")
@pytest.mark.requirement("R-SHIP")
@pytest.mark.requirement("R-BLIND-1")
def test_admin_sends_a_shipment_and_the_pharmacist_receives_it_with_one_kit_damaged(
    web, app, trial_db, db, ctx
):
    stock_depot(db, ctx)
    web.sign_in("admin")
    sent = send(web, site="102", count="10")
    assert sent.status_code == 201, web.page
    shipment = created_id(web.page)
    kits = shipment_kits(db, shipment)
    assert len(kits) == 10
    assert not names_an_arm(body_without_trial_title(web.page))

    pharmacist = other(app, trial_db, "pharmacist-102")
    pharmacist.get("/shipments")
    assert f'href="/shipments/{shipment}"' in pharmacist.page
    assert not names_an_arm(body_without_trial_title(pharmacist.page))
    # Another site's pharmacist sees nothing of it and cannot receive it.
    stranger = other(app, trial_db, "pharmacist-101")
    stranger.get("/shipments")
    assert f'href="/shipments/{shipment}"' not in stranger.page
    assert stranger.get(f"/shipments/{shipment}").status_code == 404

    assert pharmacist.get(f"/shipments/{shipment}").status_code == 200
    assert not names_an_arm(body_without_trial_title(pharmacist.page))
    for kit in kits:
        assert f'name="kits.{kit}" value="damaged"' in pharmacist.page
    receipt = {f"kits.{kit}": "available" for kit in kits} | {f"kits.{kits[3]}": "damaged"}
    received = pharmacist.post(f"/shipments/{shipment}/receive", receipt)
    assert received.status_code == 200, pharmacist.page
    assert 'id="shipment-status">received<' in pharmacist.page
    assert "9 available" in pharmacist.page and "1 damaged" in pharmacist.page
    assert not names_an_arm(body_without_trial_title(pharmacist.page))
    statuses = {k.kit_number: k.status for k in kits_where(db, Kit.shipment_id == shipment)}
    assert statuses == {kit: receipt[f"kits.{kit}"] for kit in kits}
    (entry,) = [e for e in audited(db, "shipment.received") if e["subject"] == str(shipment)]
    assert entry["actor"] == "pharmacist-102" and entry["data"]["kits"][kits[3]] == "damaged"
    # The inventory page shows the received kits (no arm there either).
    pharmacist.get("/inventory")
    assert kits[0] in pharmacist.page or "damaged" in pharmacist.page


@pytest.mark.requirement("R-WEB-1")
@pytest.mark.requirement("R-SHIP")
def test_a_receipt_missing_a_kit_is_refused_beside_the_kits_and_changes_nothing(
    web, app, trial_db, db, ctx
):
    stock_depot(db, ctx)
    admin = other(app, trial_db, "admin")
    assert send(admin, site="102", count="4").status_code == 201
    shipment = created_id(admin.page)
    kits = shipment_kits(db, shipment)
    web.sign_in("pharmacist-102")
    web.get(f"/shipments/{shipment}")
    partial = {f"kits.{number}": "available" for number in kits[1:]}
    refused = web.post(f"/shipments/{shipment}/receive", partial)
    assert refused.status_code == 422
    assert kits[0] in error_beside(web.page, "kits")
    # The form comes back with the answers given, checked again.
    assert f'name="kits.{kits[1]}" value="available" required checked' in web.page
    bad = web.post(
        f"/shipments/{shipment}/receive",
        {f"kits.{number}": "available" for number in kits} | {f"kits.{kits[2]}": "broken"},
    )
    assert bad.status_code == 422
    assert error_beside(web.page, f"kits.{kits[2]}")
    assert {k.status for k in kits_where(db, Kit.shipment_id == shipment)} == {"in_transit"}
    assert audited(db, "shipment.receive_refused")
    # An admin may not receive: refused by the service, and audited as a refusal.
    admin.get(f"/shipments/{shipment}")
    assert 'name="kits.' not in admin.page
    forced = admin.post(
        f"/shipments/{shipment}/receive", {f"kits.{number}": "available" for number in kits}
    )
    assert forced.status_code == 403
    assert any(e["actor"] == "admin" for e in audited(db, "shipment.receive_refused"))


@pytest.mark.requirement("R-WEB-1")
@pytest.mark.requirement("R-SHIP")
def test_a_double_clicked_receipt_acts_once_and_a_second_receipt_is_refused(
    web, app, trial_db, db, ctx
):
    stock_depot(db, ctx)
    admin = other(app, trial_db, "admin")
    assert send(admin, site="102", count="2").status_code == 201
    shipment = created_id(admin.page)
    kits = shipment_kits(db, shipment)
    web.sign_in("pharmacist-102")
    web.get(f"/shipments/{shipment}")
    form = {f"kits.{number}": "available" for number in kits}
    form |= {"csrf_token": web.csrf(), "form_key": web.form_key()}
    first = web.client.post(f"/shipments/{shipment}/receive", data=form)
    again = web.client.post(f"/shipments/{shipment}/receive", data=form)
    assert first.status_code == again.status_code == 200
    # The first result shown again (less the signed CSRF token, whose time may differ).
    assert CSRF.sub("", first.get_data(as_text=True)) == CSRF.sub("", again.get_data(as_text=True))
    assert [e["subject"] for e in audited(db, "shipment.received")].count(str(shipment)) == 1
    web.get(f"/shipments/{shipment}")
    assert 'name="kits.' not in web.page  # received: no form any more
    late = web.post(f"/shipments/{shipment}/receive", {k: v for k, v in form.items() if "." in k})
    assert late.status_code == 409


@pytest.mark.requirement("R-WEB-2")
def test_the_shipment_forms_refuse_a_post_without_the_csrf_token(web, app, trial_db, db, ctx):
    stock_depot(db, ctx)
    web.sign_in("admin")
    web.get("/shipments")
    assert web.post("/shipments", {"site": "102", "count": "2"}, csrf=False).status_code == 400
    assert kits_where(db, Kit.status == "in_transit") == []
    web.get("/admin/quarantine")
    number = kits_where(db, Kit.status == "in_depot")[0].kit_number
    forged = {"kit_number": number, "action": "quarantine", "reason": "excursion"}
    assert web.post("/admin/quarantine", {**forged, "csrf_token": "x"}).status_code == 400
    assert kits_where(db, Kit.kit_number == number)[0].status == "in_depot"
    assert send(web, site="102", count="2").status_code == 201
    shipment = created_id(web.page)
    pharmacist = other(app, trial_db, "pharmacist-102")
    pharmacist.get(f"/shipments/{shipment}")
    receipt = {f"kits.{number}": "available" for number in shipment_kits(db, shipment)}
    refused = pharmacist.post(f"/shipments/{shipment}/receive", receipt, csrf=False)
    assert refused.status_code == 400
    assert {k.status for k in kits_where(db, Kit.shipment_id == shipment)} == {"in_transit"}


@pytest.mark.requirement("R-WEB-1")
@pytest.mark.requirement("R-SHIP")
@pytest.mark.parametrize(
    ("form", "field", "status"),
    [
        ({"site": "999", "count": "2"}, "site", 422),
        ({"site": "102", "count": "3"}, "count", 422),  # does not split 1:1
        ({"site": "102", "count": "two"}, "count", 422),
        ({"site": "102", "lot": "NO-SUCH-LOT"}, "lot", 422),
        ({"site": "102", "count": "2", "lot": "L-WEB-1"}, "_schema", 422),
        ({"site": "102"}, "_schema", 422),
    ],
)
def test_a_wrong_shipment_is_refused_beside_its_field_and_sends_nothing(
    web, db, ctx, form, field, status
):
    stock_depot(db, ctx)
    web.sign_in("admin")
    assert send(web, **form).status_code == status
    assert error_beside(web.page, field)
    assert f'value="{form["site"]}"' in web.page  # the form comes back as it was sent
    assert kits_where(db, Kit.status == "in_transit") == []
    assert audited(db, "shipment.create_refused")


@pytest.mark.requirement("R-WEB-1")
@pytest.mark.requirement("R-SHIP")
def test_admin_ships_a_whole_lot_and_a_pharmacist_may_not_create_a_shipment(
    web, app, trial_db, db, ctx
):
    made = stock_depot(db, ctx, "L-WEB-LOT", 6)
    web.sign_in("admin")
    assert send(web, site="201", lot="L-WEB-LOT").status_code == 201
    shipment = created_id(web.page)
    assert shipment_kits(db, shipment) == sorted(made)
    assert {k.site_id for k in kits_where(db, Kit.lot == "L-WEB-LOT")} == {"201"}
    pharmacist = other(app, trial_db, "pharmacist-101")
    pharmacist.get("/shipments")
    assert 'action="/shipments"' not in pharmacist.page  # no form offered
    assert pharmacist.post("/shipments", {"site": "101", "count": "2"}).status_code == 403
    assert any(e["actor"] == "pharmacist-101" for e in audited(db, "shipment.create_refused"))


@pytest.mark.requirement("R-WEB-1")
@pytest.mark.requirement("R-SHIP")
def test_admin_dispatches_a_requested_resupply_from_the_list(web, api, db, ctx):
    levels = ctx.definition.supply.levels("102")
    stock_depot(db, ctx, "L-WEB-RS", 4 * levels.target)
    # An allocation at a site below its trigger requests a resupply (issue 12).
    leave_per_arm(db, ctx, "102", levels.trigger + 2)
    assert screen_and_randomize_102(api, "102-RS-1", weight=70).status_code == 201
    (requested,) = [e["data"]["shipment"] for e in audited(db, "shipment.requested")]
    web.sign_in("admin")
    web.get("/shipments")
    action = f'action="/shipments/{requested}/dispatch"'
    assert action in web.page
    dispatched = web.post(f"/shipments/{requested}/dispatch", {})
    assert dispatched.status_code == 200, web.page
    assert 'id="dispatched"' in web.page and action not in web.page
    with db.reading() as session:
        assert session.get(Shipment, requested).status in ("in_transit", "cancelled")
    assert not names_an_arm(body_without_trial_title(web.page))


@pytest.mark.requirement("R-WEB-1")
@pytest.mark.requirement("R-KIT-3")
def test_admin_quarantines_and_releases_a_kit_with_a_reason(web, db, ctx):
    number = stock_depot(db, ctx, "L-WEB-Q", 4)[0]
    web.sign_in("admin")
    web.get("/admin/quarantine")
    empty = web.post(
        "/admin/quarantine", {"kit_number": number, "action": "quarantine", "reason": ""}
    )
    assert empty.status_code == 422 and error_beside(web.page, "reason")
    assert kits_where(db, Kit.kit_number == number)[0].status == "in_depot"
    done = web.post(
        "/admin/quarantine",
        {"kit_number": number, "action": "quarantine", "reason": "temperature excursion"},
    )
    assert done.status_code == 200, web.page
    assert "in_depot → quarantined" in web.page
    assert kits_where(db, Kit.kit_number == number)[0].status == "quarantined"
    again = web.post(
        "/admin/quarantine", {"kit_number": number, "action": "quarantine", "reason": "twice"}
    )
    assert again.status_code == 409 and 'role="alert"' in web.page
    released = web.post(
        "/admin/quarantine",
        {"kit_number": number, "action": "release", "reason": "excursion within limits"},
    )
    assert released.status_code == 200 and "quarantined → in_depot" in web.page
    reasons = [
        e["data"]["reason"] for e in audited(db, "kit.status_changed") if e["subject"] == number
    ]
    assert reasons[-2:] == ["temperature excursion", "excursion within limits"]
    unknown = web.post(
        "/admin/quarantine", {"kit_number": "NOPE", "action": "quarantine", "reason": "x"}
    )
    assert unknown.status_code == 404


@pytest.mark.requirement("R-WEB-1")
@pytest.mark.requirement("R-REP-1")
@pytest.mark.requirement("R-REP-4")
@pytest.mark.requirement("R-BLIND-1")
@pytest.mark.parametrize("user", ["sponsor", "admin"])
def test_the_enrollment_report_page_shows_the_services_counts_and_pictures_without_an_arm(
    web, api, user
):
    for number in ("101-0001", "101-0002"):
        api.screen_and_randomize(number)
    api.screen("101-0003")
    expected = api.get("/reports/enrollment", "sponsor").get_json()
    web.sign_in(user)
    assert web.get("/reports/enrollment").status_code == 200
    body = body_without_trial_title(web.page)
    assert not names_an_arm(body)
    totals = body.split("</caption>", 1)[1].split("</table>", 1)[0]
    for value in expected["totals"].values():
        assert f"<td>{value}</td>" in totals
    for row in expected["sites"] + expected["strata"]:
        assert (row.get("site") or row["stratum"]) in body
    for name in ("enrollment", "screen-failures"):
        assert f'<img src="/reports/pictures/{name}.svg"' in body
        picture = web.client.get(f"/reports/pictures/{name}.svg")
        assert picture.status_code == 200 and picture.mimetype == "image/svg+xml"
        assert picture.get_data().lstrip().startswith((b"<?xml", b"<svg"))
        assert not names_an_arm(picture.get_data(as_text=True))
        assert "script-src" not in picture.headers["Content-Security-Policy"]
    csp = web.get("/reports/enrollment").headers["Content-Security-Policy"]
    assert "img-src 'self'" in csp and "default-src 'none'" in csp


@pytest.mark.requirement("R-WEB-1")
@pytest.mark.requirement("R-REP-2")
def test_the_statistician_reads_the_balance_and_supply_reports_with_arms(web, api, db, ctx):
    stock_depot(db, ctx, "L-WEB-S", 8)
    for number in ("101-0001", "101-0002", "101-0003"):
        api.screen_and_randomize(number)
    balance = api.get("/reports/balance", "statistician").get_json()
    web.sign_in("statistician")
    web.get("/")
    for path in ("/reports/enrollment", "/reports/balance", "/reports/supply"):
        assert f'href="{path}"' in web.page
    assert web.get("/reports/balance").status_code == 200
    assert f'id="randomized">{balance["overall"]["randomized"]}<' in web.page
    counts = Counter(balance["overall"]["counts"])
    assert sum(counts.values()) == 3
    assert '<img src="/reports/pictures/balance.svg"' in web.page
    assert web.get("/reports/supply").status_code == 200
    assert "L-WEB-S" in web.page and "IgPro20" in web.page and "Placebo" in web.page


@pytest.mark.requirement("R-WEB-1")
def test_each_role_finds_its_new_pages_from_its_home(web, app, trial_db):
    for user, paths in {
        "pharmacist-101": ["/shipments"],
        "admin": ["/shipments", "/admin/quarantine", "/reports/enrollment"],
        "sponsor": ["/reports/enrollment"],
    }.items():
        client = other(app, trial_db, user)
        client.get("/")
        for path in paths:
            assert f'href="{path}"' in client.page, (user, path)
        assert 'href="/reports/balance"' not in client.page
