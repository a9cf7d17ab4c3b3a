"""Every marshmallow schema, request and response (URS §8).

Input is strict: JSON numbers for integers and decimals (``"18"`` is not an integer),
``true``/``false`` for booleans (``1`` and ``"yes"`` are not), strings without NUL or lone
surrogates and within their length, calendar dates as ``YYYY-MM-DD``, no unknown fields.
Request bodies are parsed with decimals kept exact (``randomizer.api.parsing``), so a
decimal arrives here as :class:`decimal.Decimal`, never as a float.

Schemas that depend on the trial (its stratification factors, its eligibility fields) are
built once from the trial definition by :func:`build_trial_schemas`.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar

import marshmallow as ma
from marshmallow import fields, post_load, validate, validates_schema

from audit.entry import format_time
from randomizer.domain import WEIGHT_KG_MAX, WEIGHT_KG_MIN, EligibilityField, TrialDefinition
from randomizer.domain.participants import (
    PARTICIPANT_STATUSES,
    SCREENING_NUMBER,
    SCREENING_NUMBER_PATTERN,
    DispenseRequest,
    KitStatusRequest,
    RandomizationRequest,
    ReasonRequest,
    ScreeningRequest,
    StratumCorrectionRequest,
    UnblindRequest,
)
from randomizer.domain.supply import (
    RECEIPT_STATUSES,
    ReceiptRequest,
    ShipmentRequest,
)

#: Kit numbers as the service makes them (``randomizer.services.kits.KIT_NUMBER``).
KIT_NUMBER_PATTERN = r"^K[0-9]{4}-[0-9]{4}$"
ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
ASCII_DIGITS = re.compile(r"[0-9]+")
#: The document's pattern of a string without NUL (ECMA 262, as OpenAPI's patterns are).
NO_NUL_PATTERN = r"^[^\x00]*$"
#: Bounds of every integer a request may carry (URS §8, R-NF-3): what PostgreSQL's 32-bit
#: ``integer`` holds, so no value sent can overflow a column, a bound or a comparison.
DB_INT_MAX = 2**31 - 1
DB_INT_MIN = -(2**31)
#: Decimal places accepted in a decimal input (weights, scores, doses).
DECIMAL_PLACES = 3


class StrictSchema(ma.Schema):
    """Refuses unknown fields."""

    class Meta:
        unknown = ma.RAISE


class SafeString(fields.String):
    """A string without NUL or lone surrogates (PostgreSQL refuses NUL; JSON allows both)."""

    default_error_messages: ClassVar[dict[str, str]] = {
        "nul": "Must not contain NUL characters.",
        "surrogate": "Must not contain lone surrogates.",
    }

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # The document says so too (a JSON text cannot hold a lone surrogate anyway).
        self.metadata = {"pattern": NO_NUL_PATTERN, **self.metadata}

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> str:
        if not isinstance(value, str):
            raise self.make_error("invalid")
        if "\x00" in value:
            raise self.make_error("nul")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise self.make_error("surrogate") from None
        return value


class StrictBoolean(fields.Boolean):
    """Only JSON ``true`` and ``false``."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> bool:
        if value is True or value is False:
            return value
        raise self.make_error("invalid", input=value)


