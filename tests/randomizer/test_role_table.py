"""URS §8's role table, endpoint by endpoint, as every role (R-ROLE).

:data:`ROWS` is URS §8's table as far as its endpoints are built: each row names the route,
the :class:`randomizer.roles.Permission` that guards it, the roles URS §8's "who" column
names (written out here, not read from :mod:`randomizer.roles`, so that a permission that
strays from the specification is caught), and a valid request. The table test calls every
route as one demo user of every role, and without a token: a role the row does not allow
gets 403 with exactly :func:`randomizer.roles.role_refusal`'s detail; an allowed role is
never refused by role, and since the requests are valid (site roles act at their own site,
101; an action that succeeds only once has a target per allowed role; the scene moves the
clock so that a dispensing visit is in its window), it succeeds. A route registered under
``/api/v1`` without a row fails the last test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from randomizer import roles
from randomizer.models import AuditEntry
from randomizer.roles import (
    ADMIN,
    AUDITOR,
    COORDINATOR,
    INVESTIGATOR,
    MEDICAL_MONITOR,
    PHARMACIST,
    SPONSOR,
    STATISTICIAN,
    Permission,
    role_refusal,
)

#: One demo user per role; the site roles' users all belong to site 101.
USERS = {
    COORDINATOR: "coordinator-101",
    INVESTIGATOR: "investigator-101",
    PHARMACIST: "pharmacist-101",
    MEDICAL_MONITOR: "medical-monitor",
    SPONSOR: "sponsor",
    STATISTICIAN: "statistician",
    AUDITOR: "auditor",
    ADMIN: "admin",
}
SITE = "101"
EVERY_ROLE = frozenset(roles.ROLES)
SITE_ROLES = frozenset({COORDINATOR, INVESTIGATOR, PHARMACIST})


def dashed(role: str) -> str:
    """A role's name as part of a screening number (``A-Z a-z 0-9 -`` only)."""
    return role.replace("_", "-")


#: URS §8's (and issue 11's) "who" of the rows whose every allowed role needs a target of
#: its own: an action that can succeed only once on a target.
DISPENSERS = frozenset({COORDINATOR, INVESTIGATOR, PHARMACIST})
LIFECYCLE_CHANGERS = frozenset({COORDINATOR, INVESTIGATOR})  # withdraw, discontinue
CORRECTORS = frozenset({ADMIN})  # flag-error, correct-stratum


@dataclass(frozen=True)
class Scene:
    """What the requests refer to, set before the first of them."""

    participant: str  # a participant of site 101, screened but not randomised
    randomised: str  # a participant of site 101, randomised
    kit: str  # a kit of site 101, allocated (to ``randomised``)
    index: int  # an audit entry about site 101
    size: int  # the audit log's size then
    shipment: int = 0  # a shipment to site 101, in transit
    shipment_kits: tuple[str, ...] = ()
    request: int = 0  # a resupply request for site 101
    stock_kit: str = ""  # a kit available at site 101
    held_kit: str = ""  # a kit quarantined at site 101

    @staticmethod
    def to_screen(role: str) -> str:
        return f"101-SCR-{dashed(role)}"

    @staticmethod
    def to_randomize(role: str) -> str:
        return f"101-RND-{dashed(role)}"

    @staticmethod
    def to_dispense(role: str) -> str:
        """Randomised 28 days before the scene's today: its week5 window is open."""
        return f"101-DSP-{dashed(role)}"

    @staticmethod
    def to_withdraw(role: str) -> str:
        return f"101-WDR-{dashed(role)}"

    @staticmethod
    def to_discontinue(role: str) -> str:
        return f"101-DSC-{dashed(role)}"

    @staticmethod
    def to_flag(role: str) -> str:
        return f"101-FLG-{dashed(role)}"

    @staticmethod
    def to_correct(role: str) -> str:
        """Randomised with ``prior_ig`` "no": the correction says "yes"."""
        return f"101-COR-{dashed(role)}"


Call = Callable[[Any, str | None, Scene], Any]


@dataclass(frozen=True)
class Row:
    """One row of URS §8's table: a route, its permission, who may call it, a valid call."""

    method: str
    rule: str  # as Flask's url_map spells it
    permission: Permission | None  # None: no token needed
    who: frozenset[str] | None  # URS §8's "who"; None: anyone, without a token
    succeeds_with: int
    call: Call

    def __str__(self) -> str:
        return f"{self.method} {self.rule}"


def _role_of(user: str | None) -> str:
    return next((r for r, u in USERS.items() if u == user), "nobody")


