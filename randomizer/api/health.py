"""``GET /health``: answers once the database does."""

from __future__ import annotations

from flask.views import MethodView
from sqlalchemy import text

from randomizer.api.parsing import StrictBlueprint
from randomizer.api.problems import database_unavailable
from randomizer.db import DATABASE_UNAVAILABLE
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
        except DATABASE_UNAVAILABLE:
            return database_unavailable()
        return {"status": "ok"}
