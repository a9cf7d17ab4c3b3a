"""The trial definition: the bundled RECLAIIM file says what URS §2 says, and broken
definitions are refused with an error naming the key."""

import hashlib
from decimal import Decimal

import pytest

from randomizer.domain import (
    Arm,
    Condition,
    Factor,
    KitType,
    TrialDefinitionError,
    Visit,
    bundled_trial_path,
    load_trial,
    parse_trial,
    screening_number_for,
)

BUNDLED_TEXT = bundled_trial_path().read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def trial():
    return load_trial(bundled_trial_path())


def edited(old: str, new: str) -> str:
    """The bundled definition with the first ``old`` replaced by ``new``."""
    assert old in BUNDLED_TEXT, f"the bundled file no longer contains {old!r}"
    return BUNDLED_TEXT.replace(old, new, 1)


def between(start: str, end: str) -> str:
    """The bundled text from the first ``start`` up to (not including) the next ``end``."""
    first = BUNDLED_TEXT.index(start)
    return BUNDLED_TEXT[first : BUNDLED_TEXT.index(end, first)]


@pytest.mark.requirement("R-CFG")
def test_bundled_trial_identity(trial):
    assert trial.id == "RECLAIIM"
    assert trial.registry_id == "NCT04044690"
    assert trial.sponsor_protocol == "IgPro20_3007"
    assert "IgPro20" in trial.title
    assert "dermatomyositis" in trial.title


@pytest.mark.requirement("R-CFG")
def test_bundled_arms_are_igpro20_then_placebo_one_to_one(trial):
    assert trial.arms == (Arm("igpro20", "IgPro20", 1), Arm("placebo", "Placebo", 1))


@pytest.mark.requirement("R-CFG")
def test_bundled_factors_region_from_site_then_prior_ig_from_screening(trial):
    assert trial.factors == (
        Factor("region", ("north_america", "europe", "rest_of_world"), "site"),
        Factor("prior_ig", ("yes", "no"), "screening"),
    )
    assert [factor.id for factor in trial.site_factors()] == ["region"]
    assert [factor.id for factor in trial.screening_factors()] == ["prior_ig"]


@pytest.mark.requirement("R-CFG")
@pytest.mark.requirement("R-CFG")
def test_bundled_screening_numbers_begin_with_the_site_id(trial):
    assert trial.screening_number_pattern == "{site}-{n:04d}"
    assert screening_number_for(trial.screening_number_pattern, "101", 7) == "101-0007"
    assert screening_number_for(trial.screening_number_pattern, "201", 12345) == "201-12345"


@pytest.mark.requirement("R-CFG")
@pytest.mark.parametrize("pattern", ["{site}-{n}", "{site}-DM-{n:05d}", "{site}-{n:x}"])
def test_a_number_pattern_may_add_text_and_choose_the_format_of_n(pattern):
    text = edited('number_pattern = "{site}-{n:04d}"', f'number_pattern = "{pattern}"')
    assert parse_trial(text).screening_number_pattern == pattern


@pytest.mark.requirement("R-CFG")
def test_without_a_number_pattern_every_number_is_sent():
    text = edited('number_pattern = "{site}-{n:04d}"', "")
    assert parse_trial(text).screening_number_pattern is None


def test_bundled_randomisation_screening_audit_settings(trial):
    assert trial.block_sizes == (2, 4)
    assert trial.slots_per_stratum == 200
    assert trial.screening_window_days == 21
    assert trial.audit_origin == "sealroom/RECLAIIM"


@pytest.mark.requirement("R-CFG")
def test_bundled_eligibility_fields_and_bounds(trial):
    fields = {
        field.id: (field.type, field.minimum, field.maximum) for field in trial.eligibility_fields
    }
    assert fields == {
        "age_years": ("integer", 0, 150),
        "eular_acr_dm": ("boolean", None, None),
        "prednisolone_mg_per_day": ("decimal", 0, 1000),
        "pga_vas_cm": ("decimal", 0, 10),
        "mmt8": ("integer", 0, 150),
        "cdasi_activity": ("integer", 0, 100),
        "malignancy_within_5_years": ("boolean", None, None),
        "cancer_associated_myositis": ("boolean", None, None),
        "pgd_vas_cm": ("decimal", 0, 10),
        "improved_since_screening": ("boolean", None, None),
    }
    assert all(field.label.strip() for field in trial.eligibility_fields)