class StrictDecimal(fields.Decimal):
    """A JSON number kept exact, with at most ``places`` decimal places."""

    default_error_messages: ClassVar[dict[str, str]] = {
        "places": "At most {places} decimal places.",
        "too_large": "Number too large.",
    }

    def __init__(self, *, places: int = DECIMAL_PLACES, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_places = places
        # apispec documents Range bounds through _serialize, which gives strings here
        # ("minimum": "30"); OpenAPI requires numbers, so state them in the metadata.
        bounds: dict[str, int | float] = {}
        for validator in self.validators:
            if isinstance(validator, validate.Range):
                for attribute, key in (("min", "minimum"), ("max", "maximum")):
                    value = getattr(validator, attribute)
                    if value is not None:
                        bounds[key] = int(value) if value == int(value) else float(value)
        # The places, in the document too: 0.001 for 3.
        step = Decimal(1).scaleb(-places)
        bounds["multipleOf"] = int(step) if step == int(step) else float(step)
        self.metadata = {**bounds, **self.metadata}

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> Decimal:
        if value is True or value is False or not isinstance(value, int | Decimal):
            raise self.make_error("invalid")
        number = Decimal(value)
        if not number.is_finite():
            raise self.make_error("invalid")
        if number.adjusted() > 12:
            raise self.make_error("too_large")
        exponent = number.as_tuple().exponent
        if isinstance(exponent, int) and -exponent > self.max_places:
            raise self.make_error("places", places=self.max_places)
        # Plain notation (1E+1 becomes 10), so the audit and the database hold what a
        # person would write; the bounds above keep the text short.
        return Decimal(format(number, "f"))

    def _serialize(self, value: Any, attr: Any, obj: Any, **kwargs: Any) -> str | None:
        return None if value is None else str(value)


def within_database_bounds(validators: Any, *, minimum: int = DB_INT_MIN) -> list[Any]:
    """``validators`` and a range for the sides they leave open: ``minimum`` to DB_INT_MAX.

    An integer without a stated bound on one side gets the database's bound there, so that no
    request can carry a number the database cannot hold (a 500 on PostgreSQL, whose
    ``integer`` is 32 bits, and on SQLite beyond 64 bits); one with both bounds stated keeps
    them alone (one message, and the document shows the field's own range).
    """
    if validators is None:
        validators = []
    elif callable(validators):
        validators = [validators]
    validators = list(validators)
    ranges = [v for v in validators if isinstance(v, validate.Range)]
    has_min = any(r.min is not None and r.min >= minimum for r in ranges)
    has_max = any(r.max is not None and r.max <= DB_INT_MAX for r in ranges)
    if not (has_min and has_max):
        validators.append(
            validate.Range(min=None if has_min else minimum, max=None if has_max else DB_INT_MAX)
        )
    return validators


class StrictInteger(fields.Integer):
    """A JSON integer (``18``), never a string or a boolean, within the database's bounds."""

    def __init__(self, *, validate: Any = None, **kwargs: Any) -> None:
        super().__init__(strict=True, validate=within_database_bounds(validate), **kwargs)


class QueryInteger(fields.Integer):
    """An integer in a query string (URS §8: strict input): ASCII digits only, 0 to DB_INT_MAX.

    Python's ``int()`` also takes ``" 1"``, ``"1_0"``, ``"+1"`` and other scripts' digits
    (``"\u0661"``); none of those is an integer here. No sign: no query integer is negative.
    """

    default_error_messages: ClassVar[dict[str, str]] = {
        "invalid": "Not a valid integer: ASCII digits 0-9 only.",
    }

    def __init__(self, *, validate: Any = None, **kwargs: Any) -> None:
        super().__init__(validate=within_database_bounds(validate, minimum=0), **kwargs)

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> int:
        if not isinstance(value, str) or not ASCII_DIGITS.fullmatch(value):
            raise self.make_error("invalid")
        digits = value.lstrip("0") or "0"
        # More digits than DB_INT_MAX has: too large, whatever they say (and int() of
        # thousands of digits is refused by Python itself). The range gives the message.
        return int(digits) if len(digits) <= len(str(DB_INT_MAX)) else DB_INT_MAX + 1


class StrictDate(fields.Date):
    """A calendar date written ``YYYY-MM-DD``."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> dt.date:
        if not isinstance(value, str) or not ISO_DATE.fullmatch(value):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class UtcDateTime(fields.DateTime):
    """Output only: RFC 3339 UTC with microseconds and ``Z``, as in the audit trail."""

    def _serialize(self, value: Any, attr: Any, obj: Any, **kwargs: Any) -> str | None:
        return None if value is None else format_time(value)


def _refuse_site_factor(factor_id: str) -> validate.Validator:
    def refuse(_value: Any) -> None:
        raise ma.ValidationError(
            f"'{factor_id}' is taken from the site's attributes and may not be sent."
        )

    return refuse  # type: ignore[return-value]


def eligibility_field(spec: EligibilityField) -> fields.Field:
    """The marshmallow field of one eligibility answer, from the trial definition."""
    metadata = {"description": spec.label}
    bounds = (
        [validate.Range(min=spec.minimum, max=spec.maximum)]
        if spec.minimum is not None or spec.maximum is not None
        else []
    )
    if spec.type == "boolean":
        return StrictBoolean(required=True, metadata=metadata)
    if spec.type == "integer":
        return StrictInteger(required=True, validate=bounds, metadata=metadata)
    return StrictDecimal(required=True, validate=bounds, metadata=metadata)


# Responses -------------------------------------------------------------------------------


class HealthSchema(ma.Schema):
    status = fields.String(metadata={"example": "ok"})


class ParticipantSchema(ma.Schema):
    """A participant as sites see it: never an arm."""

    screening_number = fields.String()
    site = fields.String()
    status = fields.String(metadata={"enum": list(PARTICIPANT_STATUSES)})
    screened_on = fields.Date()
    stratum = fields.String(allow_none=True)
    randomization_number = fields.String(allow_none=True)
    randomized_at = UtcDateTime(allow_none=True)
    kits = fields.List(fields.String())
    unblinded = fields.Boolean()
    unblindings = fields.List(
        fields.Nested(lambda: UnblinderSchema()),
        metadata={"description": "who unblinded the participant and when; never the arm"},
    )
    corrected_stratum = fields.String(
        allow_none=True,
        metadata={"description": "the stratum a correction says was right (R-FIX); null if none"},
    )
    visits = fields.List(fields.Nested(lambda: VisitStatusSchema()))


class VisitStatusSchema(ma.Schema):
    """One visit of a participant's schedule: never the arm."""

    visit = fields.String()
    week = fields.Integer()
    target_day = fields.String()
    window = fields.Dict(keys=fields.String(), values=fields.String())
    dispenses = fields.Boolean()
    status = fields.String(
        metadata={"enum": ["dispensed", "due", "missed", "stopped", "assessment"]}
    )
    kits = fields.List(fields.String())
    dispensed_on = fields.String(allow_none=True)


class DispensingSchema(ma.Schema):
    """The answer to a dispensing: the visit and its kit numbers, never an arm."""

    visit = fields.String()
    kits = fields.List(fields.String())
    dispensed_on = fields.Date()


class KitStatusChangeSchema(ma.Schema):
    kit_number = fields.String()
    previous = fields.String()
    status = fields.String()
    replacement = fields.String(
        allow_none=True, metadata={"description": "the replacement kit's number, if one was due"}
    )


class KitSchema(ma.Schema):
    """A kit as its site's pharmacist or an admin sees it: never its arm."""

    kit_number = fields.String()
    status = fields.String()
    site = fields.String(allow_none=True, metadata={"description": "null: at the depot"})
    lot = fields.String(metadata={"description": "blinded lot"})
    expires_on = fields.Date(metadata={"description": "blinded expiry"})
    participant = fields.String(allow_none=True)
    visit = fields.String(allow_none=True)
    allocated_at = UtcDateTime(allow_none=True)
    replaces = fields.String(allow_none=True)


class InventorySchema(ma.Schema):
    """A site's kits counted by status and by blinded expiry month, never by arm."""

    site = fields.String()
    counts = fields.Dict(keys=fields.String(), values=fields.Integer())
    by_expiry_month = fields.Dict(
        keys=fields.String(),
        values=fields.Integer(),
        metadata={"description": "available kits by blinded expiry month (YYYY-MM)"},
    )
    dispensable = fields.Integer(
        metadata={"description": "available kits outside the do-not-dispense window"}
    )
    in_transit = fields.Integer()
    kits_allocated_last_28_days = fields.Integer()
    days_of_supply = fields.Integer(
        allow_none=True,
        metadata={"description": "dispensable kits at the last 28 days' rate (null: no rate)"},
    )
    as_of = UtcDateTime()


class ShipmentSchema(ma.Schema):
    """A shipment: its site, status and kit numbers, never an arm or a count by arm."""

    id = fields.Integer()
    site = fields.String()
    status = fields.String(metadata={"enum": ["requested", "in_transit", "received", "cancelled"]})
    origin = fields.String(metadata={"enum": ["manual", "resupply"]})
    lot = fields.String(allow_none=True)
    kits = fields.List(fields.String())
    created_at = UtcDateTime()
    dispatched_at = UtcDateTime(allow_none=True)
    received_at = UtcDateTime(allow_none=True)
    received = fields.Dict(
        keys=fields.String(),
        values=fields.String(),
        allow_none=True,
        metadata={"description": "in the answer to a receipt: each kit and how it arrived"},
    )


class QuarantineChangeSchema(ma.Schema):
    kit_number = fields.String()
    site = fields.String(allow_none=True)
    previous = fields.String()
    status = fields.String()


class ShipmentRequestSchema(StrictSchema):
    """``site`` and either ``count`` (balanced across arms) or ``lot`` (the whole lot)."""

    site = SafeString(required=True, validate=validate.Length(min=1, max=16))
    count = StrictInteger(validate=validate.Range(min=1, max=10_000))
    lot = SafeString(validate=validate.Length(min=1, max=32))

    @validates_schema
    def count_or_lot(self, data: dict[str, Any], **_kwargs: Any) -> None:
        if ("count" in data) == ("lot" in data):
            raise ma.ValidationError("Give either count or lot.", "_schema")

    @post_load
    def make_request(self, data: dict[str, Any], **_kwargs: Any) -> ShipmentRequest:
        return ShipmentRequest(**data)


class ReceiptRequestSchema(StrictSchema):
    """Each kit number of the shipment (in transit) to how it arrived."""

    kits = fields.Dict(
        required=True,
        keys=SafeString(validate=validate.Regexp(KIT_NUMBER_PATTERN)),
        values=SafeString(
            validate=validate.OneOf(RECEIPT_STATUSES), metadata={"enum": list(RECEIPT_STATUSES)}
        ),
        validate=validate.Length(min=1, max=10_000),
    )

    @post_load
    def make_request(self, data: dict[str, Any], **_kwargs: Any) -> ReceiptRequest:
        return ReceiptRequest(**data)


class SupplyReportSchema(ma.Schema):
    """The statistician's supply report: figures by arm, per site and at the depot."""

    as_of = UtcDateTime()
    sites = fields.List(fields.Dict())
    depot = fields.Dict(keys=fields.String(), values=fields.List(fields.Dict()))


class UnblinderSchema(ma.Schema):
    by = fields.String()
    role = fields.String()
    at = UtcDateTime()


class ReceiptSchema(ma.Schema):
    """R-RCPT: what a site keeps to prove later what it was given."""

    seq = fields.Integer()
    entry = fields.String(metadata={"description": "the audit entry's canonical bytes"})
    checkpoint = fields.String(metadata={"description": "signed checkpoint note including it"})
    inclusion_proof = fields.List(fields.String(), metadata={"description": "base64, RFC 9162"})


class RandomizationSchema(ma.Schema):
    """The answer to a randomisation: numbers, never an arm."""

    randomization_number = fields.String()
    stratum = fields.String()
    randomized_at = UtcDateTime()
    kits = fields.List(fields.String())
    receipt = fields.Nested(ReceiptSchema)


class ArmSchema(ma.Schema):
    id = fields.String()
    label = fields.String()
    ratio = fields.Integer()


class RevealedArmSchema(ma.Schema):
    id = fields.String()
    label = fields.String()


class UnblindingSchema(ma.Schema):
    """The answer to an authorised unblinding: the arm, to the requester only."""

    screening_number = fields.String()
    arm = fields.Nested(RevealedArmSchema)
    unblinded_at = UtcDateTime()
    receipt = fields.Nested(ReceiptSchema)


class UnblindingListItemSchema(ma.Schema):
    """One unblinding (R-UNB-3); ``arm`` only for the statistician."""

    screening_number = fields.String()
    site = fields.String()
    randomization_number = fields.String()
    unblinded_at = UtcDateTime()
    by = fields.String()
    role = fields.String()
    reason = fields.String()
    event_reference = fields.String()
    detail = fields.String(allow_none=True)
    audit_seq = fields.Integer()
    arm = fields.Nested(RevealedArmSchema, metadata={"description": "statistician only"})


class NotificationSchema(ma.Schema):
    """An outbox message, as the admin sees it (never an arm: none is in any message)."""

    id = fields.Integer()
    topic = fields.String()
    about = fields.String(allow_none=True)
    recipient = fields.String()
    subject = fields.String()
    status = fields.String()
    attempts = fields.Integer()
    last_error = fields.String(allow_none=True)
    created_at = UtcDateTime()
    last_attempt_at = UtcDateTime(allow_none=True)
    next_attempt_at = UtcDateTime(allow_none=True)
    delivered_at = UtcDateTime(allow_none=True)


class FactorSchema(ma.Schema):
    id = fields.String()
    levels = fields.List(fields.String())
    source = fields.String()


class StratumSchema(ma.Schema):
    number = fields.Integer()
    key = fields.String()


class TrialSchema(ma.Schema):
    """The trial definition without secrets; block sizes and list length only if unblinded."""

    id = fields.String()
    title = fields.String()
    registry_id = fields.String()
    arms = fields.List(fields.Nested(ArmSchema))
    factors = fields.List(fields.Nested(FactorSchema))
    strata = fields.List(fields.Nested(StratumSchema))
    randomisation = fields.Dict(
        metadata={"description": "block_sizes and slots_per_stratum: statistician only"}
    )
    screening = fields.Dict(
        metadata={
            "description": "window_days, and number_pattern: how the service numbers a "
            "site's participants (null: every number is sent)"
        }
    )
    eligibility = fields.Dict()
    kits = fields.Dict()
    dosing = fields.Dict()
    visits = fields.Dict()
    audit = fields.Dict()
    unblinding = fields.Dict()


class ProblemSchema(ma.Schema):
    """RFC 9457 problem details (``application/problem+json``).

    ``type``, ``title``, ``status`` and ``detail`` are always there; a refusal may add members
    of its own (RFC 9457 §3.2), e.g. ``randomization_number`` when already randomised.
    """

    class Meta:
        unknown = ma.INCLUDE  # documents "additionalProperties": true (extension members)

    type = fields.String(
        required=True,
        metadata={
            "example": "/problems/validation",
            "description": "/problems/ and the kind of refusal (URS §8); "
            "/problems/method-not-allowed for a method the path does not take (405)",
        },
    )
    title = fields.String(required=True)
    status = fields.Integer(required=True)
    detail = fields.String(required=True)
    errors = fields.Dict(
        keys=fields.String(),
        values=fields.List(fields.String()),
        metadata={"description": "dotted field path to messages (validation)"},
    )
    failed_rules = fields.List(
        fields.Dict(), metadata={"description": "every failed eligibility rule's id and text"}
    )


# Requests that depend on the trial ---------------------------------------------------------


@dataclass(frozen=True)
class TrialSchemas:
    """The request schemas of one trial (its factors and eligibility fields)."""

    screening: type[ma.Schema]
    randomization: type[ma.Schema]
    unblinding: type[ma.Schema]
    dispensing: type[ma.Schema]
    kit_status: type[ma.Schema]
    reason: type[ma.Schema]
    stratum_correction: type[ma.Schema]


def build_trial_schemas(definition: TrialDefinition) -> TrialSchemas:
    """Build the screening and randomisation request schemas of ``definition``."""
    strata_fields: dict[str, fields.Field] = {}
    for factor in definition.factors:
        if factor.source == "screening":
            strata_fields[factor.id] = SafeString(
                required=True,
                validate=validate.OneOf(factor.levels),
                metadata={"enum": list(factor.levels)},
            )
        else:
            strata_fields[factor.id] = fields.Raw(
                load_only=True,
                validate=_refuse_site_factor(factor.id),
                # JSON Schema's "not": {} admits no value: the factor is never sent.
                metadata={"description": "derived from the site: never send it", "not": {}},
            )
    strata_schema = StrictSchema.from_dict(strata_fields, name="ScreeningStrata")
    eligibility_schema = StrictSchema.from_dict(
        {spec.id: eligibility_field(spec) for spec in definition.eligibility_fields},
        name="EligibilityAnswers",
    )

    pattern = definition.screening_number_pattern
    # With a number pattern the number may be omitted (the service assigns one), never null.
    optional_number: dict[str, Any] = (
        {"required": True} if pattern is None else {"load_default": None, "allow_none": False}
    )

    class ScreeningRequestSchema(StrictSchema):
        screening_number = SafeString(
            **optional_number,
            validate=validate.Regexp(SCREENING_NUMBER, error="1 to 32 of A-Z a-z 0-9 -."),
            metadata={
                "pattern": SCREENING_NUMBER_PATTERN,
                "description": "must begin with your site id and a hyphen (101-... at site "
                "101)"
                + (
                    f"; omit it and the service assigns the site's next number ({pattern})"
                    if pattern is not None
                    else ""
                ),
            },
        )
        site = SafeString(required=True, validate=validate.Length(min=1, max=16))
        screened_on = StrictDate(required=True)
        strata = fields.Nested(strata_schema, required=True)

        @post_load
        def make_request(self, data: dict[str, Any], **_kwargs: Any) -> ScreeningRequest:
            return ScreeningRequest(**data)

    class RandomizationRequestSchema(StrictSchema):
        weight_kg = StrictDecimal(
            required=True, validate=validate.Range(min=WEIGHT_KG_MIN, max=WEIGHT_KG_MAX)
        )
        eligibility = fields.Nested(eligibility_schema, required=True)

        @post_load
        def make_request(self, data: dict[str, Any], **_kwargs: Any) -> RandomizationRequest:
            return RandomizationRequest(**data)

    detail_required = frozenset(definition.unblinding_detail_required)

    class UnblindRequestSchema(StrictSchema):
        reason = SafeString(
            required=True,
            validate=validate.OneOf(definition.unblinding_reasons),
            metadata={"enum": list(definition.unblinding_reasons)},
        )
        event_reference = SafeString(
            required=True,
            validate=[
                validate.Length(min=1, max=64),
                validate.Predicate("isprintable", error="Printable characters only."),
            ],
            metadata={"description": "the safety event's reference, e.g. the SAE number"},
        )
        detail = SafeString(
            load_default=None,
            allow_none=True,
            validate=validate.Length(min=1, max=2000),
            metadata={
                "description": "free text, required for "
                + ", ".join(definition.unblinding_detail_required)
                + "; read by the sponsor's blinded team: never write the arm"
            },
        )

        @validates_schema
        def detail_when_required(self, data: dict[str, Any], **_kwargs: Any) -> None:
            if data.get("reason") in detail_required and not data.get("detail"):
                raise ma.ValidationError(
                    f"Required when the reason is {data['reason']}.", field_name="detail"
                )

        @post_load
        def make_request(self, data: dict[str, Any], **_kwargs: Any) -> UnblindRequest:
            return UnblindRequest(**data)

    visit_ids = [visit.id for visit in definition.visits]

    class DispenseRequestSchema(StrictSchema):
        visit = SafeString(
            required=True, validate=validate.OneOf(visit_ids), metadata={"enum": visit_ids}
        )
        weight_kg = StrictDecimal(
            required=True, validate=validate.Range(min=WEIGHT_KG_MIN, max=WEIGHT_KG_MAX)
        )

        @post_load
        def make_request(self, data: dict[str, Any], **_kwargs: Any) -> DispenseRequest:
            return DispenseRequest(**data)

    class KitStatusRequestSchema(StrictSchema):
        status = SafeString(
            required=True,
            validate=validate.OneOf(KIT_STATUS_CHANGES),
            metadata={"enum": list(KIT_STATUS_CHANGES)},
        )
        reason = reason_field()

        @post_load
        def make_request(self, data: dict[str, Any], **_kwargs: Any) -> KitStatusRequest:
            return KitStatusRequest(**data)

    class ReasonRequestSchema(StrictSchema):
        reason = reason_field()

        @post_load
        def make_request(self, data: dict[str, Any], **_kwargs: Any) -> ReasonRequest:
            return ReasonRequest(**data)

    class StratumCorrectionRequestSchema(StrictSchema):
        strata = fields.Nested(strata_schema, required=True)
        reason = reason_field()

        @post_load
        def make_request(self, data: dict[str, Any], **_kwargs: Any) -> StratumCorrectionRequest:
            return StratumCorrectionRequest(**data)

    return TrialSchemas(
        screening=ScreeningRequestSchema,
        randomization=RandomizationRequestSchema,
        unblinding=UnblindRequestSchema,
        dispensing=DispenseRequestSchema,
        kit_status=KitStatusRequestSchema,
        reason=ReasonRequestSchema,
        stratum_correction=StratumCorrectionRequestSchema,
    )


#: The statuses a pharmacist may set on a kit (URS §8); the state machine says from which.
KIT_STATUS_CHANGES = ("dispensed", "damaged", "lost", "returned")


def reason_field() -> fields.Field:
    """Why: 1 to 500 printable characters (audited as written)."""
    return SafeString(
        required=True,
        validate=[
            validate.Length(min=1, max=500),
            validate.Predicate("isprintable", error="Printable characters only."),
        ],
        metadata={
            "description": "why, audited as written: printable characters only (no control, "
            "format or separator character but the space)"
        },
    )


# Reports and exports (issue 14: R-REP-1, R-REP-2) -------------------------------------------


class EnrollmentCountsSchema(ma.Schema):
    """Participants counted once each: screened, failed screening, randomised, ... ."""

    screened = fields.Integer()
    screen_failed = fields.Integer()
    randomized = fields.Integer()
    withdrawn = fields.Integer()
    discontinued = fields.Integer()
    unblinded = fields.Integer()


class EnrollmentSiteSchema(EnrollmentCountsSchema):
    site = fields.String()


class EnrollmentStratumSchema(EnrollmentCountsSchema):
    stratum = fields.String()


class EnrollmentMonthSchema(EnrollmentCountsSchema):
    month = fields.String(metadata={"description": "YYYY-MM (UTC): the events of that month"})


class RuleFailuresSchema(ma.Schema):
    rule = fields.String()
    participants = fields.Integer()


class ScreenFailuresSchema(ma.Schema):
    by_rule = fields.List(fields.Nested(RuleFailuresSchema))
    outside_window = fields.Integer()


class EnrollmentReportSchema(ma.Schema):
    """The blinded enrollment report (R-REP-1): nothing in it depends on an arm."""

    trial = fields.String(metadata={"description": "the trial's id (never its title)"})
    target = fields.Integer(allow_none=True)
    totals = fields.Nested(EnrollmentCountsSchema)
    sites = fields.List(fields.Nested(EnrollmentSiteSchema))
    strata = fields.List(fields.Nested(EnrollmentStratumSchema))
    months = fields.List(fields.Nested(EnrollmentMonthSchema))
    screen_failures = fields.Nested(ScreenFailuresSchema)


class ReportArmSchema(ma.Schema):
    id = fields.String()
    label = fields.String()
    ratio = fields.Integer()


class SlotsSchema(ma.Schema):
    size = fields.Integer()
    used = fields.Integer()
    left = fields.Integer()


class BalanceOverallSchema(ma.Schema):
    counts = fields.Dict(keys=fields.String(), values=fields.Integer())
    randomized = fields.Integer()
    imbalance = fields.Float(metadata={"description": "max - min of the counts over ratios"})


class BalanceStratumSchema(BalanceOverallSchema):
    number = fields.Integer()
    stratum = fields.String()
    slots = fields.Nested(SlotsSchema)
    warning = fields.String(allow_none=True)


class BalanceReportSchema(ma.Schema):
    """The unblinded balance report (R-REP-2): statistician only."""

    trial = fields.String()
    target = fields.Integer(allow_none=True)
    arms = fields.List(fields.Nested(ReportArmSchema))
    overall = fields.Nested(BalanceOverallSchema)
    strata = fields.List(fields.Nested(BalanceStratumSchema))


class AllocationUnblindingSchema(ma.Schema):
    by = fields.String()
    role = fields.String()
    at = UtcDateTime()
    reason = fields.String()
    event_reference = fields.String()


class AllocationSchema(ma.Schema):
    """One randomised participant with its arm (URS §8 ``GET /allocations``)."""

    screening_number = fields.String()
    site = fields.String()
    stratum = fields.String()
    randomization_number = fields.String()
    arm = fields.String(metadata={"description": "the arm's id"})
    randomized_at = UtcDateTime()
    kits = fields.List(fields.String())
    status = fields.String(metadata={"enum": list(PARTICIPANT_STATUSES)})
    corrected_stratum = fields.String(allow_none=True)
    unblinded = fields.Boolean()
    unblindings = fields.List(fields.Nested(AllocationUnblindingSchema))


class QuarantineRequestSchema(StrictSchema):
    """Why a kit is quarantined or released (audited as written)."""

    reason = reason_field()

    @post_load
    def make_request(self, data: dict[str, Any], **_kwargs: Any) -> ReasonRequest:
        return ReasonRequest(**data)
