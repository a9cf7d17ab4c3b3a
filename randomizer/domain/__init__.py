"""The pure domain core: trial definition, strata, randomisation lists, eligibility, dosing.

Standard library only; no Flask, no SQLAlchemy. Everything here is plain functions over frozen
data, tested without a database.
"""

from randomizer.domain.dosing import (
    WEIGHT_KG_MAX,
    WEIGHT_KG_MIN,
    kits_for_visit,
    randomisable_until,
    visit_window,
)
from randomizer.domain.eligibility import (
    FailedRule,
    check_bounds,
    condition_holds,
    failed_rules,
    rule_satisfied,
)
from randomizer.domain.lists import (
    LIST_DOMAIN,
    RandomStream,
    definition_commitment,
    generate_lists,
    parse_seed,
    randomization_number,
    seed_commitment,
    seed_matches,
    stratum_list,
)
from randomizer.domain.trial import (
    Arm,
    Condition,
    EligibilityField,
    EligibilityRule,
    Factor,
    KitType,
    Stratum,
    TrialDefinition,
    TrialDefinitionError,
    Visit,
    bundled_trial_path,
    load_trial,
    parse_trial,
    screening_number_for,
)

__all__ = [
    "LIST_DOMAIN",
    "WEIGHT_KG_MAX",
    "WEIGHT_KG_MIN",
    "Arm",
    "Condition",
    "EligibilityField",
    "EligibilityRule",
    "Factor",
    "FailedRule",
    "KitType",
    "RandomStream",
    "Stratum",
    "TrialDefinition",
    "TrialDefinitionError",
    "Visit",
    "bundled_trial_path",
    "check_bounds",
    "condition_holds",
    "definition_commitment",
    "failed_rules",
    "generate_lists",
    "kits_for_visit",
    "load_trial",
    "parse_seed",
    "parse_trial",
    "randomisable_until",
    "randomization_number",
    "rule_satisfied",
    "screening_number_for",
    "seed_commitment",
    "seed_matches",
    "stratum_list",
    "visit_window",
]
