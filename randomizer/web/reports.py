"""Report pages (R-REP-1, R-REP-2, R-REP-4, R-SHIP): the blinded enrollment report with its
two pictures (sponsor, admin, statistician), the unblinded balance report and the supply
report (statistician only). Each page shows what the API's answer holds, from the same
service; the pictures are the same service's SVG files, served from this site (the pages'
``img-src 'self'``)."""

from __future__ import annotations

from typing import Any

from flask import Response

from randomizer import pictures, roles
from randomizer.errors import NotFound
from randomizer.services import reports, shipments
from randomizer.state import app_state
from randomizer.web.base import bp, current_actor, page, signed_in

#: The pictures a page shows: each of a report the service checks the role of.
PICTURES = ("enrollment", "screen-failures", "balance")
#: A drawing's own policy: its presentation attributes are inline styles; never a script.
PICTURE_POLICY = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"


@bp.get("/reports/enrollment")
@signed_in(roles.REPORT_ENROLLMENT)
def enrollment_report_page() -> Any:
    """Blinded enrollment: totals, per site, stratum and month; screen failures by rule."""
    state = app_state()
    with state.db.reading() as session:
        report = reports.enrollment_report(session, state.ctx, current_actor())
    return page("report_enrollment.html", report=report, counts=reports.COUNTS)


@bp.get("/reports/balance")
@signed_in(roles.REPORT_BALANCE)
def balance_report_page() -> Any:
    """Unblinded balance per stratum and arm, with slots used and left (statistician)."""
    state = app_state()
    with state.db.reading() as session:
        report = reports.balance_report(session, state.ctx, current_actor())
    return page("report_balance.html", report=report)


@bp.get("/reports/supply")
@signed_in(roles.REPORT_SUPPLY)
def supply_report_page() -> Any:
    """Every site's stock by arm and the depot's by arm and lot (statistician)."""
    state = app_state()
    with state.db.reading() as session:
        report = shipments.supply_report(session, state.ctx, current_actor())
    return page("report_supply.html", report=report, arms=state.ctx.definition.arms)


@bp.get("/reports/pictures/<name>.svg")
@signed_in()
def report_picture(name: str) -> Response:
    """A report's picture as the API's ``image/svg+xml`` answer; the role is checked by the
    report's service (the balance picture: the statistician only)."""
    if name not in PICTURES:
        raise NotFound("No such picture.")
    state = app_state()
    with state.db.reading() as session:
        content = reports.report_file(session, state.ctx, current_actor(), name, "svg")
    response = Response(content, mimetype=pictures.FORMATS["svg"])
    response.headers["Content-Security-Policy"] = PICTURE_POLICY
    return response
