"""Dispensing, kits, inventory and the participant's lifecycle over HTTP (R-DISP, R-KIT-2,
R-LIFE, R-FIX). Every state-changing POST takes an ``Idempotency-Key``; every refusal is
audited by its service."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Response, request
from flask.views import MethodView
from sqlalchemy.orm import Session

from randomizer import roles
from randomizer.api.auth import authenticated, current_actor, requires
from randomizer.api.idempotency import body_doc, run_idempotent
from randomizer.api.parsing import StrictBlueprint, submission
from randomizer.schemas import (
    DispensingSchema,
    InventorySchema,
    KitSchema,
    KitStatusChangeSchema,
    ParticipantSchema,
    ProblemSchema,
    TrialSchemas,
)
from randomizer.services import lifecycle
from randomizer.services.dispensing import (
    change_kit_status,
    dispense_kits,
    dispense_refusal,
    kit_status_refusal,
    kit_view,
    site_inventory,
)
from randomizer.services.participants import participant_view
from randomizer.state import app_state


def blueprint(schemas: TrialSchemas) -> StrictBlueprint:
    """The dispensing blueprint, with the trial's own visits and factors."""
    blp = StrictBlueprint(
        "dispensing",
        __name__,
        url_prefix="/api/v1",
        description="Dispensing at visits, kits and inventory, withdrawals and corrections. "
        "No response carries an arm.",
    )

    @blp.route("/participants/<string:screening_number>/dispense")
    class Dispense(MethodView):
        refusal_of = staticmethod(lambda args: dispense_refusal(args["screening_number"]))

        @authenticated
        @blp.doc(**body_doc(schemas.dispensing))
        @blp.response(201, DispensingSchema)
        @blp.alt_response(
            409,
            schema=ProblemSchema,
            description="Dispensed already, not on treatment, or insufficient supply",
        )
        @blp.alt_response(
            422,
            schema=ProblemSchema,
            description="Invalid, no kits at this visit, or outside its window",
        )
        def post(self, screening_number: str) -> Response:
            """Dispense a visit's kits: the count from weight and visit only, never the arm."""
            state, actor = app_state(), current_actor()
            body = submission(state.schemas.dispensing(), request)

            def act(session: Session) -> tuple[int, dict[str, Any]]:
                result = dispense_kits(session, state.ctx, actor, screening_number, body)
                return 201, DispensingSchema().dump(result)

            return run_idempotent(
                "participants.dispense", actor, act, self.refusal_of(request.view_args)
            )

    @blp.route("/kits/<string:kit_number>/status")
    class KitStatus(MethodView):
        refusal_of = staticmethod(lambda args: kit_status_refusal(args["kit_number"]))

        @authenticated
        @blp.doc(**body_doc(schemas.kit_status))
        @blp.response(200, KitStatusChangeSchema)
        @blp.alt_response(
            409,
            schema=ProblemSchema,
            description="Not allowed from the kit's status, or no replacement available",
        )
        def post(self, kit_number: str) -> Response:
            """Mark a kit dispensed, damaged, lost or returned; a damaged or lost allocated kit
            is replaced by one of the same arm at the same site (``replacement``)."""
            state, actor = app_state(), current_actor()
            body = submission(state.schemas.kit_status(), request)

            def act(session: Session) -> tuple[int, dict[str, Any]]:
                result = change_kit_status(session, state.ctx, actor, kit_number, body)
                return 200, KitStatusChangeSchema().dump(result)

            return run_idempotent("kits.status", actor, act, self.refusal_of(request.view_args))

    @blp.route("/kits/<string:kit_number>")
    class KitResource(MethodView):
        @requires(roles.READ_KIT)
        @blp.response(200, KitSchema)
        @blp.alt_response(404, schema=ProblemSchema, description="Unknown or not yours")
        def get(self, kit_number: str) -> dict[str, Any]:
            """A kit: status, site, blinded lot and expiry, participant and visit; no arm."""
            with app_state().db.reading() as session:
                return kit_view(session, current_actor(), kit_number)

    @blp.route("/sites/<string:site>/inventory")
    class Inventory(MethodView):
        @requires(roles.READ_INVENTORY)
        @blp.response(200, InventorySchema)
        @blp.alt_response(404, schema=ProblemSchema, description="Unknown or not yours")
        def get(self, site: str) -> dict[str, Any]:
            """The site's kits counted by status (every status), never by arm."""
            state = app_state()
            with state.db.reading() as session:
                return site_inventory(session, state.ctx, current_actor(), site)

    def participant_change(
        path: str, action: str, schema: Any, change: Callable[..., Any], doc: str
    ) -> None:
        class Change(MethodView):
            refusal_of = staticmethod(
                lambda args: lifecycle.lifecycle_refusal(action, args["screening_number"])
            )

            @authenticated
            @blp.doc(**body_doc(schema))
            @blp.response(200, ParticipantSchema)
            @blp.alt_response(409, schema=ProblemSchema, description="Not from its status")
            def post(self, screening_number: str) -> Response:
                state, actor = app_state(), current_actor()
                body = submission(schema(), request)

                def act(session: Session) -> tuple[int, dict[str, Any]]:
                    participant = change(session, state.ctx, actor, screening_number, body)
                    return 200, ParticipantSchema().dump(
                        participant_view(session, state.ctx, participant)
                    )

                return run_idempotent(
                    f"participants.{path}", actor, act, self.refusal_of(request.view_args)
                )

        Change.post.__doc__ = doc
        Change.__name__ = f"Participant{path.title().replace('-', '')}"
        blp.route(f"/participants/<string:screening_number>/{path}")(Change)

    for path, step, doc in (
        ("withdraw", lifecycle.WITHDRAW, "Withdraw a participant: no more dispensing."),
        ("discontinue", lifecycle.DISCONTINUE, "Discontinue treatment: follow-up visits stay."),
        ("flag-error", lifecycle.FLAG_ERROR, "Flag a participant randomised in error (admin)."),
    ):
        participant_change(path, step.action, schemas.reason, _status_change(step), doc)
    participant_change(
        "correct-stratum",
        lifecycle.STRATUM_CORRECTED,
        schemas.stratum_correction,
        lifecycle.correct_stratum,
        "Record the right screening factors beside the original (admin, R-FIX).",
    )
    return blp


def _status_change(step: lifecycle.LifecycleStep) -> Callable[..., Any]:
    def change(session: Session, ctx: Any, actor: Any, number: str, body: Any) -> Any:
        return lifecycle.change_participant_status(session, ctx, actor, number, step, body)

    return change
