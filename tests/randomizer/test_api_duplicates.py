"""A body naming a member twice is refused, not silently read as its last (URS §8, issue 7).

The JSON twin of finding 8's ``start=0&start=5``: Python's JSON keeps the last of two
members of one name, so ``{"weight_kg": 70, "weight_kg": 300}`` was a randomisation at
300 kg although a reader (or a proxy, or an audit reviewer) may take the first. Such a body
is a 400 problem naming the member; a refused randomisation is audited, as every refusal is.
"""

from __future__ import annotations

import pytest

from randomizer.models import AuditEntry, Participant
from tests.randomizer.test_api_errors import assert_problem, count, last_entry, post_raw

DUPLICATES = [
    pytest.param(b'{"weight_kg": 70, "weight_kg": 300, "eligibility": {}}', "weight_kg", id="top"),
    pytest.param(
        b'{"weight_kg": 70, "eligibility": {"age_years": 54, "age_years": 5}}',
        "age_years",
        id="nested",
    ),
    pytest.param(b'{"a": [{"b": 1, "b": 1}]}', "b", id="in-a-list-same-value"),
    pytest.param(b'{"\\u0000": 1, "\\u0000": 2}', "\\u0000", id="nul-name"),
    pytest.param(b'{"\\ud800": 1, "\\ud800": 2}', "\\ud800", id="lone-surrogate-name"),
]


@pytest.mark.requirement("R-NF-3")
@pytest.mark.parametrize(("data", "name"), DUPLICATES)
def test_a_member_sent_twice_is_a_400_problem_naming_it(api, db, data, name):
    assert api.screen("101-0001").status_code == 201
    before = count(db, AuditEntry)

    screened = post_raw(api, "/participants", data)
    randomized = post_raw(api, "/participants/101-0001/randomize", data)

    for response in (screened, randomized):
        problem = assert_problem(response, 400)
        assert problem["errors"] == {"_body": [f'The member "{name}" is sent more than once.']}
    assert count(db, Participant) == 1
    assert count(db, AuditEntry) == before + 1
    assert last_entry(db)["action"] == "participant.randomization_refused"
    shown = api.get("/participants/101-0001", "coordinator-101").get_json()
    assert shown["status"] == "screened"


@pytest.mark.requirement("R-NF-3")
def test_members_of_one_name_in_different_objects_are_no_duplicates(api):
    assert api.screen("101-0001").status_code == 201

    # Two objects with a "b" each: the body's shape is wrong (422), but it is valid JSON.
    problem = assert_problem(
        post_raw(api, "/participants/101-0001/randomize", b'[{"b": 1}, {"b": 2}]')
    )
    assert problem["status"] == 422
    assert api.randomize("101-0001").status_code == 201
