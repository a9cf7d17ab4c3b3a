"""Strict JSON request bodies: exact decimals, no NaN, clear errors instead of 500s."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import marshmallow as ma
from flask import Request
from flask_smorest import Blueprint
from webargs.flaskparser import FlaskParser
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from randomizer.errors import Problem, ValidationFailed, flatten_errors
from randomizer.services.inputs import Submission

_INVALID_BODY = {"_body": ["Not valid JSON."]}


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


class _DuplicateMember(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _object_once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose every member is named once (Python's JSON keeps the last silently)."""
    members: dict[str, Any] = {}
    for name, value in pairs:
        if name in members:
            raise _DuplicateMember(name)
        members[name] = value
    return members


def loads_strict(raw: bytes) -> Any:
    """Parse JSON keeping decimals exact; raise ValidationFailed (400) on anything else.

    ``NaN``/``Infinity`` are refused, and so are integers too long to convert (Python's
    4300-digit limit raises ValueError, which must become a 400, never a 500), and an object
    naming a member twice (``{"weight_kg": 70, "weight_kg": 300}``: which one was meant?).
    """
    try:
        return json.loads(
            raw.decode("utf-8"),
            parse_float=Decimal,
            parse_constant=_refuse_constant,
            object_pairs_hook=_object_once,
        )
    except _DuplicateMember as duplicate:
        # The name as JSON text (ASCII, escaped): it may hold NUL or a lone surrogate.
        raise ValidationFailed(
            {"_body": [f"The member {json.dumps(duplicate.name)} is sent more than once."]},
            detail="The body is not valid JSON: an object names a member twice.",
            status=400,
        ) from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ValidationFailed(
            _INVALID_BODY, detail="The body is not valid JSON.", status=400
        ) from None


def request_json(request: Request) -> Any:
    """The request's JSON body; a missing body or another content type is a 400/415.

    An oversized body is a 413 problem raised here too, not werkzeug's exception, so that a
    randomisation refused for it is audited like any other refusal (R-AUD).
    """
    if not request.is_json:
        raise ValidationFailed(
            {"_body": ["Send a JSON body with Content-Type: application/json."]},
            detail="The body must be JSON.",
            status=415,
        )
    try:
        raw = request.get_data(cache=True)
    except RequestEntityTooLarge:
        raise ValidationFailed(
            {"_body": [f"At most {request.max_content_length} bytes."]},
            detail="The body is too large.",
            status=413,
        ) from None
    return loads_strict(raw)


def validate_with(schema: ma.Schema, parsed: Any) -> Any:
    """Validate parsed input with ``schema`` (422 with every field error)."""
    try:
        return schema.load(parsed)
    except ma.ValidationError as error:
        raise ValidationFailed(flatten_errors(error.messages)) from None


def submission(schema: ma.Schema, request: Request) -> Submission[Any]:
    """The request's JSON body, parsed now and validated with ``schema`` when the service asks.

    A body that cannot be parsed (not JSON, too large, another content type) is refused only
    then too, so the service's checks keep URS §8's order.
    """
    try:
        parsed = request_json(request)
    except Problem as problem:
        return Submission(parsed=None, validate=schema.load, unparseable=problem)
    return Submission(parsed=parsed, validate=lambda value: validate_with(schema, value))


class BoundedChunkedBodies:
    """WSGI middleware: a chunked request body is read up to the same limit as any other.

    Werkzeug applies ``MAX_CONTENT_LENGTH`` to a body without ``Content-Length`` (HTTP/1.1
    chunked transfer coding) by reading at most that many bytes and stopping there without a
    word, so a larger body was silently cut at the limit (and accepted when the cut still
    parsed). Here such a body is read up to one byte past the limit and handed on with the
    ``Content-Length`` it has; one longer than the limit thus meets the same 413 as a body
    that declares its length (:func:`request_json`: a problem detail, audited where refusals
    are), and nothing past the limit is ever read.
    """

    def __init__(self, app: Callable[..., Any], limit: Callable[[], int | None]) -> None:
        self.app = app
        self.limit = limit

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        limit = self.limit()
        if chunked and limit is not None:
            stream = environ["wsgi.input"]
            body = bytearray()
            try:
                while len(body) <= limit:
                    data = stream.read(limit + 1 - len(body))
                    if not data:
                        break
                    body += data
            except HTTPException as error:
                # Not received in time (randomizer.wsgi's 408): the application meets the
                # error when it reads the body, as it would have.
                environ["wsgi.input"] = _Unreadable(error)
                environ["CONTENT_LENGTH"] = "1"
            except Exception:
                # A malformed chunk (gunicorn's InvalidChunkSize, ...) or a client gone: a 400
                # problem when the body is read (a randomisation's refusal audited), not a 500.
                environ["wsgi.input"] = _Unreadable(
                    ValidationFailed(
                        {"_body": ["The chunked transfer coding is malformed or incomplete."]},
                        detail="The body could not be read.",
                        status=400,
                    )
                )
                environ["CONTENT_LENGTH"] = "1"
            else:
                environ["wsgi.input"] = io.BytesIO(bytes(body))
                environ["CONTENT_LENGTH"] = str(len(body))
            # Werkzeug ignores Content-Length while Transfer-Encoding says chunked.
            del environ["HTTP_TRANSFER_ENCODING"]
        return self.app(environ, start_response)


class _Unreadable(io.RawIOBase):
    """A body whose reading failed: reading it raises that failure again."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def readable(self) -> bool:
        return True

    def readinto(self, _buffer: Any) -> int:
        raise self.error

    def read(self, _size: int | None = -1) -> bytes:
        raise self.error


class StrictFlaskParser(FlaskParser):
    """webargs' parser, reading JSON bodies with :func:`loads_strict`, and refusing a query
    parameter sent twice (``start=0&start=5``) instead of silently taking the first."""

    def _raw_load_json(self, req: Request) -> Any:
        return request_json(req)

    def load_querystring(self, req: Request, schema: ma.Schema) -> Any:
        proxy = super().load_querystring(req, schema)
        declared = {field.data_key or name for name, field in schema.fields.items()}
        repeated = sorted(
            key
            for key, values in req.args.lists()
            if len(values) > 1 and key in declared and key not in proxy.multiple_keys
        )
        if repeated:
            raise ValidationFailed({key: ["Send this parameter once."] for key in repeated})
        return proxy


class StrictBlueprint(Blueprint):
    """A flask-smorest blueprint whose ``@arguments`` use :class:`StrictFlaskParser`."""

    # unknown=RAISE everywhere: an unknown query parameter is refused like an unknown field.
    ARGUMENTS_PARSER = StrictFlaskParser(unknown=ma.RAISE)
