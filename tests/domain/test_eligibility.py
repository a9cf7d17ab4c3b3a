"""Eligibility (URS §2): each RECLAIIM rule at its boundary, failures reported together."""

from decimal import Decimal

import pytest

from randomizer.domain import (
    Condition,
    EligibilityField,
    EligibilityRule,
    FailedRule,
    bundled_trial_path,
    check_bounds,
    failed_rules,
    load_trial,
)

TRIAL = load_trial(bundled_trial_path())
RULES = TRIAL.eligibility_rules
TEXT = {rule.id: rule.text for rule in RULES}

ELIGIBLE = {
    "age_years": 45,
    "eular_acr_dm": True,
    "prednisolone_mg_per_day": Decimal("10"),
    "pga_vas_cm": Decimal("5.0"),
    "mmt8": 120,
    "cdasi_activity": 20,
    "malignancy_within_5_years": False,
    "cancer_associated_myositis": False,
    "pgd_vas_cm": Decimal("1.0"),
    "improved_since_screening": False,
}


def answers(**changes):
    return {**ELIGIBLE, **changes}


def failed_ids(given):
    return [rule.id for rule in failed_rules(RULES, given)]


def test_typical_participant_is_eligible():
    assert failed_rules(RULES, ELIGIBLE) == ()


# (rule, field, the boundary value that still passes, the nearest value that fails)
BOUNDARIES = [
    ("I1", "age_years", 18, 17),
    ("I2", "eular_acr_dm", True, False),
    ("I3", "prednisolone_mg_per_day", Decimal("20"), Decimal("20.1")),
    ("I3", "prednisolone_mg_per_day", Decimal("20.00"), Decimal("20.01")),
    ("I4", "pga_vas_cm", Decimal("2.0"), Decimal("1.9")),
    ("E1", "malignancy_within_5_years", False, True),
    ("E2", "cancer_associated_myositis", False, True),
    ("E3", "pgd_vas_cm", Decimal("2.9"), Decimal("3.0")),
    ("E4", "improved_since_screening", False, True),
]


@pytest.mark.requirement("R-CFG")
@pytest.mark.parametrize(("rule_id", "field", "passing", "failing"), BOUNDARIES)
def test_rule_fails_alone_at_its_boundary_and_passes_just_inside(rule_id, field, passing, failing):
    assert failed_rules(RULES, answers(**{field: passing})) == ()
    assert failed_rules(RULES, answers(**{field: failing})) == (FailedRule(rule_id, TEXT[rule_id]),)


@pytest.mark.requirement("R-CFG")
@pytest.mark.parametrize(
    ("mmt8", "cdasi_activity", "eligible"),
    [(142, 14, True), (142, 13, True), (143, 14, True), (143, 13, False)],
)
def test_i5_is_mmt8_at_most_142_or_cdasi_at_least_14(mmt8, cdasi_activity, eligible):
    failed = failed_ids(answers(mmt8=mmt8, cdasi_activity=cdasi_activity))
    assert failed == ([] if eligible else ["I5"])


@pytest.mark.requirement("R-CFG")
def test_every_failure_is_reported_together_in_rule_order_with_its_text():
    everything_wrong = {
        "age_years": 17,
        "eular_acr_dm": False,
        "prednisolone_mg_per_day": Decimal("25"),
        "pga_vas_cm": Decimal("1.5"),
        "mmt8": 150,
        "cdasi_activity": 0,
        "malignancy_within_5_years": True,
        "cancer_associated_myositis": True,
        "pgd_vas_cm": Decimal("7"),
        "improved_since_screening": True,
    }
    assert failed_rules(RULES, everything_wrong) == tuple(
        FailedRule(rule_id, TEXT[rule_id])
        for rule_id in ("I1", "I2", "I3", "I4", "I5", "E1", "E2", "E3", "E4")
    )


def test_two_failures_keep_rule_order_whatever_the_answer_order():
    given = dict(reversed(list(answers(improved_since_screening=True, age_years=10).items())))
    assert failed_ids(given) == ["I1", "E4"]


