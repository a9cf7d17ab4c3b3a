"""``/reports``, ``/allocations`` and ``/exports``: reports, pictures and exports (issue 14).

Each answer's form is chosen by the ``Accept`` header among those the route offers (JSON
first, the default): ``text/csv``, and for the reports ``image/svg+xml`` and
``image/png`` (``?picture=`` picks which picture of the enrollment report). The exports
write their audit entry, so they run in a transaction; the reports only read.
"""

from __future__ import annotations

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
    return _download(reports.csv_bytes(header, rows), f"{CSV}; charset=utf-8", filename)


def _download(content: bytes, mimetype: str, filename: str) -> Response:
    response = Response(content, mimetype=mimetype)
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


#: The file format of each answer form other than JSON.
_FILE_FORMATS = {CSV: "csv", SVG: "svg", PNG: "png"}


def _report_answer(name: str, form: str) -> Any:
    """The report ``name`` in the negotiated form: JSON (dumped by the route's schema), or
    a file as ``sealroom report`` writes it."""
    state, actor = app_state(), current_actor()
    with state.db.reading() as session:
        if form == JSON:
            return reports.report_data(session, state.ctx, actor, name)
        content = reports.report_file(session, state.ctx, actor, name, _FILE_FORMATS[form])
    if form == CSV:
        return _download(content, f"{CSV}; charset=utf-8", f"{name}.csv")
    return Response(content, mimetype=form)


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
        form = negotiated([JSON, CSV, SVG, PNG])
        picture = query["picture"] if form in (SVG, PNG) else "enrollment"
        return _report_answer(picture, form)


@blp.route("/reports/balance")
class BalanceReport(MethodView):
    @requires(roles.REPORT_BALANCE)
    @blp.response(200, BalanceReportSchema)
    @blp.doc(**_content(BalanceReportSchema, (CSV, _TEXT), (SVG, _TEXT), (PNG, _BINARY)))
    def get(self) -> Any:
        """Unblinded balance per stratum and arm, with slots used and left (statistician).

        ``Accept: text/csv`` for a table, ``image/svg+xml`` or ``image/png`` for a picture.
        """
        return _report_answer("balance", negotiated([JSON, CSV, SVG, PNG]))


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
