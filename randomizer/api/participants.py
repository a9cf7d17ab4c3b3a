"""``/participants``: screen, read and randomise participants (URS §8)."""

from __future__ import annotations

from typing import Any

from flask import Response, request
from flask.views import MethodView
from flask_smorest import Blueprint
from sqlalchemy.orm import Session

from randomizer import roles
from randomizer.api.auth import authenticated_transaction, bearer_token, current_actor, requires
from randomizer.api.idempotency import (
    IDEMPOTENCY_HEADER,
    body_doc,
    perform_in,
    render,
    request_digest_if_keyed,
    run_idempotent,
)
from randomizer.api.parsing import StrictBlueprint, submission
from randomizer.domain.participants import ScreeningRequest
from randomizer.schemas import ParticipantSchema, ProblemSchema, RandomizationSchema, TrialSchemas
from randomizer.services.participants import (
    find_participant,
    participant_view,
    randomization_refusal,
    randomize_participant,
    screen_participant,
)
from randomizer.state import app_state


def blueprint(schemas: TrialSchemas) -> Blueprint:
    """The participants blueprint, with the trial's own request schemas."""
    blp = StrictBlueprint(
        "participants",
        __name__,
        url_prefix="/api/v1/participants",
        description="Screen, read and randomise participants. No response carries an arm.",
    )
    # One instance each, reused by every request (as flask-smorest does with its own): a
    # schema's load and dump change nothing in it, and building one costs more than using it.
    randomization_request, randomization_answer = schemas.randomization(), RandomizationSchema()

    @blp.route("")
    class Participants(MethodView):
        @requires(roles.SCREEN)
        @blp.arguments(schemas.screening)
        @blp.response(201, ParticipantSchema)
        @blp.alt_response(403, schema=ProblemSchema, description="Not your site")
        @blp.alt_response(409, schema=ProblemSchema, description="Screening number in use")
        @blp.doc(parameters=[IDEMPOTENCY_HEADER])
        def post(self, screening: ScreeningRequest) -> Response:
            """Screen a participant at your own site."""
            state, actor = app_state(), current_actor()

            def act(session: Session) -> tuple[int, dict[str, Any]]:
                participant = screen_participant(session, state.ctx, actor, screening)
                return 201, ParticipantSchema().dump(
                    participant_view(session, state.ctx, participant)
                )

            return run_idempotent("participants.screen", actor, act)

    @blp.route("/<string:screening_number>")
    class ParticipantResource(MethodView):
        @requires(roles.READ_PARTICIPANT)
        @blp.response(200, ParticipantSchema)
        @blp.alt_response(404, schema=ProblemSchema, description="Unknown or not yours")
        def get(self, screening_number: str) -> dict[str, Any]:
            """A participant: status, stratum, randomisation number, kits; never an arm."""
            state = app_state()
            with state.db.reading() as session:
                participant = find_participant(session, current_actor(), screening_number)
                return participant_view(session, state.ctx, participant)

    @blp.route("/<string:screening_number>/randomize")
    class Randomize(MethodView):
        refusal_of = staticmethod(lambda args: randomization_refusal(args["screening_number"]))

        @blp.doc(**body_doc(schemas.randomization))
        @blp.response(201, RandomizationSchema)
        @blp.alt_response(403, schema=ProblemSchema, description="Role may not randomise")
        @blp.alt_response(404, schema=ProblemSchema, description="Unknown or not yours")
        @blp.alt_response(
            409,
            schema=ProblemSchema,
            description="Already randomised, insufficient supply or stratum exhausted",
        )
        @blp.alt_response(
            422,
            schema=ProblemSchema,
            description="Invalid, ineligible or outside the screening window",
        )
        def post(self, screening_number: str) -> Response:
            """Randomise: the next slot of the stratum and the week-1 kits. No arm, ever.

            Checked in this order: token, role, visibility, state, input, screening window
            and eligibility, supply and list. Every refusal is audited.
            """
            state, token = app_state(), bearer_token()
            # Validated now, before the transaction (the service still refuses invalid input
            # only when URS §8's order comes to it): less work under the locks.
            body = submission(randomization_request, request).validated_now()
            digest = request_digest_if_keyed()

            def act(session: Session) -> tuple[int, dict[str, Any]]:
                result = randomize_participant(session, state.ctx, actor, screening_number, body)
                return 201, randomization_answer.dump(result)

            # The token is looked up in the randomisation's own transaction: one transaction
            # a request, not two (the busiest request; the same checks as @authenticated).
            with authenticated_transaction(token) as (session, actor):
                result = perform_in(
                    session,
                    "participants.randomize",
                    actor,
                    act,
                    self.refusal_of(request.view_args),
                    digest,
                )
            return render(result)

    return blp