@pytest.mark.requirement("R-CFG")
def test_bundled_eligibility_rules_are_the_urs_table(trial):
    rules = {rule.id: (rule.combine, rule.conditions) for rule in trial.eligibility_rules}
    assert list(rules) == ["I1", "I2", "I3", "I4", "I5", "E1", "E2", "E3", "E4"]
    assert rules == {
        "I1": ("all", (Condition("age_years", ">=", 18),)),
        "I2": ("all", (Condition("eular_acr_dm", "==", True),)),
        "I3": ("all", (Condition("prednisolone_mg_per_day", "<=", Decimal(20)),)),
        "I4": ("all", (Condition("pga_vas_cm", ">=", Decimal("2.0")),)),
        "I5": ("any", (Condition("mmt8", "<=", 142), Condition("cdasi_activity", ">=", 14))),
        "E1": ("all", (Condition("malignancy_within_5_years", "==", False),)),
        "E2": ("all", (Condition("cancer_associated_myositis", "==", False),)),
        "E3": ("all", (Condition("pgd_vas_cm", "<", Decimal("3.0")),)),
        "E4": ("all", (Condition("improved_since_screening", "==", False),)),
    }


def test_bundled_rule_texts_are_the_protocols_words(trial):
    texts = {rule.id: rule.text for rule in trial.eligibility_rules}
    assert texts["I1"] == (
        "Male or female participant aged 18 years or older at the time of informed consent."
    )
    assert texts["E3"] == (
        "Severe muscle damage: physician global disease damage (PGD) of 3 cm or more on a "
        "10 cm visual analogue scale."
    )
    assert all(text.endswith(".") for text in texts.values())


@pytest.mark.requirement("R-CFG")
def test_each_rule_says_when_it_holds_in_the_files_terms(trial):
    # What GET /trial and the validation report show beside the protocol's words.
    described = {rule.id: rule.describe() for rule in trial.eligibility_rules}

    assert described["I2"] == "eular_acr_dm == true"
    assert described["I4"] == "pga_vas_cm >= 2.0"
    assert described["I5"] == "mmt8 <= 142 or cdasi_activity >= 14"
    assert described["E3"] == "pgd_vas_cm < 3.0"


@pytest.mark.requirement("R-CFG")
def test_bundled_kits_and_dosing(trial):
    assert trial.kit_types == (
        KitType("igpro20", trial.kit_type("placebo").description, Decimal(40)),
        KitType("placebo", trial.kit_type("igpro20").description, Decimal(0)),
    )
    assert trial.grams_per_kit == Decimal(40)
    assert trial.do_not_dispense_days == 30
    assert trial.grams_per_kg_per_week == Decimal("0.5")


@pytest.mark.requirement("R-CFG")
def test_bundled_visit_schedule(trial):
    assert trial.visits == (
        Visit("week1", 1, 4),
        Visit("week5", 5, 4),
        Visit("week9", 9, 4),
        Visit("week13", 13, 4),
        Visit("week17", 17, 4),
        Visit("week21", 21, 4),
        Visit("week25", 25, 0),
    )
    assert trial.visit_window_days == 3
    assert trial.first_visit() == Visit("week1", 1, 4)


def test_visit_days_count_from_randomisation_day(trial):
    assert trial.visit("week1").day() == 0
    assert trial.visit("week5").day() == 28
    assert trial.visit("week25").day() == 168
    assert trial.visit("week21").dispenses
    assert not trial.visit("week25").dispenses


def test_first_visit_is_the_smallest_week_wherever_it_is_listed():
    text = edited(
        'id = "week1"  # baseline: randomisation and first kits\nweek = 1',
        'id = "week1"\nweek = 30',
    )
    assert parse_trial(text).first_visit().id == "week5"


@pytest.mark.requirement("R-LIST")
def test_bundled_strata_numbered_in_cartesian_order_last_factor_fastest(trial):
    assert [(stratum.number, stratum.key) for stratum in trial.strata()] == [
        (1, "region=north_america|prior_ig=yes"),
        (2, "region=north_america|prior_ig=no"),
        (3, "region=europe|prior_ig=yes"),
        (4, "region=europe|prior_ig=no"),
        (5, "region=rest_of_world|prior_ig=yes"),
        (6, "region=rest_of_world|prior_ig=no"),
    ]


