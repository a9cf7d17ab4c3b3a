"""Emergency unblinding over HTTP (URS §6, R-UNB-3).

``POST /participants/<sn>/unblind`` hands the arm out only after the transaction holding
its audit entry and signed checkpoint has committed; if the commit fails, the answer is a
503 problem without the arm, and nothing is marked unblinded. It is never replayed from
storage: an ``Idempotency-Key`` header is ignored, and every request is a new, audited
unblinding (URS §8).
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Response, request
from flask.views import MethodView
from sqlalchemy.exc import SQLAlchemyError

from randomizer import roles
from randomizer.api.auth import authenticated, current_actor, requires
from randomizer.api.parsing import StrictBlueprint, submission
from randomizer.api.problems import json_response
from randomizer.errors import CommitOutcomeUnknown, ServiceUnavailable
from randomizer.rendering import render_json
from randomizer.schemas import (
    ProblemSchema,
    TrialSchemas,
    UnblindingListItemSchema,
    UnblindingSchema,
)
from randomizer.services.unblinding import list_unblindings, unblind_participant, unblind_refusal
from randomizer.state import app_state

log = logging.getLogger(__name__)


def blueprint(schemas: TrialSchemas) -> StrictBlueprint:
    """The unblinding blueprint, with the trial's own reasons."""
    blp = StrictBlueprint(
        "unblinding",
        __name__,
        url_prefix="/api/v1",
        description="Emergency unblinding: the arm to the requester only, the record first.",
    )

    @blp.route("/participants/<string:screening_number>/unblind")
    class Unblind(MethodView):
        refusal_of = staticmethod(lambda args: unblind_refusal(args["screening_number"]))

        @authenticated
        @blp.doc(
            requestBody={
                "required": True,
                "content": {"application/json": {"schema": schemas.unblinding}},
            }
        )
        @blp.response(200, UnblindingSchema)
        @blp.alt_response(403, schema=ProblemSchema, description="Role may not unblind")
        @blp.alt_response(404, schema=ProblemSchema, description="Unknown or not yours")
        @blp.alt_response(409, schema=ProblemSchema, description="Never randomised")
        @blp.alt_response(422, schema=ProblemSchema, description="Invalid reason or reference")
        @blp.alt_response(503, schema=ProblemSchema, description="Not known recorded: no arm")
        def post(self, screening_number: str) -> Response:
            """Break the blind for one participant. Every request, refused or not, is audited.

            For an investigator of the participant's site or a medical monitor. The arm is
            returned only once its audit entry and signed checkpoint have committed.
            """
            state, actor = app_state(), current_actor()
            body = submission(state.schemas.unblinding(), request)
            try:
                with state.db.transaction() as session:
                    result = unblind_participant(session, state.ctx, actor, screening_number, body)
            except CommitOutcomeUnknown:
                log.exception("an unblinding's commit was cut off; no arm was released")
                raise CommitOutcomeUnknown(
                    "The connection to the database was lost while the unblinding was being "
                    "committed: it may or may not have been recorded, and the arm was not "
                    "released. Ask again (an unblinding is never replayed: a new request is a "
                    "new, audited unblinding); if the service stays unavailable, use the "
                    "trial's offline code-break procedure."
                ) from None
            except SQLAlchemyError:
                log.exception("an unblinding could not be recorded; no arm was released")
                raise ServiceUnavailable(
                    "The unblinding could not be recorded, so the arm was not released and "
                    "nothing was changed. Try again; if the service stays unavailable, use the "
                    "trial's offline code-break procedure."
                ) from None
            # Committed: the record exists, the arm may leave.
            answer = UnblindingSchema().dump(
                {
                    "screening_number": result.screening_number,
                    "arm": {"id": result.arm_id, "label": result.arm_label},
                    "unblinded_at": result.unblinded_at,
                    "receipt": result.receipt,
                }
            )
            return json_response(200, render_json(answer))

    @blp.route("/unblindings")
    class Unblindings(MethodView):
        @requires(roles.READ_UNBLINDINGS)
        @blp.response(200, UnblindingListItemSchema(many=True))
        def get(self) -> list[dict[str, Any]]:
            """Every unblinding, oldest first; the arm for the statistician only (R-UNB-3)."""
            state = app_state()
            with state.db.reading() as session:
                return list_unblindings(session, state.ctx, current_actor())

    return blp
