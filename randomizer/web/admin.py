"""Admin pages: blinded users (create, deactivate, reset the password; never a
statistician), each change signed with the admin's own password; the notification outbox."""

from __future__ import annotations

from typing import Any

from flask import request
from flask_babel import gettext

from randomizer import roles
from randomizer.errors import Problem, ValidationFailed
from randomizer.models import OUTBOX_PENDING, OUTBOX_STATUSES
from randomizer.schemas import NotificationSchema
from randomizer.services import outbox
from randomizer.services.users import (
    Signature,
    add_user,
    deactivate_user,
    list_users,
    set_password,
    signature_record,
)
from randomizer.state import app_state
from randomizer.web.base import N_, bp, current_actor, field_errors, page, signed, signed_in

#: What each form's signature means, recorded in the audit entry with who and when.
MEANINGS = {
    "add": N_("I create this user with this role."),
    "deactivate": N_("I deactivate this user."),
    "password": N_("I set this user's new password."),
}


@bp.route("/admin/users", methods=["GET", "POST"])
@signed_in(roles.MANAGE_USERS)
def users() -> Any:
    """Every user; forms to add one, deactivate one or set one's password."""
    state, actor = app_state(), current_actor()
    assert actor is not None
    done = errors = refusal = None
    if request.method == "POST":
        what = request.form.get("action", "")
        name = request.form.get("name", "").strip()
        meaning = MEANINGS.get(what, "")

        def act(signature: Signature) -> None:
            with state.db.transaction() as session:
                record = signature_record(session, state.ctx, actor, signature)
                if what == "add":
                    add_user(
                        session,
                        state.ctx,
                        actor,
                        name,
                        request.form.get("role", ""),
                        request.form.get("site", "").strip() or None,
                        request.form.get("email", "").strip() or None,
                        signature=record,
                    )
                    set_password(
                        session, state.ctx, actor, name, request.form.get("new_password", "")
                    )
                elif what == "deactivate":
                    deactivate_user(session, state.ctx, actor, name, signature=record)
                elif what == "password":
                    set_password(
                        session,
                        state.ctx,
                        actor,
                        name,
                        request.form.get("new_password", ""),
                        signature=record,
                    )
                else:
                    raise Problem("Unknown action.")

        try:
            signed(meaning, act)
            done = f"{gettext(meaning)} ({name})"
        except Problem as problem:
            errors, refusal = field_errors(problem), problem
    with state.db.reading() as session:
        listing = list_users(session, actor)
    roles_offered = [role for role in roles.ROLES if role not in roles.UNBLINDED_ROLES]
    return page(
        "users.html",
        refusal.status if refusal is not None else 200,
        users=listing,
        roles_offered=roles_offered,
        done=done,
        errors=errors or {},
        refusal=refusal,
    )


@bp.get("/admin/outbox")
@signed_in(roles.READ_NOTIFICATIONS)
def outbox_page() -> Any:
    """Notifications by status (default: not delivered yet), oldest first; never an arm."""
    status = request.args.get("status", OUTBOX_PENDING)
    if status not in (*OUTBOX_STATUSES, "all"):
        raise ValidationFailed({"status": [f"One of: {', '.join(OUTBOX_STATUSES)}, all."]})
    shown = NotificationSchema().fields
    with app_state().db.reading() as session:
        messages = [
            {name: getattr(row, name) for name in shown}
            for row in outbox.listed(session, None if status == "all" else status)
        ]
    return page("outbox.html", messages=messages, status=status, statuses=OUTBOX_STATUSES)