@pytest.mark.requirement("R-LIST")
def test_stratum_lookup_by_levels_and_by_number(trial):
    stratum = trial.stratum_for({"prior_ig": "no", "region": "europe"})
    assert stratum.number == 4
    assert stratum.key == "region=europe|prior_ig=no"
    assert stratum.level("region") == "europe"
    assert stratum.level("prior_ig") == "no"
    assert trial.stratum(4) == stratum


@pytest.mark.parametrize(
    ("levels", "error"),
    [
        ({"region": "europe"}, KeyError),
        ({}, KeyError),
        ({"region": "europe", "prior_ig": "maybe"}, ValueError),
        ({"region": "europe", "prior_ig": "no", "sex": "f"}, ValueError),
    ],
)
def test_stratum_for_refuses_incomplete_or_unknown_levels(trial, levels, error):
    with pytest.raises(error):
        trial.stratum_for(levels)


@pytest.mark.parametrize("number", [0, 7, -1])
def test_unknown_stratum_number_is_a_key_error(trial, number):
    with pytest.raises(KeyError):
        trial.stratum(number)


def test_unknown_ids_are_key_errors(trial):
    with pytest.raises(KeyError):
        trial.arm("active")
    with pytest.raises(KeyError):
        trial.visit("week2")
    with pytest.raises(KeyError):
        trial.stratum(1).level("sex")
    assert trial.arm("placebo").label == "Placebo"


def test_source_sha256_is_the_hash_of_the_file_bytes(trial):
    assert trial.source_sha256 == hashlib.sha256(bundled_trial_path().read_bytes()).hexdigest()
    assert parse_trial(BUNDLED_TEXT) == trial
    assert parse_trial(BUNDLED_TEXT + "\n").source_sha256 != trial.source_sha256


def test_decimals_may_be_toml_floats_or_strings_and_stay_exact():
    as_float = parse_trial(edited("grams_per_kg_per_week = 0.5", "grams_per_kg_per_week = 0.1"))
    as_string = parse_trial(edited("grams_per_kg_per_week = 0.5", 'grams_per_kg_per_week = "0.1"'))
    assert as_float.grams_per_kg_per_week == Decimal("0.1")
    assert as_string.grams_per_kg_per_week == Decimal("0.1")


def test_audit_origin_defaults_to_sealroom_slash_trial_id():
    trial = parse_trial(edited('[audit]\norigin = "sealroom/RECLAIIM"\n', ""))
    assert trial.audit_origin == "sealroom/RECLAIIM"


def test_sponsor_protocol_is_optional():
    assert parse_trial(edited('sponsor_protocol = "IgPro20_3007"\n', "")).sponsor_protocol is None


def test_a_rule_may_combine_conditions_with_all():
    trial = parse_trial(
        edited(
            'field = "age_years"\nop = ">="\nvalue = 18',
            'all = [{ field = "age_years", op = ">=", value = 18 },'
            ' { field = "age_years", op = "<=", value = 80 }]',
        )
    )
    assert trial.eligibility_rules[0].combine == "all"
    assert len(trial.eligibility_rules[0].conditions) == 2


