"""Supply rules (R-SHIP, R-KIT-3): ``[supply]`` levels, balanced counts, resupply quantities,
days of supply, the simulation's rules, and the site view's earliest-expiry-first choice."""

from __future__ import annotations

import random
from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from randomizer.domain import TrialDefinitionError, bundled_trial_path, parse_trial
from randomizer.domain.kits import AVAILABLE
from randomizer.domain.supply import (
    SupplyLevels,
    balanced_counts,
    days_of_supply,
    expiry_month,
    needs_resupply,
    resupply_quantities,
    simulate_resupply,
)
from randomizer.services.kit_stock import ChangedKit, SiteStock

BUNDLED_TEXT = bundled_trial_path().read_text(encoding="utf-8")
BUNDLED_SUPPLY = "[supply]\ntrigger = 60\ntarget = 120\n"


def with_supply(text: str) -> str:
    assert BUNDLED_SUPPLY in BUNDLED_TEXT
    return BUNDLED_TEXT.replace(BUNDLED_SUPPLY, text, 1)


@pytest.mark.requirement("R-SHIP")
def test_supply_levels_have_a_default_and_per_site_overrides():
    definition = parse_trial(
        with_supply(BUNDLED_SUPPLY + '\n[supply.sites."201"]\ntrigger = 80\ntarget = 160\n')
    )
    assert definition.supply.levels("101") == SupplyLevels(60, 120)
    assert definition.supply.levels("201") == SupplyLevels(80, 160)
    assert parse_trial(with_supply("")).supply.levels("101") == SupplyLevels(0, 0)


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("[supply]\ntrigger = 60\ntarget = 50\n", "supply.target"),
        ("[supply]\ntrigger = 5\n", "supply.target"),
        ("[supply]\ntrigger = -1\ntarget = 5\n", "supply.trigger"),
        ("[supply]\ntriger = 6\ntarget = 9\n", "supply.triger"),
        (
            '[supply]\ntrigger = 6\ntarget = 9\n[supply.sites."1 0"]\ntarget = 9\n',
            "supply.sites.1 0",
        ),
        (
            '[supply]\ntrigger = 6\ntarget = 9\n[supply.sites."101"]\nlevel = 3\n',
            "supply.sites.101.level",
        ),
    ],
)
def test_wrong_supply_levels_are_refused_by_name(text, path):
    with pytest.raises(TrialDefinitionError) as refused:
        parse_trial(with_supply(text))
    assert refused.value.path == path


def test_counts_split_by_the_ratio_or_not_at_all():
    assert balanced_counts(10, {"a": 1, "b": 1}) == {"a": 5, "b": 5}
    assert balanced_counts(9, {"a": 2, "b": 1}) == {"a": 6, "b": 3}
    for total in (0, -2, 7):
        with pytest.raises(ValueError):
            balanced_counts(total, {"a": 1, "b": 1})


def test_resupply_restores_every_arm_to_target_counting_what_travels():
    levels = SupplyLevels(10, 30)
    assert needs_resupply({"a": 9, "b": 40}, levels)
    assert not needs_resupply({"a": 10, "b": 10}, levels)
    assert resupply_quantities({"a": 9, "b": 40}, {"a": 5}, levels) == {"a": 16, "b": 0}


def test_days_of_supply_and_expiry_months():
    assert days_of_supply(36, 4, 28) == 252
    assert days_of_supply(36, 0, 28) is None
    assert expiry_month(date(2028, 1, 31)) == "2028-01"


def test_the_simulation_refuses_when_an_arm_is_short_and_resupplies_after_the_lead_time():
    # Two participants of one arm, 3 kits at each of two visits 10 days apart; 4 per arm.
    result = simulate_resupply(
        ["a", "b"],
        ["a", "a"],
        [[3, 3], [3, 3]],
        [0, 10],
        SupplyLevels(3, 6),
        initial_per_arm=4,
        days_between_randomisations=1,
        lead_time_days=5,
    )
    # Day 0: a=1, below 3: 5 of a ordered for day 5. Day 1: refused (a=1 < 3). Day 5: a=6.
    # Day 10: a=3 (not below 3: no order). Total: one refusal, one shipment.
    assert (result.randomised, result.refusals, result.shipments) == (1, 1, 1)


# The site's view: earliest blinded expiry first, then at random (R-KIT-3) -------------------


@pytest.mark.requirement("R-KIT-3")
@given(
    expiries=st.lists(st.integers(0, 5), min_size=1, max_size=40),
    wanted=st.integers(0, 40),
    seed=st.integers(),
)
def test_a_choice_takes_the_earliest_expiry_first(expiries, wanted, seed):
    today = date(2027, 1, 1)
    stock = SiteStock(["a"])
    kits = [
        ChangedKit(f"K0000-{i:04d}", AVAILABLE, today + timedelta(days=e), "")
        for i, e in enumerate(expiries)
    ]
    stock.apply(kits, 1, lambda kit: "a")
    wanted = min(wanted, len(kits))
    chosen = stock.choose("a", today - timedelta(days=1), wanted, random.Random(seed))
    assert len(set(chosen)) == wanted
    expiry = {kit.kit_number: kit.expires_on for kit in kits}
    if chosen:
        latest = max(expiry[k] for k in chosen)
        assert all(expiry[k] >= latest for k in expiry if k not in chosen)


def test_within_one_expiry_the_choice_is_random_not_by_kit_number():
    today = date(2027, 1, 1)
    stock = SiteStock(["a"])
    stock.apply(
        [ChangedKit(f"K0000-{i:04d}", AVAILABLE, today, "") for i in range(10)], 1, lambda k: "a"
    )
    rng = random.Random(3)
    firsts = {stock.choose("a", today - timedelta(days=1), 1, rng)[0] for _ in range(200)}
    assert len(firsts) == 10  # every kit is sometimes the one taken
