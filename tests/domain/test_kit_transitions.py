"""Kit statuses and their transitions (URS §4, R-KIT-2): the table is the whole rule.

Every status has a row; finished statuses (damaged, lost, returned, expired) have no exits;
an allocated kit may be damaged or lost (and is then replaced, R-KIT-2); any walk of allowed
moves stays among the statuses and never leaves a finished one.
"""

from __future__ import annotations

from collections import deque
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from randomizer.domain.kits import (
    ALLOCATED,
    AVAILABLE,
    DAMAGED,
    DISPENSED,
    EXPIRED,
    IN_DEPOT,
    IN_TRANSIT,
    KIT_STATUSES,
    LOST,
    NEEDS_REPLACEMENT,
    QUARANTINED,
    RETURNED,
    TRANSITIONS,
    KitTransitionError,
    check_transition,
    may_change,
)

pytestmark = pytest.mark.requirement("R-KIT-2")

FINISHED = frozenset({DAMAGED, LOST, RETURNED, EXPIRED})


def reachable_from(start: str) -> set[str]:
    seen, queue = {start}, deque([start])
    while queue:
        for status in TRANSITIONS[queue.popleft()]:
            if status not in seen:
                seen.add(status)
                queue.append(status)
    return seen


def test_the_table_has_a_row_for_every_status_and_names_no_other():
    assert set(TRANSITIONS) == set(KIT_STATUSES)
    assert len(KIT_STATUSES) == len(set(KIT_STATUSES))
    for current, targets in TRANSITIONS.items():
        assert targets <= set(KIT_STATUSES), current


def test_finished_statuses_have_no_exits_and_every_other_status_has_one():
    assert {status for status, targets in TRANSITIONS.items() if not targets} == FINISHED


def test_no_status_moves_to_itself():
    assert all(status not in targets for status, targets in TRANSITIONS.items())


def test_every_status_is_reachable_from_the_depot():
    assert reachable_from(IN_DEPOT) == set(KIT_STATUSES)


def test_the_main_path_is_allowed():
    path = [IN_DEPOT, IN_TRANSIT, AVAILABLE, ALLOCATED, DISPENSED, RETURNED]
    for current, new in pairwise(path):
        check_transition(current, new)


def test_an_allocated_kit_may_be_damaged_or_lost_and_those_need_replacement():
    assert {DAMAGED, LOST} == NEEDS_REPLACEMENT
    for status in NEEDS_REPLACEMENT:
        assert may_change(ALLOCATED, status)
        check_transition(ALLOCATED, status)
        assert status in FINISHED


def test_only_an_available_kit_becomes_allocated():
    # Quarantined, expired or travelling kits are never allocated (R-KIT-3): only site stock.
    assert {status for status, targets in TRANSITIONS.items() if ALLOCATED in targets} == {
        AVAILABLE
    }


def test_check_transition_refuses_a_status_that_does_not_exist():
    with pytest.raises(KitTransitionError, match="'misplaced' is not a kit status"):
        check_transition(AVAILABLE, "misplaced")
    with pytest.raises(KitTransitionError):
        check_transition("misplaced", AVAILABLE)
    assert not may_change("misplaced", AVAILABLE)


def test_check_transition_refuses_a_forbidden_move_and_names_the_allowed_ones():
    with pytest.raises(KitTransitionError, match=r"dispensed cannot become available.*returned"):
        check_transition(DISPENSED, AVAILABLE)
    with pytest.raises(KitTransitionError, match="none: it is final"):
        check_transition(DAMAGED, AVAILABLE)
    with pytest.raises(KitTransitionError):
        check_transition(QUARANTINED, ALLOCATED)


def test_check_transition_agrees_with_may_change_for_every_pair():
    for current in KIT_STATUSES:
        for new in KIT_STATUSES:
            if may_change(current, new):
                check_transition(current, new)
            else:
                with pytest.raises(KitTransitionError):
                    check_transition(current, new)


def test_kit_transition_error_is_a_value_error():
    assert issubclass(KitTransitionError, ValueError)


@given(st.data())
def test_any_walk_of_allowed_moves_stays_among_the_statuses_and_never_leaves_a_finished_one(
    data,
):
    status = IN_DEPOT
    for _ in range(data.draw(st.integers(min_value=0, max_value=40), label="steps")):
        exits = sorted(TRANSITIONS[status])
        if not exits:
            break
        new = data.draw(st.sampled_from(exits), label=f"from {status}")
        check_transition(status, new)
        status = new
        assert status in KIT_STATUSES

    if status in FINISHED:
        for new in KIT_STATUSES:
            assert not may_change(status, new)
            with pytest.raises(KitTransitionError):
                check_transition(status, new)


@given(st.lists(st.sampled_from(KIT_STATUSES), max_size=60))
def test_any_sequence_of_requested_changes_moves_only_where_allowed_and_stops_at_the_end(
    requested,
):
    # A kit in the depot, asked to become each status in turn: allowed moves happen,
    # refused ones change nothing, and once finished the kit stays as it is.
    status, finished = IN_DEPOT, None
    for new in requested:
        if may_change(status, new):
            check_transition(status, new)
            status = new
        else:
            with pytest.raises(KitTransitionError):
                check_transition(status, new)
        assert status in KIT_STATUSES
        if finished is not None:
            assert status == finished
        elif status in FINISHED:
            finished = status


@given(st.sampled_from(KIT_STATUSES), st.text(max_size=20))
def test_no_made_up_status_is_ever_a_valid_move(current, new):
    if new in KIT_STATUSES:
        return
    assert not may_change(current, new)
    with pytest.raises(KitTransitionError):
        check_transition(current, new)