def _screen(api: Any, user: str | None, scene: Scene) -> Any:
    return api.screen(Scene.to_screen(_role_of(user)), user=user, site=SITE)


def _randomize(api: Any, user: str | None, scene: Scene) -> Any:
    return api.randomize(Scene.to_randomize(_role_of(user)), user=user)


def _dispense(api: Any, user: str | None, scene: Scene) -> Any:
    return api.post(
        f"/participants/{Scene.to_dispense(_role_of(user))}/dispense",
        user,
        json={"visit": "week5", "weight_kg": 70},
    )


def _participant_change(path: str, target: Callable[[str], str], body: dict[str, Any]) -> Call:
    def call(api: Any, user: str | None, scene: Scene) -> Any:
        return api.post(f"/participants/{target(_role_of(user))}/{path}", user, json=body)

    return call


ROWS = (
    Row("GET", "/api/v1/health", None, None, 200, lambda api, user, s: api.get("/health", user)),
    Row(
        "GET",
        "/api/v1/trial",
        roles.READ_TRIAL,
        EVERY_ROLE,  # "any user"
        200,
        lambda api, user, s: api.get("/trial", user),
    ),
    Row(
        "POST",
        "/api/v1/participants",
        roles.SCREEN,
        frozenset({COORDINATOR, INVESTIGATOR}),
        201,
        _screen,
    ),
    Row(
        "GET",
        "/api/v1/participants/<string:screening_number>",
        roles.READ_PARTICIPANT,
        SITE_ROLES | {MEDICAL_MONITOR, SPONSOR},  # "site roles of its site, medical_monitor, …"
        200,
        lambda api, user, s: api.get(f"/participants/{s.participant}", user),
    ),
    Row(
        "POST",
        "/api/v1/participants/<string:screening_number>/randomize",
        roles.RANDOMIZE,
        frozenset({COORDINATOR, INVESTIGATOR}),
        201,
        _randomize,
    ),
    Row(
        "POST",
        "/api/v1/participants/<string:screening_number>/unblind",
        roles.UNBLIND,
        frozenset({INVESTIGATOR, MEDICAL_MONITOR}),  # "investigator (own site), medical_monitor"
        200,
        lambda api, user, s: api.post(
            f"/participants/{s.randomised}/unblind",
            user,
            json={"reason": "serious_adverse_event", "event_reference": "SAE-ROLES"},
        ),
    ),
    Row(
        "GET",
        "/api/v1/unblindings",
        roles.READ_UNBLINDINGS,
        frozenset({STATISTICIAN, SPONSOR, MEDICAL_MONITOR, AUDITOR}),  # R-UNB-3
        200,
        lambda api, user, s: api.get("/unblindings", user),
    ),
    Row(
        "GET",
        "/api/v1/notifications",
        roles.READ_NOTIFICATIONS,
        frozenset({ADMIN}),  # the emergency unblinding issue: "listed for the admin"
        200,
        lambda api, user, s: api.get("/notifications", user),
    ),
    Row(
        "GET",
        "/api/v1/audit/checkpoint",
        roles.READ_CHECKPOINT,
        EVERY_ROLE,  # "any authenticated user"
        200,
        lambda api, user, s: api.get("/audit/checkpoint", user),
    ),
    Row(
        "GET",
        "/api/v1/audit/key-hand-overs",
        roles.READ_CHECKPOINT,
        EVERY_ROLE,  # issue 15: a monitor with any user's token follows a signing rotation
        200,
        lambda api, user, s: api.get("/audit/key-hand-overs", user),
    ),
    Row(
        "GET",
        "/api/v1/audit/verifier-key",
        None,
        None,
        200,
        lambda api, user, s: api.get("/audit/verifier-key", user),
    ),
    Row(
        "GET",
        "/api/v1/audit/entries",
        roles.READ_AUDIT_ENTRIES,
        frozenset({AUDITOR}),
        200,
        lambda api, user, s: api.get(f"/audit/entries?start=0&end={s.size}", user),
    ),
    Row(
        "GET",
        "/api/v1/audit/proof/inclusion",
        roles.PROVE_INCLUSION,
        SITE_ROLES | {AUDITOR},  # "auditor; site roles for entries about their own site's …"
        200,
        lambda api, user, s: api.get(f"/audit/proof/inclusion?index={s.index}&size={s.size}", user),
    ),
    Row(
        "GET",
        "/api/v1/audit/proof/consistency",
        roles.PROVE_CONSISTENCY,
        EVERY_ROLE,  # "any authenticated user"
        200,
        lambda api, user, s: api.get(f"/audit/proof/consistency?first=1&second={s.size}", user),
    ),
    Row(
        "POST",
        "/api/v1/participants/<string:screening_number>/dispense",
        roles.DISPENSE,
        DISPENSERS,  # "coordinator, investigator, pharmacist"
        201,
        _dispense,
    ),
    Row(
        "POST",
        "/api/v1/kits/<string:kit_number>/status",
        roles.CHANGE_KIT_STATUS,
        frozenset({PHARMACIST}),  # "pharmacist"
        200,
        lambda api, user, s: api.post(
            f"/kits/{s.kit}/status", user, json={"status": "dispensed", "reason": "handed over"}
        ),
    ),
    Row(
        "GET",
        "/api/v1/kits/<string:kit_number>",
        roles.READ_KIT,
        frozenset({PHARMACIST, ADMIN}),  # issue 11: "the site's pharmacist, admin"
        200,
        lambda api, user, s: api.get(f"/kits/{s.kit}", user),
    ),
    Row(
        "GET",
        "/api/v1/sites/<string:site>/inventory",
        roles.READ_INVENTORY,
        frozenset({PHARMACIST, ADMIN}),  # "pharmacist, admin"
        200,
        lambda api, user, s: api.get(f"/sites/{SITE}/inventory", user),
    ),
    Row(
        "POST",
        "/api/v1/participants/<string:screening_number>/withdraw",
        roles.CHANGE_PARTICIPANT_STATUS,
        LIFECYCLE_CHANGERS,  # issue 11: "coordinator, investigator; with a reason"
        200,
        _participant_change("withdraw", Scene.to_withdraw, {"reason": "consent withdrawn"}),
    ),
    Row(
        "POST",
        "/api/v1/participants/<string:screening_number>/discontinue",
        roles.CHANGE_PARTICIPANT_STATUS,
        LIFECYCLE_CHANGERS,  # issue 11: "coordinator, investigator; with a reason"
        200,
        _participant_change("discontinue", Scene.to_discontinue, {"reason": "adverse event"}),
    ),
    Row(
        "POST",
        "/api/v1/participants/<string:screening_number>/flag-error",
        roles.CORRECT_PARTICIPANT,
        CORRECTORS,  # issue 11, R-FIX: "admin, reason"
        200,
        _participant_change("flag-error", Scene.to_flag, {"reason": "not eligible"}),
    ),
    Row(
        "POST",
        "/api/v1/participants/<string:screening_number>/correct-stratum",
        roles.CORRECT_PARTICIPANT,
        CORRECTORS,  # issue 11, R-FIX: "admin, reason, the right screening factors"
        200,
        _participant_change(
            "correct-stratum",
            Scene.to_correct,
            {"strata": {"prior_ig": "yes"}, "reason": "prior IVIG found in the records"},
        ),
    ),
    Row(
        "GET",
        "/api/v1/reports/enrollment",
        roles.REPORT_ENROLLMENT,
        frozenset({SPONSOR, ADMIN, STATISTICIAN}),  # "sponsor, admin, statistician"
        200,
        lambda api, user, s: api.get("/reports/enrollment", user),
    ),
    Row(
        "GET",
        "/api/v1/reports/balance",
        roles.REPORT_BALANCE,
        frozenset({STATISTICIAN}),  # "statistician"
        200,
        lambda api, user, s: api.get("/reports/balance", user),
    ),
    Row(
        "GET",
        "/api/v1/allocations",
        roles.READ_ALLOCATIONS,
        frozenset({STATISTICIAN}),  # "statistician"
        200,
        lambda api, user, s: api.get("/allocations", user),
    ),
    Row(
        "GET",
        "/api/v1/exports/dm",
        roles.EXPORT_DM,
        frozenset({STATISTICIAN}),  # issue 14: "(statistician)"
        200,
        lambda api, user, s: api.get("/exports/dm", user),
    ),
)