# Each case: (what is broken, replace this, with this, the key path the error must name).
BROKEN_DEFINITIONS = [
    ("toml syntax", "[randomisation]", "[randomisation", "(file)"),
    ("unknown top-level table", "[screening]", "[extras]\nx = 1\n\n[screening]", "extras"),
    ("missing table", "[dosing]\ngrams_per_kg_per_week = 0.5\n", "", "dosing"),
    ("missing trial id", 'id = "RECLAIIM"\n', "", "trial.id"),
    ("blank title", between("title = ", "registry_id"), 'title = " "\n', "trial.title"),
    (
        "registry id not a string",
        'registry_id = "NCT04044690"',
        "registry_id = 4044690",
        "trial.registry_id",
    ),
    ("one arm only", '[[arms]]\nid = "placebo"\nlabel = "Placebo"\nratio = 1\n', "", "arms"),
    ("arm id missing", 'id = "igpro20"\nlabel', "label", "arms[0].id"),
    ("arm id invalid", 'id = "igpro20"', 'id = "IgPro 20"', "arms[0].id"),
    ("duplicate arm id", 'id = "placebo"\nlabel', 'id = "igpro20"\nlabel', "arms[1].id"),
    ("zero ratio", "ratio = 1", "ratio = 0", "arms[0].ratio"),
    ("boolean ratio", "ratio = 1", "ratio = true", "arms[0].ratio"),
    ("float ratio", "ratio = 1", "ratio = 1.0", "arms[0].ratio"),
    ("unknown arm key", 'label = "IgPro20"', 'label = "IgPro20"\ncolour = "red"', "arms[0].colour"),
    (
        "no factors",
        between("[[stratification.factors]]", "[randomisation]"),
        "[stratification]\nfactors = []\n\n",
        "stratification.factors",
    ),
    (
        "unknown factor key",
        'source = "site"',
        'source = "site"\nweight = 1',
        "stratification.factors[0].weight",
    ),
    (
        "bad factor source",
        'source = "site"',
        'source = "typed"',
        "stratification.factors[0].source",
    ),
    (
        "duplicate level",
        '"rest_of_world"]',
        '"europe"]',
        "stratification.factors[0].levels[2]",
    ),
    ("invalid level", '"north_america"', '"North America"', "stratification.factors[0].levels[0]"),
    ("empty levels", 'levels = ["yes", "no"]', "levels = []", "stratification.factors[1].levels"),
    (
        "duplicate factor id",
        'id = "prior_ig"',
        'id = "region"',
        "stratification.factors[1].id",
    ),
    (
        "block size not a multiple",
        "block_sizes = [2, 4]",
        "block_sizes = [2, 3]",
        "randomisation.block_sizes[1]",
    ),
    ("no block sizes", "block_sizes = [2, 4]", "block_sizes = []", "randomisation.block_sizes"),
    (
        "negative block size",
        "block_sizes = [2, 4]",
        "block_sizes = [-2, 4]",
        "randomisation.block_sizes[0]",
    ),
    (
        "repeated block size",
        "block_sizes = [2, 4]",
        "block_sizes = [2, 4, 2]",
        "randomisation.block_sizes[2]",
    ),
    (
        "zero slots",
        "slots_per_stratum = 200",
        "slots_per_stratum = 0",
        "randomisation.slots_per_stratum",
    ),
    ("negative window", "window_days = 21", "window_days = -1", "screening.window_days"),
    (
        "pattern not a string",
        'number_pattern = "{site}-{n:04d}"',
        "number_pattern = 4",
        "screening.number_pattern",
    ),
    (
        "pattern without the site first",
        'number_pattern = "{site}-{n:04d}"',
        'number_pattern = "{n:04d}-{site}"',
        "screening.number_pattern",
    ),
    (
        "pattern without a hyphen after the site",
        'number_pattern = "{site}-{n:04d}"',
        'number_pattern = "{site}{n:04d}"',
        "screening.number_pattern",
    ),
    (
        "pattern with another field",
        'number_pattern = "{site}-{n:04d}"',
        'number_pattern = "{site}-{year}-{n}"',
        "screening.number_pattern",
    ),
    (
        "pattern without n",
        'number_pattern = "{site}-{n:04d}"',
        'number_pattern = "{site}-0001"',
        "screening.number_pattern",
    ),
    (
        "pattern with n twice",
        'number_pattern = "{site}-{n:04d}"',
        'number_pattern = "{site}-{n}-{n}"',
        "screening.number_pattern",
    ),
    (
        "pattern with a positional field",
        'number_pattern = "{site}-{n:04d}"',
        'number_pattern = "{site}-{}"',
        "screening.number_pattern",
    ),
    (
        "pattern with a conversion",
        'number_pattern = "{site}-{n:04d}"',
        'number_pattern = "{site}-{n!r}"',
        "screening.number_pattern",
    ),
    (
        "pattern not a number format",
        'number_pattern = "{site}-{n:04d}"',
        'number_pattern = "{site}-{n:s}"',
        "screening.number_pattern",
    ),
    (
        "pattern with a nested field",
        'number_pattern = "{site}-{n:04d}"',
        'number_pattern = "{site}-{n:{width}}"',
        "screening.number_pattern",
    ),
    (
        "pattern with an attribute of n",
        'number_pattern = "{site}-{n:04d}"',
        'number_pattern = "{site}-{n.real}"',
        "screening.number_pattern",
    ),
    (
        "pattern not a format string",
        'number_pattern = "{site}-{n:04d}"',
        'number_pattern = "{site}-{n"',
        "screening.number_pattern",
    ),
    (
        "pattern too long for a long site id",
        'number_pattern = "{site}-{n:04d}"',
        'number_pattern = "{site}-{n:020d}"',
        "screening.number_pattern",
    ),
    (
        "pattern with a character numbers may not hold",
        'number_pattern = "{site}-{n:04d}"',
        'number_pattern = "{site}-{n}_A"',
        "screening.number_pattern",
    ),
    (
        "pattern with thousands separators",
        'number_pattern = "{site}-{n:04d}"',
        'number_pattern = "{site}-{n:,}"',
        "screening.number_pattern",
    ),
    ("unknown field type", 'type = "integer"', 'type = "text"', "eligibility.fields[0].type"),
    (
        "minimum above maximum",
        "minimum = 0\nmaximum = 150",
        "minimum = 151\nmaximum = 150",
        "eligibility.fields[0].maximum",
    ),
    (
        "bound on a boolean",
        'type = "boolean"',
        'type = "boolean"\nminimum = 0',
        "eligibility.fields[1].minimum",
    ),
    (
        "decimal bound on an integer",
        "minimum = 0\nmaximum = 150",
        "minimum = 0.5\nmaximum = 150",
        "eligibility.fields[0].minimum",
    ),
    ("duplicate field id", 'id = "mmt8"', 'id = "age_years"', "eligibility.fields[4].id"),
    (
        "undeclared rule field",
        'field = "prednisolone_mg_per_day"',
        'field = "foo"',
        "eligibility.rules[2].field",
    ),
    (
        "order on a boolean",
        'field = "eular_acr_dm"\nop = "=="',
        'field = "eular_acr_dm"\nop = "<"',
        "eligibility.rules[1].op",
    ),
    ("number for a boolean", "value = true", "value = 1", "eligibility.rules[1].value"),
    ("string for an integer", "value = 18", 'value = "18"', "eligibility.rules[0].value"),
    ("decimal for an integer", "value = 18", "value = 18.5", "eligibility.rules[0].value"),
    ("boolean for a decimal", "value = 2.0", "value = true", "eligibility.rules[3].value"),
    ("unknown operator", 'op = ">="', 'op = "=>"', "eligibility.rules[0].op"),
    (
        "undeclared field in any",
        'field = "cdasi_activity"',
        'field = "cdasi"',
        "eligibility.rules[4].any[1].field",
    ),
    (
        "unknown key in a condition",
        'op = "<=", value = 142',
        'op = "<=", value = 142, unit = "x"',
        "eligibility.rules[4].any[0].unit",
    ),
    (
        "empty any",
        between("any = [", "[[eligibility.rules]]"),
        "any = []\n\n",
        "eligibility.rules[4].any",
    ),
    ("both single and any", "any = [\n", 'field = "mmt8"\nany = [\n', "eligibility.rules[4]"),
    (
        "rule without condition",
        'field = "age_years"\nop = ">="\nvalue = 18\n',
        "",
        "eligibility.rules[0]",
    ),
    ("duplicate rule id", 'id = "I2"', 'id = "I1"', "eligibility.rules[1].id"),
    (
        "blank rule text",
        between('text = "Male', "field"),
        'text = " "\n',
        "eligibility.rules[0].text",
    ),
    (
        "rule text missing",
        between('text = "Male', "field"),
        "",
        "eligibility.rules[0].text",
    ),
    ("kit type for an unknown arm", 'arm = "placebo"', 'arm = "albumin"', "kits.types[1].arm"),
    ("two kit types for one arm", 'arm = "placebo"', 'arm = "igpro20"', "kits.types[1].arm"),
    (
        "no kit type for an arm",
        between('[[kits.types]]\narm = "placebo"', "# Kits per"),
        "",
        "kits.types",
    ),
    ("zero grams per kit", "grams_per_kit = 40", "grams_per_kit = 0", "kits.grams_per_kit"),
    ("negative grams of IgG", "grams_igg = 0", "grams_igg = -1", "kits.types[1].grams_igg"),
    (
        "not a decimal",
        "grams_per_kg_per_week = 0.5",
        'grams_per_kg_per_week = "half"',
        "dosing.grams_per_kg_per_week",
    ),
    (
        "not a number",
        "grams_per_kg_per_week = 0.5",
        "grams_per_kg_per_week = nan",
        "dosing.grams_per_kg_per_week",
    ),
    (
        "negative do-not-dispense days",
        "do_not_dispense_days = 30",
        "do_not_dispense_days = -30",
        "kits.do_not_dispense_days",
    ),
    ("week zero", "week = 1", "week = 0", "visits.schedule[0].week"),
    ("duplicate week", "week = 5", "week = 1", "visits.schedule[1].week"),
    ("duplicate visit id", 'id = "week5"', 'id = "week1"', "visits.schedule[1].id"),
    (
        "negative dispensed weeks",
        "dispenses_weeks = 0",
        "dispenses_weeks = -4",
        "visits.schedule[6].dispenses_weeks",
    ),
    (
        "no visits",
        between("[[visits.schedule]]", "[audit]"),
        "schedule = []\n\n",
        "visits.schedule",
    ),
    (
        "unknown visit key",
        "dispenses_weeks = 0",
        "dispenses_weeks = 0\ndays = 2",
        "visits.schedule[6].days",
    ),
    ("missing visit window", "[visits]\nwindow_days = 3", "[visits]", "visits.window_days"),
    (
        "origin with a space",
        'origin = "sealroom/RECLAIIM"',
        'origin = "sealroom RECLAIIM"',
        "audit.origin",
    ),
    (
        "origin not ASCII",
        'origin = "sealroom/RECLAIIM"',
        'origin = "sealroom/RÉCLAIIM"',
        "audit.origin",
    ),
    ("origin empty", 'origin = "sealroom/RECLAIIM"', 'origin = ""', "audit.origin"),
]