def test_a_missing_answer_fails_its_rule():
    missing_age = {key: value for key, value in ELIGIBLE.items() if key != "age_years"}
    assert failed_ids(missing_age) == ["I1"]


def test_a_missing_answer_fails_an_any_rule_even_if_another_condition_holds():
    missing_mmt8 = {key: value for key, value in ELIGIBLE.items() if key != "mmt8"}
    assert failed_ids({**missing_mmt8, "cdasi_activity": 50}) == ["I5"]


def test_no_answers_fail_every_rule():
    assert failed_ids({}) == [rule.id for rule in RULES]


def test_a_boolean_never_stands_in_for_a_number():
    # In Python False <= 142 and True == 1; neither may make a participant eligible.
    assert failed_ids(answers(mmt8=False, cdasi_activity=0)) == ["I5"]
    assert failed_ids(answers(age_years=True)) == ["I1"]
    counts_one = EligibilityRule("X1", "Exactly one.", "all", (Condition("n", "==", 1),))
    assert failed_rules([counts_one], {"n": True}) == (FailedRule("X1", "Exactly one."),)


def test_a_number_never_stands_in_for_a_boolean():
    assert failed_ids(answers(eular_acr_dm=1)) == ["I2"]
    assert failed_ids(answers(malignancy_within_5_years=0)) == ["E1"]


def test_not_equal_and_greater_than_conditions():
    rules = [
        EligibilityRule("X1", "Not pregnant.", "all", (Condition("pregnant", "!=", True),)),
        EligibilityRule("X2", "Over 40 kg.", "all", (Condition("weight", ">", Decimal(40)),)),
    ]
    assert failed_rules(rules, {"pregnant": False, "weight": Decimal("40.1")}) == ()
    assert [rule.id for rule in failed_rules(rules, {"pregnant": True, "weight": 40})] == [
        "X1",
        "X2",
    ]


def test_a_non_finite_decimal_answer_fails():
    assert failed_ids(answers(pga_vas_cm=Decimal("NaN"))) == ["I4"]
    assert failed_ids(answers(pgd_vas_cm=Decimal("-Infinity"))) == ["E3"]


@pytest.mark.requirement("R-CFG")
@pytest.mark.parametrize(
    ("field_id", "value", "message"),
    [
        ("pga_vas_cm", Decimal("0"), None),
        ("pga_vas_cm", Decimal("10"), None),
        ("pga_vas_cm", Decimal("10.0"), None),
        ("pga_vas_cm", Decimal("-0.1"), "Must be between 0 and 10."),
        ("pga_vas_cm", Decimal("10.01"), "Must be between 0 and 10."),
        ("age_years", 0, None),
        ("age_years", 150, None),
        ("age_years", 151, "Must be between 0 and 150."),
        ("cdasi_activity", 101, "Must be between 0 and 100."),
        ("prednisolone_mg_per_day", Decimal("1000"), None),
        ("prednisolone_mg_per_day", Decimal("-1"), "Must be between 0 and 1000."),
        ("eular_acr_dm", True, None),
    ],
)
def test_check_bounds_is_inclusive(field_id, value, message):
    assert check_bounds(TRIAL.eligibility_field(field_id), value) == message


def test_check_bounds_with_one_bound_or_none():
    at_least = EligibilityField("dose", "decimal", Decimal(0), None, "Dose")
    at_most = EligibilityField("score", "integer", None, Decimal(10), "Score")
    unbounded = EligibilityField("count", "integer", None, None, "Count")
    assert check_bounds(at_least, Decimal("-0.5")) == "Must be at least 0."
    assert check_bounds(at_least, Decimal("1e9")) is None
    assert check_bounds(at_most, 11) == "Must be at most 10."
    assert check_bounds(at_most, -5) is None
    assert check_bounds(unbounded, 10**12) is None


@pytest.mark.parametrize("value", [True, 1.5, Decimal("NaN")])
def test_check_bounds_refuses_a_value_that_is_not_a_finite_number(value):
    with pytest.raises(TypeError):
        check_bounds(TRIAL.eligibility_field("pga_vas_cm"), value)