ROWS += (
    Row(
        "GET",
        "/api/v1/shipments",
        roles.READ_SHIPMENTS,
        frozenset({PHARMACIST, ADMIN}),  # issue 12: the site's pharmacist, admin
        200,
        lambda api, user, s: api.get("/shipments", user),
    ),
    Row(
        "POST",
        "/api/v1/shipments",
        roles.MANAGE_SHIPMENTS,
        frozenset({ADMIN}),  # URS §1: admin manages shipments
        201,
        lambda api, user, s: api.post("/shipments", user, json={"site": SITE, "count": 2}),
    ),
    Row(
        "GET",
        "/api/v1/shipments/<string:shipment_id>",
        roles.READ_SHIPMENTS,
        frozenset({PHARMACIST, ADMIN}),
        200,
        lambda api, user, s: api.get(f"/shipments/{s.shipment}", user),
    ),
    Row(
        "POST",
        "/api/v1/shipments/<string:shipment_id>/dispatch",
        roles.MANAGE_SHIPMENTS,
        frozenset({ADMIN}),
        200,
        lambda api, user, s: api.post(f"/shipments/{s.request}/dispatch", user),
    ),
    Row(
        "POST",
        "/api/v1/shipments/<string:shipment_id>/receive",
        roles.RECEIVE_SHIPMENT,
        frozenset({PHARMACIST}),  # URS §1: the pharmacist receives shipments
        200,
        lambda api, user, s: api.post(
            f"/shipments/{s.shipment}/receive",
            user,
            json={"kits": dict.fromkeys(s.shipment_kits, "available")},
        ),
    ),
    Row(
        "POST",
        "/api/v1/kits/<string:kit_number>/quarantine",
        roles.QUARANTINE_KITS,
        frozenset({ADMIN}),  # issue 12: "an admin quarantines and releases kits"
        200,
        lambda api, user, s: api.post(
            f"/kits/{s.stock_kit}/quarantine", user, json={"reason": "excursion"}
        ),
    ),
    Row(
        "POST",
        "/api/v1/kits/<string:kit_number>/release",
        roles.QUARANTINE_KITS,
        frozenset({ADMIN}),
        200,
        lambda api, user, s: api.post(
            f"/kits/{s.held_kit}/release", user, json={"reason": "within range"}
        ),
    ),
    Row(
        "GET",
        "/api/v1/reports/supply",
        roles.REPORT_SUPPLY,
        frozenset({STATISTICIAN}),  # issue 12: "the statistician gets the same by arm"
        200,
        lambda api, user, s: api.get("/reports/supply", user),
    ),
)

