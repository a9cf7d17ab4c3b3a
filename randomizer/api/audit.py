"""``/audit``: the verifiable audit trail over HTTP (URS §7, §8, R-RCPT)."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask import Response
from flask.views import MethodView
from marshmallow import fields

from randomizer import roles
from randomizer.api.auth import current_actor, requires
from randomizer.api.parsing import StrictBlueprint
from randomizer.schemas import ProblemSchema, QueryInteger, StrictSchema
from randomizer.services import audit_queries
from randomizer.state import app_state

blp = StrictBlueprint(
    "audit",
    __name__,
    url_prefix="/api/v1/audit",
    description="The audit trail: signed checkpoints, entries and RFC 9162 proofs.",
)


#: The document's schema of a text answer (signed notes, key lines, JSON Lines).
TEXT = {"type": "string"}


class EntriesQuery(StrictSchema):
    start = QueryInteger(required=True)
    end = QueryInteger()


class InclusionQuery(StrictSchema):
    index = QueryInteger(required=True)
    size = QueryInteger(required=True)


class ConsistencyQuery(StrictSchema):
    first = QueryInteger(required=True)
    second = QueryInteger(required=True)


class InclusionProofSchema(ma.Schema):
    index = fields.Integer()
    size = fields.Integer()
    hashes = fields.List(fields.String(), metadata={"description": "base64, RFC 9162 order"})


class ConsistencyProofSchema(ma.Schema):
    first = fields.Integer()
    second = fields.Integer()
    hashes = fields.List(fields.String(), metadata={"description": "base64, RFC 9162 order"})


def _text(body: str) -> Response:
    return Response(body, mimetype="text/plain")


@blp.route("/checkpoint")
class LatestCheckpoint(MethodView):
    @requires(roles.READ_CHECKPOINT)
    @blp.response(200, TEXT, content_type="text/plain")
    @blp.alt_response(404, schema=ProblemSchema, description="No checkpoint yet")
    def get(self) -> Response:
        """The latest signed checkpoint (C2SP signed note). Reveals only size and root."""
        with app_state().db.reading() as session:
            return _text(audit_queries.latest_checkpoint(session))


@blp.route("/verifier-key")
class VerifierKeyLine(MethodView):
    @blp.response(200, TEXT, content_type="text/plain")
    @blp.doc(security=[])
    def get(self) -> Response:
        """The verifier key line. Trust the one you obtained out of band, not this one."""
        state = app_state()
        with state.db.reading() as session:
            # The key in force: after a hand-over (R-KEY-1), the incoming one.
            key = state.ctx.audit.current_verifier_key(session)
        return _text(key.line() + "\n")


class HandOverSchema(ma.Schema):
    seq = fields.Integer(metadata={"description": "The key.rotated entry's seq"})
    entry = fields.String(metadata={"description": "Its canonical bytes"})
    checkpoint = fields.String(
        metadata={"description": "The checkpoint of size seq + 1, signed by both keys"}
    )
    inclusion_proof = fields.List(fields.String(), metadata={"description": "base64, RFC 9162"})


@blp.route("/key-hand-overs")
class KeyHandOvers(MethodView):
    @requires(roles.READ_CHECKPOINT)
    @blp.response(200, HandOverSchema(many=True))
    def get(self) -> list[dict[str, Any]]:
        """Every signing-key hand-over, oldest first: how a verifier follows a key rotation."""
        with app_state().db.reading() as session:
            return audit_queries.key_hand_overs(session)


@blp.route("/entries")
class Entries(MethodView):
    @requires(roles.READ_AUDIT_ENTRIES)
    @blp.arguments(EntriesQuery, location="query")
    @blp.response(200, TEXT, content_type="application/jsonl")
    def get(self, query: dict[str, Any]) -> Response:
        """Entries with start <= seq < end (at most 10,000), as JSON Lines of canonical bytes."""
        with app_state().db.reading() as session:
            lines = audit_queries.entries(session, query["start"], query.get("end"))
        return Response("".join(line + "\n" for line in lines), mimetype="application/jsonl")


@blp.route("/proof/inclusion")
class InclusionProof(MethodView):
    @requires(roles.PROVE_INCLUSION)
    @blp.arguments(InclusionQuery, location="query")
    @blp.response(200, InclusionProofSchema)
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """RFC 9162 inclusion proof; site staff only for entries about their own site."""
        with app_state().db.reading() as session:
            return audit_queries.inclusion(session, current_actor(), query["index"], query["size"])


@blp.route("/proof/consistency")
class ConsistencyProof(MethodView):
    @requires(roles.PROVE_CONSISTENCY)
    @blp.arguments(ConsistencyQuery, location="query")
    @blp.response(200, ConsistencyProofSchema)
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """RFC 9162 consistency proof between two sizes (0 < first <= second)."""
        with app_state().db.reading() as session:
            return audit_queries.consistency(session, query["first"], query["second"])
