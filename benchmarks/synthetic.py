"""Synthetic audit entries shaped like the service's, for the audit benchmarks.

Mostly screenings, randomisations and kit moves, 400-600 bytes each, in the shapes URS §7
prescribes; deterministic given the random source.
"""

import base64
import hashlib
import random
from datetime import datetime, timedelta
from typing import Any

from audit.entry import format_time

SITES = ["101", "102", "201"]
STAFF = {"101": "coord101", "102": "coord102", "201": "coord201"}
STRATA = [
    f"region={region}|prior_ig={prior}"
    for region in ("north_america", "europe", "rest_of_world")
    for prior in ("yes", "no")
]


def b64(rng: random.Random, size: int) -> str:
    return base64.b64encode(rng.randbytes(size)).decode()


def synthetic_entry(rng: random.Random, seq: int, moment: datetime, prev: str) -> dict[str, Any]:
    """One entry shaped like the service's: mostly screenings, randomisations and kit moves."""
    site = rng.choice(SITES)
    sn = f"{site}-{rng.randrange(10000):04d}"
    kind = rng.random()
    if kind < 0.3:
        action, subject, role = "participant.randomized", sn, "investigator"
        data = {
            "randomization_number": f"R-{seq:07d}",
            "stratum": rng.choice(STRATA),
            "kits": [f"K-{rng.randrange(10**6):06d}" for _ in range(rng.randint(2, 4))],
            "weight_kg": f"{rng.randint(40, 140)}.{rng.randrange(10)}",
            "eligibility": {
                "age_years": rng.randint(18, 85),
                "consent_signed": True,
                "diagnosis_confirmed": True,
                "prior_ig": rng.choice(["yes", "no"]),
                "pregnant": False,
                "egfr_ml_min": rng.randint(30, 120),
            },
            "sealed_arm": {
                "key_id": "dk-2026-01",
                "nonce": b64(rng, 12),
                "ciphertext": b64(rng, 40),
            },
        }
    elif kind < 0.55:
        action, subject, role = "participant.screened", sn, "coordinator"
        data = {
            "site": site,
            "screened_on": (moment.date() - timedelta(days=rng.randrange(3))).isoformat(),
            "strata": {"region": rng.choice(["north_america", "europe"]), "prior_ig": "yes"},
            "window_days": 28,
            "screening_form": {
                "version": "3.1",
                "checksum": hashlib.sha256(sn.encode()).hexdigest(),
            },
        }
    elif kind < 0.85:
        kit = f"K-{rng.randrange(10**6):06d}"
        action, subject, role = "kit.status_changed", kit, "pharmacist"
        data = {
            "kit": kit,
            "site": site,
            "from": "available",
            "to": rng.choice(["dispensed", "damaged", "returned"]),
            "participant": sn,
            "visit": rng.choice(["baseline", "week4", "week8", "week12"]),
            "reason": "dispensed at visit per protocol section 6.2; temperature log checked",
            "replacement_kits": [],
        }
    else:
        action, subject, role = "participant.randomization_refused", sn, "coordinator"
        data = {
            "failed_rules": ["INC-3", "EXC-7"],
            "reason": "ineligible: eGFR below threshold and prior IG within 90 days",
            "eligibility": {"age_years": rng.randint(18, 85), "egfr_ml_min": rng.randint(10, 29)},
            "weight_kg": f"{rng.randint(40, 140)}.{rng.randrange(10)}",
        }
    return {
        "seq": seq,
        "time": format_time(moment),
        "actor": STAFF[site] if role != "investigator" else f"inv{site}",
        "role": role,
        "action": action,
        "subject": subject,
        "data": data,
        "prev": prev,
    }