#: URS §8's rows whose endpoints are not built yet: their permissions are held to the
#: specification already, so the endpoints start out with the right roles.
UNBUILT: dict[Permission, frozenset[str]] = {}


def set_scene(api: Any, db: Any) -> Scene:
    """At site 101: randomise one participant per dispensing role, then move the clock 28
    days on (week5's window opens); then screen the participant to read and one to
    randomise per role, and randomise one to unblind (whose first kit is the kit to change
    and read), one to withdraw and one to discontinue per role that may, and one to flag
    and one to correct per role that may."""

    def randomise(number: str) -> Any:
        response = api.screen_and_randomize(number, user=USERS[COORDINATOR], site=SITE)
        assert response.status_code == 201, response.get_json()
        return response

    for role in DISPENSERS:
        randomise(Scene.to_dispense(role))
    api.clock.advance(days=28)
    for number in ["101-READ", *(Scene.to_randomize(role) for role in roles.ROLES)]:
        response = api.screen(number, user=USERS[COORDINATOR], site=SITE)
        assert response.status_code == 201, response.get_json()
    kit = randomise("101-UNBLIND").get_json()["kits"][0]
    for role in LIFECYCLE_CHANGERS:
        randomise(Scene.to_withdraw(role))
        randomise(Scene.to_discontinue(role))
    for role in CORRECTORS:
        randomise(Scene.to_flag(role))
        randomise(Scene.to_correct(role))
    depot = _depot_scene(api, db)
    with db.reading() as session:
        index = session.scalar(select(func.max(AuditEntry.seq)).where(AuditEntry.site_id == SITE))
        size = session.scalar(select(func.count()).select_from(AuditEntry))
    return Scene(
        participant="101-READ",
        randomised="101-UNBLIND",
        kit=kit,
        index=index,
        size=size,
        **depot,
    )


