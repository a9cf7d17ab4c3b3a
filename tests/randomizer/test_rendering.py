"""One JSON rendering for every answer (randomizer.rendering, R-API).

GET answers (flask-smorest, through the app's JSON provider), POST answers (the idempotency
service's stored text), replays and problem details are all exactly
:func:`render_json` of what they say: compact, keys sorted, ASCII only, nothing around it.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from randomizer.rendering import render_json

pytestmark = pytest.mark.requirement("R-API")


def assert_rendered(response) -> None:
    """The body is byte for byte the one rendering of what it parses to."""
    assert response.data == render_json(json.loads(response.data)).encode("ascii")


# The rendering itself ---------------------------------------------------------------------


def test_render_json_is_compact_sorted_and_ascii():
    text = render_json({"b": [1, {"d": None, "c": True}], "a": "Ig\u00e9 \u2014 \U0001f600"})

    assert text == '{"a":"Ig\\u00e9 \\u2014 \\ud83d\\ude00","b":[1,{"c":true,"d":null}]}'
    assert text.isascii()


def test_render_json_writes_decimals_and_times_as_their_exact_text():
    body = {
        "weight_kg": Decimal("70.50"),
        "at": datetime(2026, 11, 29, 9, 0, tzinfo=timezone(timedelta(hours=1))),
        "on": date(2026, 11, 29),
    }

    assert render_json(body) == (
        '{"at":"2026-11-29T08:00:00.000000Z","on":"2026-11-29","weight_kg":"70.50"}'
    )


def test_render_json_refuses_what_is_not_json():
    with pytest.raises(TypeError):
        render_json({"arms": {"igpro20", "placebo"}})


def test_render_json_of_parsed_rendering_is_itself():
    body = {"z": [1.5, -0, 10**30], "a": {"y": "x", "b": ""}, "m": datetime.now(UTC).date()}
    text = render_json(body)

    assert render_json(json.loads(text)) == text


# Every answer of the API ------------------------------------------------------------------


def test_a_get_answer_is_the_one_rendering(api):
    response = api.get("/trial", "coordinator-101")

    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert_rendered(response)


def test_the_health_answer_is_the_one_rendering(api):
    response = api.get("/health")

    assert response.status_code == 200
    assert response.data == b'{"status":"ok"}'


def test_a_post_answer_and_the_get_of_the_same_participant_are_rendered_alike(api):
    posted = api.screen("101-RENDER-1")
    got = api.get("/participants/101-RENDER-1", "coordinator-101")

    assert posted.status_code == 201
    assert got.status_code == 200
    assert_rendered(posted)
    assert_rendered(got)
    # URS §8: 201 with the participant as GET shows it; the same bytes, then.
    assert posted.data == got.data


def test_a_randomisation_and_its_replay_are_the_one_rendering(api):
    assert api.screen("101-RENDER-2").status_code == 201
    headers = {"Idempotency-Key": "render-2"}

    first = api.randomize("101-RENDER-2", headers=headers)
    replay = api.randomize("101-RENDER-2", headers=headers)

    assert first.status_code == replay.status_code == 201
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert_rendered(first)
    assert replay.data == first.data


@pytest.mark.parametrize(
    ("method", "path", "user", "body", "status"),
    [
        ("GET", "/participants/101-NOBODY", "coordinator-101", None, 404),
        ("GET", "/trial", None, None, 401),
        ("POST", "/participants", "coordinator-101", {"unknown": 1}, 422),
        ("POST", "/participants", "sponsor", {}, 403),
        ("DELETE", "/trial", "coordinator-101", None, 405),
    ],
    ids=["not-found", "unauthorized", "validation", "forbidden", "method"],
)
def test_problem_details_are_the_one_rendering(api, method, path, user, body, status):
    response = api.request(method, path, user, json=body)

    assert response.status_code == status
    assert response.mimetype == "application/problem+json"
    assert_rendered(response)
