"""Auditor pages: the latest checkpoint and the verifier key, entries page by page, searched
by action and subject (the same queries as the API's ``/audit`` endpoints)."""

from __future__ import annotations

import json
from typing import Any

from flask import request

from randomizer import roles
from randomizer.errors import NotFound, ValidationFailed
from randomizer.services import audit_queries
from randomizer.state import app_state
from randomizer.web.base import bp, page, signed_in

PAGE = 25


@bp.post("/audit/consistency")
@signed_in(roles.READ_AUDIT_ENTRIES)
def audit_consistency() -> Any:
    """Check that the log extends a checkpoint the auditor kept and pastes in."""
    state = app_state()
    note = request.form.get("checkpoint", "")[:4096]
    try:
        with state.db.reading() as session:
            outcome = audit_queries.check_checkpoint(session, state.ctx.audit.verifier_key, note)
    except ValidationFailed as problem:
        return page("consistency.html", 422, outcome=None, note=note, refusal=problem)
    return page("consistency.html", 200, outcome=outcome, note=note)


@bp.get("/audit")
@signed_in(roles.READ_AUDIT_ENTRIES)
def audit_entries() -> Any:
    """The checkpoint, the verifier key and a page of entries."""
    state = app_state()
    number = request.args.get("start", "0")
    start = int(number) if number.isdigit() and len(number) < 11 else 0
    action = request.args.get("action", "").strip()[:64]
    subject = request.args.get("subject", "").strip()[:64]
    with state.db.reading() as session:
        try:
            checkpoint = audit_queries.latest_checkpoint(session)
        except NotFound:
            checkpoint = ""
        lines = audit_queries.search_entries(session, start, PAGE, action, subject)
    entries = [json.loads(line) for line in lines]
    return page(
        "audit.html",
        checkpoint=checkpoint,
        verifier_key=state.ctx.audit.verifier_key.line(),
        entries=entries,
        start=start,
        next_start=entries[-1]["seq"] + 1 if len(entries) == PAGE else None,
        action=action,
        subject=subject,
    )