def _depot_scene(api: Any, db: Any) -> dict[str, Any]:
    """Depot stock, a shipment to site 101 in transit, a resupply request for it, a kit in
    stock there and one quarantined."""
    from randomizer.domain.supply import KitGeneration
    from randomizer.models import Kit, Shipment
    from randomizer.roles import SYSTEM
    from randomizer.services import shipments
    from randomizer.state import app_state

    with api.client.application.app_context():
        ctx = app_state().ctx
    expiry = ctx.today() + timedelta(days=500)
    # The kits to quarantine and release expire long after the site's other stock, so no
    # randomisation or dispensing of another row ever takes them (earliest expiry first).
    latest = ctx.today() + timedelta(days=3000)
    for lot, count, expires_on in (("L-ROLES", 40, expiry), ("L-HOLD", 4, latest)):
        with db.transaction() as session:
            shipments.generate_kits(session, ctx, SYSTEM, KitGeneration(lot, count, expires_on))
    hold = api.post("/shipments", USERS[ADMIN], json={"site": SITE, "lot": "L-HOLD"}).get_json()
    received = api.post(
        f"/shipments/{hold['id']}/receive",
        USERS[PHARMACIST],
        json={"kits": dict.fromkeys(hold["kits"], "available")},
    )
    assert received.status_code == 200, received.get_json()
    shipped = api.post("/shipments", USERS[ADMIN], json={"site": SITE, "count": 2}).get_json()
    with db.transaction() as session:
        request = Shipment(
            site_id=SITE,
            status="requested",
            origin="resupply",
            created_at=ctx.clock(),
            created_by="system",
        )
        session.add(request)
        session.flush()
        request_id = request.id
        stock_kit, held_kit = session.scalars(
            select(Kit.kit_number)
            .where(Kit.site_id == SITE, Kit.status == "available", Kit.lot == "L-HOLD")
            .order_by(Kit.kit_number)
            .limit(2)
        )
    held = api.post(f"/kits/{held_kit}/quarantine", USERS[ADMIN], json={"reason": "excursion"})
    assert held.status_code == 200, held.get_json()
    return {
        "shipment": shipped["id"],
        "shipment_kits": tuple(shipped["kits"]),
        "request": request_id,
        "stock_kit": stock_kit,
        "held_kit": held_kit,
    }


def problem_detail(response: Any) -> str | None:
    if response.mimetype != "application/problem+json":
        return None
    return response.get_json().get("detail")


def judge(row: Row, role: str | None, response: Any) -> str | None:
    """What is wrong with this answer of this row to this role (None: token-less), if anything."""
    status, detail = response.status_code, problem_detail(response)
    answer = f"{status} {detail!r}"
    if row.permission is None:
        if status != row.succeeds_with:
            return f"needs no token, yet answered {answer}"
        return None
    if role is None:
        return None if status == 401 else f"answered {answer} without a token"
    refusal = role_refusal(role, row.permission.does)
    if role not in row.who:
        if status != 403 or detail != refusal:
            return f"should refuse by role ({refusal!r}) but answered {answer}"
        if response.get_json()["type"] != "/problems/forbidden":
            return f"refused by role with type {response.get_json()['type']!r}"
        return None
    if detail == refusal:
        return f"refused by role although URS §8 allows it: {answer}"
    if status != row.succeeds_with:
        return f"allowed, and the request is valid, yet answered {answer}"
    return None


@pytest.mark.requirement("R-ROLE")
def test_every_role_may_call_exactly_the_endpoints_urs_8_gives_it(api, db):
    assert set(USERS) == set(roles.ROLES), "every role needs a demo user in USERS"
    scene = set_scene(api, db)
    wrong = []

    for row in ROWS:
        for role in [*roles.ROLES, None]:
            user = None if role is None else USERS[role]
            problem = judge(row, role, row.call(api, user, scene))
            if problem is not None:
                wrong.append(f"{row} as {role or 'no token'}: {problem}")

    assert not wrong, "\n".join(wrong)


@pytest.mark.requirement("R-ROLE")
def test_each_permission_allows_the_roles_its_row_of_urs_8_names():
    table = {row.permission: row.who for row in ROWS if row.permission is not None}
    assert not table.keys() & UNBUILT.keys()

    for permission, who in {**table, **UNBUILT}.items():
        assert permission.roles == who, permission.does


def api_routes(app: Flask) -> set[tuple[str, str]]:
    """Every (method, rule) under ``/api/v1`` but the OpenAPI document."""
    return {
        (method, rule.rule)
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/api/v1/") and rule.rule != "/api/v1/openapi.json"
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }


@pytest.mark.requirement("R-ROLE")
def test_every_api_route_has_a_row_in_the_role_table(app):
    assert api_routes(app) == {(row.method, row.rule) for row in ROWS}


@pytest.mark.requirement("R-ROLE")
def test_a_route_without_a_row_would_be_noticed(app):
    app.add_url_rule("/api/v1/shipments/<shipment>", "planted", lambda: "", methods=["POST"])

    assert ("POST", "/api/v1/shipments/<shipment>") in api_routes(app)
    assert api_routes(app) != {(row.method, row.rule) for row in ROWS}
