"""``/reports``, ``/allocations`` and ``/exports``: reports, pictures and exports (issue 14).

Each answer's form is chosen by the ``Accept`` header among those the route offers (JSON
first, the default): ``text/csv``, and for the reports ``image/svg+xml`` and
``image/png`` (``?picture=`` picks which picture of the enrollment report). The exports
write their audit entry, so they run in a transaction; the reports only read.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from typing import Any

from flask import Response, request
from flask.views import MethodView
from marshmallow import fields, validate

from randomizer import pictures, roles
from randomizer.api.auth import authenticated, current_actor, requires
from randomizer.api.parsing import StrictBlueprint
from randomizer.api.problems import json_response
from randomizer.rendering import render_json
from randomizer.schemas import (
    AllocationSchema,
    BalanceReportSchema,
    EnrollmentReportSchema,
    ProblemSchema,
    StrictSchema,
)
from randomizer.services import cdisc, reports
from randomizer.state import app_state

blp = StrictBlueprint(
    "reports",
    __name__,
    url_prefix="/api/v1",
    description="Reports (blinded enrollment; unblinded balance), pictures and exports.",
)

JSON, CSV = "application/json", "text/csv"
SVG, PNG = pictures.FORMATS["svg"], pictures.FORMATS["png"]
XPT = "application/x-sas-xport"
_BINARY = {"type": "string", "format": "binary"}
_TEXT = {"type": "string"}


def negotiated(offered: Sequence[str]) -> str:
    """The form the client's ``Accept`` prefers among ``offered``; the first by default."""
    if not request.accept_mimetypes:
        return offered[0]
    return request.accept_mimetypes.best_match(offered, default=offered[0]) or offered[0]


def csv_response(header: Sequence[str], rows: Iterable[Sequence[Any]], filename: str) -> Response:
    """A CSV answer (RFC 4180), offered for download under ``filename``."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return _download(out.getvalue().encode("utf-8"), f"{CSV}; charset=utf-8", filename)


def _download(content: bytes, mimetype: str, filename: str) -> Response:
    response = Response(content, mimetype=mimetype)
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def _picture(name: str, report: dict[str, Any], form: str) -> Response:
    file_format = "svg" if form == SVG else "png"
    _source, draw = pictures.PICTURES[name]
    return Response(draw(report, file_format), mimetype=form)


def enrollment_csv_rows(report: dict[str, Any]) -> list[list[Any]]:
    """The enrollment report as one table: ``group,name`` then the counts; screen failures
    by rule as ``screen_failed_rule`` rows (their count in ``screen_failed``)."""
    rows: list[list[Any]] = [["total", report["trial"], *report["totals"].values()]]
    for group, key in (("site", "sites"), ("stratum", "strata"), ("month", "months")):
        for item in report[key]:
            rows.append([group, item[group], *(item[name] for name in reports.COUNTS)])
    failures = report["screen_failures"]
    blank = [""] * (len(reports.COUNTS) - 2)
    for item in failures["by_rule"]:
        rows.append(["screen_failed_rule", item["rule"], "", item["participants"], *blank])
    rows.append(["screen_failed_rule", "window", "", failures["outside_window"], *blank])
    return rows


def balance_csv_rows(report: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The balance report as one table: a row per stratum, then ``overall``."""
    arms = [arm["id"] for arm in report["arms"]]
    header = ["stratum_number", "stratum", *arms, "imbalance", "slots_used", "slots_left"]
    header.append("warning")
    rows: list[list[Any]] = []
    for item in report["strata"]:
        slots = item["slots"]
        rows.append(
            [
                item["number"],
                item["stratum"],
                *(item["counts"][arm] for arm in arms),
                item["imbalance"],
                slots["used"],
                slots["left"],
                item["warning"] or "",
            ]
        )
    overall = report["overall"]
    rows.append(["", "overall", *(overall["counts"][arm] for arm in arms), overall["imbalance"]])
    rows[-1].extend(["", "", ""])
    return header, rows


class EnrollmentQuery(StrictSchema):
    picture = fields.String(
        load_default="enrollment",
        validate=validate.OneOf(["enrollment", "screen-failures"]),
        metadata={"description": "with an image Accept: cumulative enrollment or screen failures"},
    )


def _content(schema: Any, *extra: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "responses": {
            "200": {
                "content": {
                    JSON: {"schema": schema},
                    **{media_type: {"schema": shape} for media_type, shape in extra},
                }
            }
        }
    }


