"""``GET /notifications``: the outbox, for the admin (R-UNB-2: undelivered messages listed)."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from marshmallow import fields, validate

from randomizer import roles
from randomizer.api.auth import requires
from randomizer.api.parsing import StrictBlueprint
from randomizer.models import OUTBOX_PENDING, OUTBOX_STATUSES
from randomizer.schemas import NotificationSchema, StrictSchema
from randomizer.services import outbox
from randomizer.state import app_state

blp = StrictBlueprint(
    "notifications",
    __name__,
    url_prefix="/api/v1",
    description="Notifications and their delivery (no message ever holds an arm).",
)


class NotificationsQuery(StrictSchema):
    status = fields.String(
        load_default=OUTBOX_PENDING, validate=validate.OneOf([*OUTBOX_STATUSES, "all"])
    )


@blp.route("/notifications")
class Notifications(MethodView):
    @requires(roles.READ_NOTIFICATIONS)
    @blp.arguments(NotificationsQuery, location="query")
    @blp.response(200, NotificationSchema(many=True))
    def get(self, query: dict[str, Any]) -> list[Any]:
        """Messages by status (default: pending, i.e. not delivered yet), oldest first."""
        status = None if query["status"] == "all" else query["status"]
        fields_shown = NotificationSchema().fields
        with app_state().db.reading() as session:
            return [
                {name: getattr(row, name) for name in fields_shown}
                for row in outbox.listed(session, status)
            ]
