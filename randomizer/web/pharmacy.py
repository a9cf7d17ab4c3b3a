"""Pharmacist pages: the site's inventory by status and expiry (never by arm), a kit and its
status changes (damaged, lost, returned, dispensed) with the replacement it was given."""

from __future__ import annotations

from typing import Any

from flask import redirect, request, url_for
from sqlalchemy.orm import Session

from randomizer import roles
from randomizer.domain.kits import KIT_STATUSES
from randomizer.errors import Problem, ValidationFailed
from randomizer.schemas import KitStatusChangeSchema
from randomizer.services.dispensing import (
    KIT_PAGE,
    change_kit_status,
    kit_status_refusal,
    kit_view,
    site_inventory,
    site_kits,
)
from randomizer.state import app_state
from randomizer.web.base import (
    bp,
    current_actor,
    form_submission,
    form_with_refusal,
    new_form_key,
    once,
    outcome_page,
    page,
    signed_in,
)


@bp.get("/inventory")
@signed_in(roles.READ_INVENTORY)
def inventory() -> Any:
    """The pharmacist's site (or, for an admin, the site asked for): counts and kits."""
    state, actor = app_state(), current_actor()
    assert actor is not None
    site = actor.site or request.args.get("site", "")
    status = request.args.get("status") or None
    if status is not None and status not in KIT_STATUSES:
        raise ValidationFailed({"status": [f"One of: {', '.join(KIT_STATUSES)}."]})
    number = request.args.get("page", "0")
    page_number = int(number) if number.isdigit() and len(number) < 7 else 0
    with state.db.reading() as session:
        counts = site_inventory(session, state.ctx, actor, site)
        kits = site_kits(session, state.ctx, actor, site, status, page_number)
    return page(
        "inventory.html",
        inventory=counts,
        kits=kits,
        status=status,
        page_number=page_number,
        more=len(kits) == KIT_PAGE,
        statuses=KIT_STATUSES,
    )


@bp.route("/kits/<kit_number>", methods=["GET", "POST"])
@signed_in(roles.READ_KIT)
def kit(kit_number: str) -> Any:
    """One kit; the pharmacist marks it damaged, lost, returned or dispensed."""
    state, actor = app_state(), current_actor()
    assert actor is not None
    with state.db.reading() as session:
        view = kit_view(session, actor, kit_number)
    if request.method == "GET":
        return page("kit.html", kit=view, form_key=new_form_key(), errors={})
    body = {"status": request.form.get("status", ""), "reason": request.form.get("reason", "")}
    submission = form_submission(state.schemas.kit_status(), body)

    def act(session: Session) -> tuple[int, dict[str, Any]]:
        change = change_kit_status(session, state.ctx, actor, kit_number, submission)
        return 201, KitStatusChangeSchema().dump(change)

    try:
        outcome = once("web.kits.status", actor, act, kit_status_refusal(kit_number))
    except Problem as problem:
        return form_with_refusal("kit.html", problem, kit=view)

    def changed(answer: dict[str, Any]) -> Any:
        with state.db.reading() as session:
            view = kit_view(session, actor, kit_number)
        return page("kit.html", kit=view, form_key=new_form_key(), errors={}, changed=answer)

    return outcome_page(outcome, changed)


@bp.get("/kits")
@signed_in(roles.READ_KIT)
def kit_lookup() -> Any:
    """The kit number typed in the inventory's form: its page."""
    return redirect(url_for("web.kit", kit_number=request.args.get("kit_number", "").strip()[:16]))