@blp.route("/reports/enrollment")
class EnrollmentReport(MethodView):
    @requires(roles.REPORT_ENROLLMENT)
    @blp.arguments(EnrollmentQuery, location="query")
    @blp.response(200, EnrollmentReportSchema)
    @blp.doc(**_content(EnrollmentReportSchema, (CSV, _TEXT), (SVG, _TEXT), (PNG, _BINARY)))
    def get(self, query: dict[str, Any]) -> Any:
        """Blinded enrollment: totals, per site, stratum and month; screen failures by rule.

        ``Accept: text/csv`` for a table, ``image/svg+xml`` or ``image/png`` for a picture
        (``?picture=enrollment``: cumulative randomisations per site against the target;
        ``screen-failures``: screen failures by rule).
        """
        state, actor = app_state(), current_actor()
        form = negotiated([JSON, CSV, SVG, PNG])
        with state.db.reading() as session:
            if form in (SVG, PNG) and query["picture"] == "enrollment":
                data = reports.randomisations_by_site(session, state.ctx, actor)
            else:
                data = reports.enrollment_report(session, state.ctx, actor)
        if form in (SVG, PNG):
            return _picture(query["picture"], data, form)
        if form == CSV:
            return csv_response(
                ["group", "name", *reports.COUNTS], enrollment_csv_rows(data), "enrollment.csv"
            )
        return data


@blp.route("/reports/balance")
class BalanceReport(MethodView):
    @requires(roles.REPORT_BALANCE)
    @blp.response(200, BalanceReportSchema)
    @blp.doc(**_content(BalanceReportSchema, (CSV, _TEXT), (SVG, _TEXT), (PNG, _BINARY)))
    def get(self) -> Any:
        """Unblinded balance per stratum and arm, with slots used and left (statistician).

        ``Accept: text/csv`` for a table, ``image/svg+xml`` or ``image/png`` for a picture.
        """
        state, actor = app_state(), current_actor()
        form = negotiated([JSON, CSV, SVG, PNG])
        with state.db.reading() as session:
            report = reports.balance_report(session, state.ctx, actor)
        if form in (SVG, PNG):
            return _picture("balance", report, form)
        if form == CSV:
            header, rows = balance_csv_rows(report)
            return csv_response(header, rows, "balance.csv")
        return report


@blp.route("/allocations")
class Allocations(MethodView):
    @authenticated
    @blp.response(200, AllocationSchema(many=True))
    @blp.doc(**_content(AllocationSchema(many=True), (CSV, _TEXT)))
    @blp.alt_response(403, schema=ProblemSchema, description="Blinded roles may not")
    def get(self) -> Any:
        """Every randomised participant with its arm (URS §8), corrections and unblindings.

        Statistician only; an export: audited (``export.created``), as is every refusal.
        ``Accept: text/csv`` for a table (kits space-separated).
        """
        state, actor = app_state(), current_actor()
        form = negotiated([JSON, CSV])
        with state.db.transaction() as session:
            rows = reports.export_allocations(session, state.ctx, actor)
        if form == CSV:
            return csv_response(
                reports.ALLOCATION_CSV_COLUMNS,
                reports.allocation_csv_rows(rows),
                "allocations.csv",
            )
        return json_response(200, render_json(AllocationSchema(many=True).dump(rows)))


@blp.route("/exports/dm")
class DmExport(MethodView):
    @authenticated
    @blp.response(200, _TEXT, content_type=CSV)
    @blp.doc(
        parameters=[
            {
                "name": "format",
                "in": "query",
                "required": False,
                "schema": {"type": "string", "enum": list(cdisc.FORMATS)},
                "description": "csv or xpt; without it, from Accept (text/csv by default)",
            }
        ],
        responses={"200": {"content": {CSV: {"schema": _TEXT}, XPT: {"schema": _BINARY}}}},
    )
    @blp.alt_response(403, schema=ProblemSchema, description="Blinded roles may not")
    def get(self) -> Response:
        """The CDISC SDTM DM-style dataset, one row per randomised participant (R-REP-3).

        CSV, or a SAS transport file (XPT version 5) with ``Accept:
        application/x-sas-xport`` or ``?format=xpt``. Statistician only; audited.
        """
        state, actor = app_state(), current_actor()
        # Read here, checked by the service after the role: a blinded caller learns nothing.
        file_format = request.args.get("format") or (
            "xpt" if negotiated([CSV, XPT]) == XPT else "csv"
        )
        with state.db.transaction() as session:
            export = cdisc.export_dm(session, state.ctx, actor, file_format)
        if export.format == "xpt":
            return _download(export.content, XPT, "dm.xpt")
        return _download(export.content, f"{CSV}; charset=utf-8", "dm.csv")