@pytest.mark.requirement("R-CFG")
@pytest.mark.parametrize(
    ("old", "new", "path"),
    [case[1:] for case in BROKEN_DEFINITIONS],
    ids=[case[0] for case in BROKEN_DEFINITIONS],
)
def test_broken_definition_is_refused_naming_the_key(old, new, path):
    with pytest.raises(TrialDefinitionError) as refused:
        parse_trial(edited(old, new))
    assert str(refused.value).startswith(f"{path}: "), str(refused.value)
    assert refused.value.path == path
    assert refused.value.problem


@pytest.mark.requirement("R-CFG")
def test_block_size_error_says_what_is_wrong():
    with pytest.raises(TrialDefinitionError) as refused:
        parse_trial(edited("block_sizes = [2, 4]", "block_sizes = [2, 3]"))
    assert str(refused.value) == (
        "randomisation.block_sizes[1]: 3 is not a multiple of the sum of the arms' ratios (2)"
    )


@pytest.mark.requirement("R-CFG")
def test_unknown_key_error_names_the_key_and_what_was_expected():
    with pytest.raises(TrialDefinitionError) as refused:
        parse_trial(edited("ratio = 1", "ratoi = 1"))
    assert str(refused.value) == "arms[0].ratoi: unknown key (expected one of: id, label, ratio)"


def test_undeclared_field_error_wording():
    with pytest.raises(TrialDefinitionError) as refused:
        parse_trial(edited('field = "prednisolone_mg_per_day"', 'field = "foo"'))
    assert str(refused.value) == (
        "eligibility.rules[2].field: 'foo' is not a declared eligibility field"
    )


def test_definition_errors_are_value_errors():
    assert issubclass(TrialDefinitionError, ValueError)


def test_load_trial_refuses_a_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "trial.toml"
    path.write_bytes(b'[trial]\nid = "\xff"\n')
    with pytest.raises(TrialDefinitionError, match=r"^\(file\): "):
        load_trial(path)


def test_bundled_trial_path_refuses_path_tricks():
    with pytest.raises(ValueError):
        bundled_trial_path("../setup")
