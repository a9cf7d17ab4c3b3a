"""``GET /health``: answers once the database does."""

from __future__ import annotations

from flask.views import MethodView
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from randomizer.api.parsing import StrictBlueprint
from randomizer.api.problems import problem_response
from randomizer.schemas import HealthSchema
from randomizer.state import app_state

blp = StrictBlueprint("health", __name__, url_prefix="/api/v1", description="Liveness")


@blp.route("/health")
class Health(MethodView):
    @blp.response(200, HealthSchema)
    @blp.doc(security=[])
    def get(self) -> object:
        """Report ``ok`` once the database answers (no authentication)."""
        try:
            with app_state().db.reading() as session:
                session.execute(text("SELECT 1"))
        except SQLAlchemyError:
            return problem_response(
                {
                    "type": "about:blank",
                    "title": "Service unavailable",
                    "status": 503,
                    "detail": "The database does not answer.",
                }
            )
        return {"status": "ok"}
