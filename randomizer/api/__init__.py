"""The HTTP API under ``/api/v1``, described by ``/api/v1/openapi.json`` (URS §8)."""

from __future__ import annotations

from flask import Flask
from flask_smorest import Api

from randomizer.api import (
    audit,
    dispensing,
    health,
    notifications,
    participants,
    problems,
    trial,
    unblinding,
)
from randomizer.api.parsing import BoundedChunkedBodies
from randomizer.schemas import TrialSchemas


def init_app(app: Flask, schemas: TrialSchemas) -> Api:
    """Register the blueprints, the OpenAPI document and the problem-details handlers."""
    app.config.setdefault("API_TITLE", "Sealroom")
    app.config.setdefault("API_VERSION", "v1")
    app.config.setdefault("OPENAPI_VERSION", "3.0.3")
    app.config.setdefault("OPENAPI_URL_PREFIX", "/api/v1")
    app.config.setdefault("OPENAPI_JSON_PATH", "openapi.json")
    api = Api(
        app,
        spec_kwargs={
            "info": {
                "description": "Randomisation and blinding service. Blinded roles never "
                "receive an arm. Errors are RFC 9457 problem details."
            }
        },
    )
    api.spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    api.spec.options["security"] = [{"bearer": []}]
    for blp in (
        health.blp,
        trial.blp,
        participants.blueprint(schemas),
        unblinding.blueprint(schemas),
        dispensing.blueprint(schemas),
        audit.blp,
        notifications.blp,
    ):
        api.register_blueprint(blp)
    # After flask-smorest's own handler for HTTPException, which these replace.
    problems.init_app(app)
    app.wsgi_app = BoundedChunkedBodies(  # type: ignore[method-assign]
        app.wsgi_app, lambda: app.config.get("MAX_CONTENT_LENGTH")
    )
    return api
