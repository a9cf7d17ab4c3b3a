"""The one rendering of every JSON answer: API successes, problem details, stored replays.

Compact, keys sorted, ASCII only (so the bytes never depend on an encoding). Answers are
built from marshmallow dumps and problem bodies, which hold only JSON types; decimals and
dates are rendered as their exact text should one slip through, never as floats.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

from audit.entry import format_time


def _text_of(value: Any) -> str:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.datetime):
        return format_time(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


def render_json(body: Any) -> str:
    """The JSON text of an answer."""
    return json.dumps(
        body, ensure_ascii=True, sort_keys=True, separators=(",", ":"), default=_text_of
    )
