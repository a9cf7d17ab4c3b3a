"""The scripted demo run the validation report shows (R-VAL), end to end on each backend.

``sealroom init-demo`` creates the RECLAIIM demo; a coordinator screens and randomises one
participant, a pharmacist dispenses week 5, the site's investigator unblinds them, and
``sealroom audit verify`` checks the whole trail against the verifier key as published at
``GET /audit/verifier-key`` (given explicitly, as an auditor would after obtaining it out of
band). The list seed is fresh and discarded, so that nothing in the report leads to the arm.
The configuration under test is read as a blinded sponsor sees it (``GET /trial``),
with the definition's salted commitment from the audit trail's ``trial.initialised`` entry:
never the plain SHA-256 of the file, which would let a blinded reader confirm a guess of the
block sizes.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from randomizer import create_app
from randomizer.cli import main
from tests.conftest import BACKENDS, ApiClient, Clock

SAE = {"reason": "serious_adverse_event", "event_reference": "SAE-VAL-0001"}


def sealroom(url: str, directory: Path, *args: str) -> Any:
    """``sealroom --database-url URL ARGS`` with the demo's keys, in process."""
    environment = {
        "SEALROOM_INSTANCE_DIR": str(directory),
        "SEALROOM_KEYS_DIR": str(directory / "keys"),
        "SEALROOM_DATABASE_URL": None,
        "SEALROOM_MASTER_KEY": None,
        "SEALROOM_LIST_SEED": None,
    }
    return CliRunner().invoke(main, ["--database-url", url, *args], env=environment)


def checkpoint_size(note: str) -> int:
    """The tree size a C2SP checkpoint note's body states (its second line)."""
    return int(note.splitlines()[1])


@pytest.mark.requirement("R-VAL")
@pytest.mark.requirement("R-CLI")
@pytest.mark.requirement("R-AUD")
@pytest.mark.parametrize("backend", BACKENDS)
def test_the_scripted_demo_screens_randomises_dispenses_unblinds_and_verifies(
    backend: str, scratch: Any, tmp_path: Path, validation_evidence: dict[str, Any]
) -> None:
    url = scratch.new_url(backend)
    tokens_file = tmp_path / "tokens.json"
    # A fresh seed, discarded after the run: with a published one (Appendix A's), anyone could
    # derive the demo participant's arm from the randomisation number the report shows.
    seed_file = tmp_path / "seed.hex"
    seed_file.write_text(secrets.token_hex(32) + "\n")
    os.chmod(seed_file, 0o600)
    created = sealroom(
        url, tmp_path, "init-demo", "--seed-file", str(seed_file), "--tokens-out", str(tokens_file)
    )
    seed_file.unlink()
    assert created.exit_code == 0, created.output
    tokens = {t["user"]: t["token"] for t in json.loads(tokens_file.read_text())}

    from randomizer.config import Settings

    settings = Settings.from_env(
        {}, database_url=url, instance_dir=tmp_path, keys_dir=tmp_path / "keys"
    )
    clock = Clock()
    app = create_app({"settings": settings, "clock": clock, "TESTING": True})
    api = ApiClient(app.test_client(), tokens, clock)
    try:
        trial = api.get("/trial", "sponsor")
        assert trial.status_code == 200
        first = api.get("/audit/entries?start=0&end=50", "auditor")
        assert first.status_code == 200
        initialised = next(
            entry
            for entry in map(json.loads, first.get_data(as_text=True).splitlines())
            if entry["action"] == "trial.initialised"
        )
        steps: list[dict[str, Any]] = []

        screened = api.screen("101-VAL-1", prior_ig="no")
        assert screened.status_code == 201, screened.get_json()
        steps.append({"step": "screen", "status": 201, "participant": "101-VAL-1"})

        randomized = api.randomize("101-VAL-1", weight_kg=70)
        assert randomized.status_code == 201, randomized.get_json()
        body = randomized.get_json()
        assert body["receipt"]["seq"] >= 0
        steps.append(
            {
                "step": "randomise",
                "status": 201,
                "randomization_number": body["randomization_number"],
                "stratum": body["stratum"],
                "kits": len(body["kits"]),
                "receipt_seq": body["receipt"]["seq"],
            }
        )

        clock.advance(days=28)  # week5 falls on day 28
        dispensed = api.post(
            "/participants/101-VAL-1/dispense",
            "pharmacist-101",
            json={"visit": "week5", "weight_kg": 70},
        )
        assert dispensed.status_code == 201, dispensed.get_json()
        steps.append(
            {
                "step": "dispense",
                "status": 201,
                "visit": "week5",
                "kits": len(dispensed.json["kits"]),
            }
        )

        unblinded = api.post("/participants/101-VAL-1/unblind", "investigator-101", json=SAE)
        assert unblinded.status_code == 200, unblinded.get_json()
        assert unblinded.json["arm"]["id"] in {arm["id"] for arm in trial.json["arms"]}
        # The arm stays out of the report: it is read by blinded people too.
        steps.append({"step": "unblind", "status": 200, "by": "investigator-101"})

        verifier_key = api.get("/audit/verifier-key").get_data(as_text=True).strip()
        checkpoint = api.get("/audit/checkpoint", "auditor").get_data(as_text=True)
    finally:
        app.extensions["sealroom"].db.dispose()

    verified = sealroom(url, tmp_path, "audit", "verify", "--verifier-key", verifier_key)
    assert verified.exit_code == 0, verified.output
    assert checkpoint_size(checkpoint) > body["receipt"]["seq"]
    steps.append(
        {
            "step": "sealroom audit verify --verifier-key KEY",
            "exit_code": verified.exit_code,
            "output": verified.output.strip().splitlines(),
        }
    )

    definition = trial.json
    assert "block_sizes" not in json.dumps(definition)
    assert definition_sha256_absent(initialised, definition)
    validation_evidence.update(
        {
            "backend": backend,
            "configuration_under_test": {
                "trial": definition.get("id"),
                "registry_id": definition.get("registry_id"),
                "definition_commitment": initialised["data"]["definition_commitment"],
                "definition_commitment_note": (
                    "HMAC-SHA256 of the definition file keyed by the list seed (only the "
                    "seed's holder can check it); the plain SHA-256 is never shown."
                ),
                "arms": definition.get("arms"),
                "factors": definition["factors"],
                "strata": definition["strata"],
                "eligibility": definition.get("eligibility"),
                "screening": definition["screening"],
                "kits": definition["kits"],
                "dosing": definition["dosing"],
                "visits": definition["visits"],
                "unblinding": definition["unblinding"],
                "as_seen_by": "sponsor (a blinded role), GET /api/v1/trial",
            },
            "demo_run": steps,
            "verifier_key": verifier_key,
            "checkpoint": checkpoint,
            "checkpoint_size": checkpoint_size(checkpoint),
        }
    )


def definition_sha256_absent(initialised: dict[str, Any], definition: dict[str, Any]) -> bool:
    """Neither the audit entry the report quotes nor the blinded view carry a plain hash."""
    text = json.dumps([initialised, definition])
    return "sha256" not in text.lower()
