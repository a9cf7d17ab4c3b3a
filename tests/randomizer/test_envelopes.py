"""Downtime code-break envelopes (R-KEY-4), through the commands README.md gives."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from keys import SealedArm
from randomizer.cli import main as cli
from randomizer.models import Participant, Slot
from randomizer.services.context import load_trial_context
from tests.randomizer.test_audit_verifiable import _log, _verify, own_trial  # noqa: F401


@pytest.fixture
def served(request: pytest.FixtureRequest, backend: str) -> Any:
    """A trial with three participants randomised (test_audit_verifiable's own_trial)."""
    return request.getfixturevalue("own_trial")


def sealroom(trial: Any, *args: str) -> Any:
    return CliRunner().invoke(
        cli,
        ["--database-url", trial.url, *args],
        env={"SEALROOM_KEYS_DIR": str(trial.settings.keys_dir), "SEALROOM_MASTER_KEY": None},
    )


def make_set(trial: Any, tmp_path: Path) -> tuple[Path, Path, str]:
    key_file = tmp_path / "safety-line" / "envelope.key"
    made_key = sealroom(trial, "keys", "envelope-key", "--out", str(key_file))
    assert made_key.exit_code == 0, made_key.output
    recipient = made_key.output.strip()
    out = tmp_path / "envelopes"
    made = sealroom(
        trial, "keys", "emergency-envelopes", "--recipient", recipient, "--out", str(out)
    )
    assert made.exit_code == 0, made.output
    digest = made.output.split("set sha256 ")[1].split()[0]
    return key_file, out, digest


def slot_arms(trial: Any, database: Any) -> dict[str, str]:
    with database.reading() as session:
        ctx = load_trial_context(session, trial.settings.keys_dir)
        return {
            slot.randomization_number: ctx.sealer.unseal_arm(
                SealedArm.from_text(slot.sealed_arm), "slot", slot.randomization_number
            )
            for slot in session.scalars(select(Slot))
        }


def open_envelope(trial: Any, key_file: Path, envelope: Path) -> Any:
    return sealroom(trial, "keys", "open-envelope", "--key", str(key_file), str(envelope))


@pytest.mark.requirement("R-KEY-4")
def test_one_envelope_per_slot_all_one_size_and_the_set_digest_audited(served, tmp_path):
    trial, _client, database = served

    key_file, out, digest = make_set(trial, tmp_path)

    arms = slot_arms(trial, database)
    envelopes = sorted(out.glob("*.envelope"))
    assert {path.stem for path in envelopes} == set(arms)
    assert len({path.stat().st_size for path in envelopes}) == 1
    assert all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in envelopes)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    manifest = (out / "MANIFEST.sha256").read_bytes()
    assert hashlib.sha256(manifest).hexdigest() == digest
    for line in manifest.decode().splitlines():
        file_digest, name = line.split("  ")
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == file_digest
    (entry,) = [
        json.loads(e) for e in _log(database) if json.loads(e)["action"] == "envelopes.created"
    ]
    assert entry["data"]["set_sha256"] == digest
    assert entry["data"]["envelopes"] == len(arms)
    assert "igpro20" not in json.dumps(entry) and "placebo" not in json.dumps(entry)


@pytest.mark.requirement("R-KEY-4")
def test_the_safety_line_opens_one_envelope_offline(served, tmp_path):
    trial, _client, database = served
    key_file, out, _digest = make_set(trial, tmp_path)
    arms = slot_arms(trial, database)
    # The service is down: the offline tool needs no database.
    down = CliRunner().invoke(
        cli,
        [
            "--database-url",
            "postgresql+psycopg://nobody@127.0.0.1:1/none",
            "keys",
            "open-envelope",
            "--key",
            str(key_file),
            str(out / "R01-0001.envelope"),
        ],
    )

    assert down.exit_code == 0, down.output
    label = {"igpro20": "IgPro20", "placebo": "Placebo"}[arms["R01-0001"]]
    assert f"R01-0001: {label} ({arms['R01-0001']})" in down.output


@pytest.mark.requirement("R-KEY-4")
def test_an_envelope_renamed_or_opened_with_another_key_does_not_open(served, tmp_path):
    trial, _client, _database = served
    key_file, out, _digest = make_set(trial, tmp_path)
    other_key = tmp_path / "other" / "envelope.key"
    assert sealroom(trial, "keys", "envelope-key", "--out", str(other_key)).exit_code == 0
    moved = tmp_path / "moved.envelope"
    moved.write_text((out / "R01-0001.envelope").read_text().replace("R01-0001", "R01-0002"))

    renamed = open_envelope(trial, key_file, moved)
    wrong_key = open_envelope(trial, other_key, out / "R01-0001.envelope")

    assert renamed.exit_code == 1 and "made for another number" in renamed.output
    assert wrong_key.exit_code == 1 and "made for another key" in wrong_key.output


@pytest.mark.requirement("R-KEY-4")
def test_an_offline_unblinding_is_recorded_afterwards(served, tmp_path):
    trial, _client, database = served
    _key_file, _out, digest = make_set(trial, tmp_path)
    with database.reading() as session:
        participant = session.scalars(
            select(Participant).where(Participant.screening_number == "101-A-1")
        ).one()
        number = participant.randomization_number
        unused = session.scalars(
            select(Slot.randomization_number).where(Slot.participant_id.is_(None)).limit(1)
        ).one()
    common = ["--offline", "--by", "Dr Safety", "--opened-at", "2026-11-29T03:10:00+00:00"]
    common += ["--reason", "serious_adverse_event", "--event-reference", "SAE-0042"]
    common += ["--envelope-set", digest]

    recorded = sealroom(trial, "unblind-record", "--randomization-number", number, *common)
    unused_slot = sealroom(trial, "unblind-record", "--randomization-number", unused, *common)
    bad = sealroom(
        trial,
        "unblind-record",
        "--randomization-number",
        number,
        *[("nonsense" if c == "serious_adverse_event" else c) for c in common],
    )

    assert recorded.exit_code == 0, recorded.output
    assert unused_slot.exit_code == 0, unused_slot.output
    assert bad.exit_code == 1 and "reason" in bad.output
    with database.reading() as session:
        assert session.scalars(
            select(Participant.unblinded).where(Participant.screening_number == "101-A-1")
        ).one()
    entries = [json.loads(e) for e in _log(database)]
    (unblinded,) = [e for e in entries if e["action"] == "participant.unblinded"]
    assert unblinded["data"]["offline"] is True
    assert unblinded["data"]["envelope_set_sha256"] == digest
    assert unblinded["subject"] == "101-A-1"
    (opened,) = [e for e in entries if e["action"] == "envelope.opened"]
    assert opened["subject"] == unused
    assert _verify(trial).exit_code == 0
