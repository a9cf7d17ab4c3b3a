"""Shipments from the depot, their receipt, quarantine and the supply report (R-SHIP,
R-KIT-3). Every state-changing POST takes an ``Idempotency-Key``; every refusal is audited by
its service. No answer to a blinded role carries an arm or a count by arm."""

from __future__ import annotations

from typing import Any

from flask import Response, request
from flask.views import MethodView
from sqlalchemy.orm import Session

from randomizer import roles
from randomizer.api.auth import authenticated, current_actor, requires
from randomizer.api.idempotency import IDEMPOTENCY_HEADER, body_doc, run_idempotent
from randomizer.api.parsing import StrictBlueprint, submission
from randomizer.schemas import (
    ProblemSchema,
    QuarantineChangeSchema,
    QuarantineRequestSchema,
    ReceiptRequestSchema,
    ShipmentRequestSchema,
    ShipmentSchema,
    SupplyReportSchema,
)
from randomizer.services import shipments
from randomizer.state import app_state

blp = StrictBlueprint(
    "shipments",
    __name__,
    url_prefix="/api/v1",
    description="Depot shipments, their receipt, quarantine and the supply report.",
)


@blp.route("/shipments")
class Shipments(MethodView):
    @requires(roles.READ_SHIPMENTS)
    @blp.response(200, ShipmentSchema(many=True))
    def get(self) -> list[Any]:
        """Shipments, oldest first: a site's pharmacist sees its own, once sent."""
        with app_state().db.reading() as session:
            return shipments.list_shipments(session, current_actor())

    @authenticated
    @blp.doc(**body_doc(ShipmentRequestSchema))
    @blp.response(201, ShipmentSchema)
    @blp.alt_response(409, schema=ProblemSchema, description="Site closed, or depot short")
    @blp.alt_response(422, schema=ProblemSchema, description="Unknown site, bad count or lot")
    def post(self) -> Response:
        """Send ``count`` kits (balanced across arms) or a whole ``lot`` to a site; the
        service chooses the kits."""
        state, actor = app_state(), current_actor()
        body = submission(ShipmentRequestSchema(), request)

        def act(session: Session) -> tuple[int, dict[str, Any]]:
            result = shipments.create_shipment(session, state.ctx, actor, body)
            return 201, ShipmentSchema().dump(result)

        return run_idempotent("shipments.create", actor, act, shipments.shipment_refusal("create"))


@blp.route("/shipments/<string:shipment_id>")
class ShipmentResource(MethodView):
    @requires(roles.READ_SHIPMENTS)
    @blp.response(200, ShipmentSchema)
    @blp.alt_response(404, schema=ProblemSchema, description="Unknown or not yours")
    def get(self, shipment_id: str) -> Any:
        """One shipment: its site, status and kit numbers."""
        with app_state().db.reading() as session:
            return shipments.get_shipment(session, current_actor(), shipment_id)


@blp.route("/shipments/<string:shipment_id>/dispatch")
class Dispatch(MethodView):
    @authenticated
    @blp.doc(parameters=[IDEMPOTENCY_HEADER])
    @blp.response(200, ShipmentSchema)
    @blp.alt_response(404, schema=ProblemSchema, description="Unknown")
    @blp.alt_response(409, schema=ProblemSchema, description="Not a request, or depot short")
    def post(self, shipment_id: str) -> Response:
        """Send a resupply the service requested: the kits that bring every arm of the site
        back to its target level (``cancelled`` if it needs nothing any more)."""
        state, actor = app_state(), current_actor()

        def act(session: Session) -> tuple[int, dict[str, Any]]:
            result = shipments.dispatch_shipment(session, state.ctx, actor, shipment_id)
            return 200, ShipmentSchema().dump(result)

        refusal = shipments.shipment_refusal("dispatch", shipment_id)
        return run_idempotent("shipments.dispatch", actor, act, refusal)


@blp.route("/shipments/<string:shipment_id>/receive")
class Receive(MethodView):
    @authenticated
    @blp.doc(**body_doc(ReceiptRequestSchema))
    @blp.response(200, ShipmentSchema)
    @blp.alt_response(404, schema=ProblemSchema, description="Unknown or not yours")
    @blp.alt_response(409, schema=ProblemSchema, description="Received already")
    @blp.alt_response(422, schema=ProblemSchema, description="A kit missing, unknown or twice")
    def post(self, shipment_id: str) -> Response:
        """Receive a shipment: every kit in transit, once, ``available``, ``damaged`` or
        ``lost``."""
        state, actor = app_state(), current_actor()
        body = submission(ReceiptRequestSchema(), request)

        def act(session: Session) -> tuple[int, dict[str, Any]]:
            result = shipments.receive_shipment(session, state.ctx, actor, shipment_id, body)
            return 200, ShipmentSchema().dump(result)

        refusal = shipments.shipment_refusal("receive", shipment_id)
        return run_idempotent("shipments.receive", actor, act, refusal)


def _quarantine_route(path: str, quarantine: bool, doc: str) -> None:
    class Change(MethodView):
        @authenticated
        @blp.doc(**body_doc(QuarantineRequestSchema))
        @blp.response(200, QuarantineChangeSchema)
        @blp.alt_response(404, schema=ProblemSchema, description="Unknown kit")
        @blp.alt_response(409, schema=ProblemSchema, description="Not from the kit's status")
        def post(self, kit_number: str) -> Response:
            state, actor = app_state(), current_actor()
            body = submission(QuarantineRequestSchema(), request)

            def act(session: Session) -> tuple[int, dict[str, Any]]:
                result = shipments.set_quarantine(
                    session, state.ctx, actor, kit_number, body, quarantine=quarantine
                )
                return 200, QuarantineChangeSchema().dump(result)

            refusal = shipments.quarantine_refusal(kit_number)
            return run_idempotent(f"kits.{path}", actor, act, refusal)

    Change.post.__doc__ = doc
    Change.__name__ = f"Kit{path.capitalize()}"
    blp.route(f"/kits/<string:kit_number>/{path}")(Change)


_quarantine_route(
    "quarantine", True, "Quarantine a kit in stock (a temperature excursion), with a reason."
)
_quarantine_route(
    "release", False, "Release a quarantined kit to where it was (the depot or its site)."
)


@blp.route("/reports/supply")
class SupplyReport(MethodView):
    @requires(roles.REPORT_SUPPLY)
    @blp.response(200, SupplyReportSchema)
    def get(self) -> dict[str, Any]:
        """Every site's stock, expiry months and days of supply by arm, and the depot's stock
        by arm and lot: for the statistician only."""
        state = app_state()
        with state.db.reading() as session:
            return shipments.supply_report(session, state.ctx, current_actor())
