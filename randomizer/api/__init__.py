"""The HTTP API under ``/api/v1``, described by ``/api/v1/openapi.json`` (URS §8)."""

from __future__ import annotations

import http
from typing import Any

from apispec import BasePlugin
from flask import Flask
from flask_smorest import Api

from randomizer.api import (
    audit,
    dispensing,
    health,
    notifications,
    participants,
    problems,
    refused_methods,
    reports,
    shipments,
    trial,
    unblinding,
)
from randomizer.api.parsing import BoundedChunkedBodies
from randomizer.schemas import ProblemSchema, TrialSchemas

#: Headers on every answer (:func:`randomizer.api.problems.add_security_headers`).
SECURITY_HEADERS = {
    "Cache-Control": {
        "description": "Never stored by a cache: answers carry participant data.",
        "required": True,
        "schema": {"type": "string", "enum": ["no-store"]},
    },
    "X-Content-Type-Options": {
        "description": "The content type is what it says.",
        "required": True,
        "schema": {"type": "string", "enum": ["nosniff"]},
    },
}
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


class ServedAsDocumented(BasePlugin):
    """The document says what the service does, for every operation in one place.

    * every error (4xx, 5xx, ``default``) is ``application/problem+json`` with the
      :class:`~randomizer.schemas.ProblemSchema` (flask-smorest declares its own error body as
      ``application/json``);
    * an operation is authenticated unless it says ``security: []`` (``/health``,
      ``/audit/verifier-key``), and every authenticated one declares its 401 with
      ``WWW-Authenticate`` and its 429 with ``Retry-After`` (a client that sent too many
      invalid tokens: :mod:`randomizer.services.throttling`);
    * every answer carries ``Cache-Control: no-store`` and ``X-Content-Type-Options: nosniff``.
    """

    def operation_helper(
        self, path: str | None = None, operations: dict[str, Any] | None = None, **_: Any
    ) -> None:
        for operation in (operations or {}).values():
            responses: dict[Any, Any] = operation.setdefault("responses", {})
            for code, response in list(responses.items()):
                if str(code) == "default" or int(code) >= 400:
                    del responses[code]
                    responses[str(code)] = _problem(code, response)
            if operation.get("security") != []:
                unauthorized = _problem(401, "No valid bearer token")
                unauthorized["headers"] = {
                    "WWW-Authenticate": {
                        "description": "Bearer",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                }
                responses["401"] = unauthorized
                throttled = _problem(429, "Too many failed authentications from this client")
                throttled["headers"] = {
                    "Retry-After": {
                        "description": "Seconds until the client's failures are forgotten.",
                        "required": True,
                        "schema": {"type": "integer", "minimum": 1},
                    }
                }
                responses["429"] = throttled
            responses["default"] = _problem("default", "Any other refusal")
            for response in responses.values():
                response.setdefault("headers", {}).update(SECURITY_HEADERS)


def _problem(code: int | str, response: Any) -> dict[str, Any]:
    """An error response of the document: its description, a problem details body."""
    if isinstance(response, dict) and response.get("description"):
        description = response["description"]
    elif isinstance(response, str) and not response.isupper():
        description = response
    else:  # flask-smorest's component names (UNPROCESSABLE_ENTITY), or nothing
        description = "Error" if str(code) == "default" else http.HTTPStatus(int(code)).phrase
    return {
        "description": description,
        "content": {problems.PROBLEM_JSON: {"schema": dict(PROBLEM_REF)}},
    }


class SealroomApi(Api):
    """flask-smorest's Api, documenting errors as the problem details they are."""

    ERROR_SCHEMA = ProblemSchema
    # ServedAsDocumented declares "default" (and the rest) itself.
    DEFAULT_ERROR_RESPONSE_NAME = None


def init_app(app: Flask, schemas: TrialSchemas) -> Api:
    """Register the blueprints, the OpenAPI document and the problem-details handlers."""
    app.config.setdefault("API_TITLE", "Sealroom")
    app.config.setdefault("API_VERSION", "v1")
    app.config.setdefault("OPENAPI_VERSION", "3.0.3")
    app.config.setdefault("OPENAPI_URL_PREFIX", "/api/v1")
    app.config.setdefault("OPENAPI_JSON_PATH", "openapi.json")
    api = SealroomApi(
        app,
        spec_kwargs={
            "extra_plugins": [ServedAsDocumented()],
            "info": {
                "description": "Randomisation and blinding service. Blinded roles never "
                "receive an arm. Errors are RFC 9457 problem details."
            },
        },
    )
    api.spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    api.spec.options["security"] = [{"bearer": []}]
    if "Problem" not in api.spec.components.schemas:  # flask-smorest's ERROR_SCHEMA
        api.spec.components.schema("Problem", schema=ProblemSchema)
    api.spec.components.schemas["Problem"]["properties"]["type"]["enum"] = problems.problem_types()
    for blp in (
        health.blp,
        trial.blp,
        participants.blueprint(schemas),
        unblinding.blueprint(schemas),
        dispensing.blueprint(schemas),
        audit.blp,
        notifications.blp,
        reports.blp,
        shipments.blp,
    ):
        api.register_blueprint(blp)
    # After flask-smorest's own handler for HTTPException, which these replace.
    problems.init_app(app)
    refused_methods.init_app(app)
    app.wsgi_app = BoundedChunkedBodies(  # type: ignore[method-assign]
        app.wsgi_app, lambda: app.config.get("MAX_CONTENT_LENGTH")
    )
    return api
