"""``sealroom validate``: a trial definition checked before go-live (R-CFG, R-CLI).

Each finding is provoked by changing one thing in the bundled RECLAIIM file, and the
unchanged file is shown to have none, so no check passes for want of looking.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from randomizer.cli import main
from randomizer.domain import bundled_trial_path
from randomizer.services.trial_review import ERROR, WARNING, review_trial_definition

RECLAIIM = bundled_trial_path().read_bytes().decode("utf-8")


def changed(old: str, new: str, text: str = RECLAIIM) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def findings(text: str, **kwargs) -> list[tuple[str, str]]:
    return [(f.severity, f.key) for f in review_trial_definition(text, **kwargs).findings]


@pytest.mark.requirement("R-CFG")
def test_the_bundled_definition_has_no_finding():
    review = review_trial_definition(RECLAIIM)

    assert review.definition is not None and review.definition.id == "RECLAIIM"
    assert review.findings == ()


@pytest.mark.requirement("R-CFG")
def test_more_strata_than_target_participants_leaves_strata_empty():
    text = changed("target_participants = 126", "target_participants = 5")

    review = review_trial_definition(text)

    assert (WARNING, "stratification.factors") in findings(text)
    assert "6 strata for a target of 5" in review.findings[0].message


@pytest.mark.requirement("R-CFG")
def test_tiny_strata_against_the_largest_block_are_reported():
    # 40 over 6 strata is under 7 a stratum: fewer than two blocks of 4.
    text = changed("target_participants = 126", "target_participants = 40")

    assert findings(text) == [(WARNING, "stratification.factors")]


@pytest.mark.requirement("R-CFG")
def test_a_missing_target_is_reported():
    text = changed("target_participants = 126\n", "")

    assert findings(text) == [(WARNING, "trial.target_participants")]


@pytest.mark.requirement("R-CFG")
def test_lists_shorter_than_the_target_are_reported():
    one_stratum = changed("slots_per_stratum = 200", "slots_per_stratum = 100")
    all_strata = changed("slots_per_stratum = 200", "slots_per_stratum = 20")

    assert findings(one_stratum) == [(WARNING, "randomisation.slots_per_stratum")]
    assert findings(all_strata) == [(ERROR, "randomisation.slots_per_stratum")]


@pytest.mark.requirement("R-CFG")
@pytest.mark.requirement("R-BLIND-2")
def test_stock_below_the_heaviest_participants_first_kits_is_an_error():
    # 250 kg x 0.5 g/kg/week x 4 weeks / 40 g = 12.5: 13 kits at randomisation.
    assert findings(RECLAIIM, kits_per_arm=12) == [(ERROR, "kits")]
    assert findings(RECLAIIM, kits_per_arm=13) == [(WARNING, "kits")]
    assert findings(RECLAIIM, kits_per_arm=78) == []  # six dispensing visits of 13


@pytest.mark.requirement("R-CFG")
@pytest.mark.requirement("R-SHIP")
def test_resupply_levels_below_the_heaviest_participants_needs_are_reported():
    low_trigger = changed(
        "[supply]\ntrigger = 60\ntarget = 120", "[supply]\ntrigger = 10\ntarget = 120"
    )
    close_target = changed(
        "[supply]\ntrigger = 60\ntarget = 120", "[supply]\ntrigger = 60\ntarget = 70"
    )
    site = changed(
        "[supply]\ntrigger = 60\ntarget = 120",
        '[supply]\ntrigger = 60\ntarget = 120\n\n[supply.sites."101"]\ntrigger = 12\ntarget = 120',
    )
    none = changed("[supply]\ntrigger = 60\ntarget = 120\n", "")

    assert findings(low_trigger) == [(ERROR, "supply.trigger")]
    assert findings(close_target) == [(WARNING, "supply.target")]
    assert findings(site) == [(ERROR, "supply.sites.101.trigger")]
    assert findings(none) == [(WARNING, "supply.trigger")]


@pytest.mark.requirement("R-CFG")
def test_a_visit_needing_more_than_the_stock_is_an_error():
    text = changed(
        'id = "week5"\nweek = 5\ndispenses_weeks = 4', 'id = "week5"\nweek = 5\ndispenses_weeks = 8'
    )

    assert findings(text, kits_per_arm=20) == [(ERROR, "visits.schedule")]


@pytest.mark.requirement("R-CFG")
def test_every_rule_naming_an_undeclared_field_is_reported():
    text = changed('field = "pgd_vas_cm"', 'field = "pgd_cm"')
    text = changed(
        '{ field = "mmt8", op = "<=", value = 142 }',
        '{ field = "mmt_8", op = "<=", value = 142 }',
        text,
    )

    review = review_trial_definition(text)

    assert review.definition is None
    assert [(f.severity, f.key) for f in review.findings] == [
        (ERROR, "eligibility.rules[4].any[0].field"),
        (ERROR, "eligibility.rules[7].field"),
    ]
    assert "rule E3 tests 'pgd_cm'" in review.findings[1].message


@pytest.mark.requirement("R-CFG")
def test_overlapping_visit_windows_are_an_error():
    text = changed("[visits]\nwindow_days = 3", "[visits]\nwindow_days = 14")

    review = review_trial_definition(text)

    assert {(f.severity, f.key) for f in review.findings} == {(ERROR, "visits.window_days")}
    assert "week1 (days -14 to 14) and week5 (days 14 to 42) overlap" in review.findings[0].message
    assert findings(changed("[visits]\nwindow_days = 3", "[visits]\nwindow_days = 13")) == []


@pytest.mark.requirement("R-CFG")
def test_a_definition_that_does_not_load_is_one_error_naming_the_key():
    text = changed("block_sizes = [2, 4]", "block_sizes = [3]")

    review = review_trial_definition(text)

    assert review.definition is None
    assert [(f.severity, f.key) for f in review.findings] == [
        (ERROR, "randomisation.block_sizes[0]")
    ]


@pytest.mark.requirement("R-CLI")
def test_the_command_prints_findings_and_exits_1_on_an_error(tmp_path: Path):
    good = tmp_path / "good.toml"
    good.write_text(RECLAIIM)
    overlapping = tmp_path / "overlap.toml"
    overlapping.write_text(changed("[visits]\nwindow_days = 3", "[visits]\nwindow_days = 14"))
    tiny = tmp_path / "tiny.toml"
    tiny.write_text(changed("target_participants = 126", "target_participants = 40"))

    ok = CliRunner().invoke(main, ["validate", "--trial", str(good)])
    bad = CliRunner().invoke(main, ["validate", "--trial", str(overlapping)])
    warned = CliRunner().invoke(main, ["validate", "--trial", str(tiny)])
    short = CliRunner().invoke(main, ["validate", "--kits-per-arm", "4"])

    assert (ok.exit_code, ok.output) == (0, f"{good}: RECLAIIM: 0 errors, 0 warnings\n")
    assert bad.exit_code == 1
    assert "error: visits.window_days: the windows of week1" in bad.output
    assert warned.exit_code == 0
    assert "warning: stratification.factors: about 6.7 participants per stratum" in warned.output
    assert short.exit_code == 1 and "error: kits:" in short.output
