"""A signing-key rotation while the service serves (R-KEY-1): the service, `audit verify`,
`verify_standalone.py` and the monitor all follow the change through the hand-over only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from audit.checkpoint import parse_verifier_key
from audit.monitor import KEYS_FILE, MonitorAlarm, check_log
from randomizer.cli import main as cli
from tests.randomizer.test_audit_verifiable import _fetcher, _verify, own_trial  # noqa: F401


@pytest.fixture
def serving(request: pytest.FixtureRequest, backend: str) -> Any:
    """A trial served in-process (test_audit_verifiable's own_trial), on each backend."""
    return request.getfixturevalue("own_trial")


STANDALONE = Path(__file__).resolve().parents[2] / "audit" / "verify_standalone.py"


def _sealroom(trial: Any, *args: str) -> Any:
    return CliRunner().invoke(
        cli,
        ["--database-url", trial.url, *args],
        env={"SEALROOM_KEYS_DIR": str(trial.settings.keys_dir), "SEALROOM_MASTER_KEY": None},
    )


def _key_line(client: Any) -> str:
    return client.get("/audit/verifier-key").get_data(as_text=True).strip()


def _rotate(trial: Any) -> None:
    result = _sealroom(trial, "keys", "rotate-signing")
    assert result.exit_code == 0, result.output


@pytest.mark.requirement("R-KEY-1")
def test_the_serving_process_follows_a_rotation_and_both_keys_verify(serving, tmp_path):
    trial, client, _database = serving
    old = _key_line(client)

    _rotate(trial)
    # The process that was serving all along randomises on, signing with the new key.
    assert client.screen_and_randomize("101-R-1").status_code == 201
    new = _key_line(client)

    assert new != old
    receipt = client.screen_and_randomize("101-R-2").get_json()["receipt"]
    assert parse_verifier_key(new)  # well formed
    assert receipt["checkpoint"].count("\u2014 ") == 1
    for key in (old, new):
        verified = _verify(trial, "--verifier-key", key)
        assert verified.exit_code == 0, verified.output
    hand_overs = client.get("/audit/key-hand-overs", "sponsor").get_json()
    assert len(hand_overs) == 1
    assert hand_overs[0]["checkpoint"].count("\u2014 ") == 2
    entry = json.loads(hand_overs[0]["entry"])
    assert entry["action"] == "key.rotated" and entry["data"]["new_verifier_key"] == new


@pytest.mark.requirement("R-KEY-1")
def test_the_monitor_follows_the_hand_over_and_alarms_on_any_other_key(serving, tmp_path):
    trial, client, _database = serving
    old = parse_verifier_key(_key_line(client))
    state = tmp_path / "state"
    check_log(_fetcher(client), old, state)

    _rotate(trial)
    client.screen_and_randomize("101-M-1")
    followed = check_log(_fetcher(client), old, state)
    again = check_log(_fetcher(client), old, state)  # the next run starts from the new key

    new = _key_line(client)
    assert followed.latest.size > followed.previous.size
    assert again.latest == followed.latest
    assert (state / KEYS_FILE).read_text().splitlines() == [old.line(), new]
    # A second rotation is followed the same way; the old key's monitor follows both.
    _rotate(trial)
    client.screen_and_randomize("101-M-2")
    assert check_log(_fetcher(client), old, state).latest.size > again.latest.size
    # A key that arrives without a hand-over raises the alarm (the file is swapped by hand).
    fresh = tmp_path / "fresh"
    with pytest.raises(MonitorAlarm, match="bad signature"):
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from audit.checkpoint import verifier_key_from_private

        stranger = verifier_key_from_private(old.name, Ed25519PrivateKey.generate())
        check_log(_fetcher(client), stranger, fresh)


@pytest.mark.requirement("R-KEY-1")
def test_verify_standalone_follows_the_hand_over_given_to_it(serving, tmp_path):
    trial, client, _database = serving
    old = _key_line(client)
    _rotate(trial)
    client.screen_and_randomize("101-S-1")
    export = tmp_path / "log.jsonl"
    assert _sealroom(trial, "audit", "export", "--out", str(export)).exit_code == 0
    checkpoint = tmp_path / "checkpoint.txt"
    checkpoint.write_text(client.get("/audit/checkpoint", "auditor").get_data(as_text=True))
    hand_over = tmp_path / "hand-over.txt"
    hand_over.write_text(client.get("/audit/key-hand-overs", "auditor").get_json()[0]["checkpoint"])
    new = _key_line(client)

    def standalone(key: str, *extra: str) -> Any:
        command = [sys.executable, str(STANDALONE), "--export", str(export)]
        command += ["--checkpoint", str(checkpoint), "--verifier-key", key, *extra]
        return subprocess.run(command, capture_output=True, text=True, check=False)

    without = standalone(old)
    forward = standalone(old, "--hand-over", str(hand_over))
    direct = standalone(new)
    backward = standalone(new, "--hand-over", str(hand_over))

    assert without.returncode == 1 and "not signed by the trusted key" in without.stderr
    for run in (forward, direct, backward):
        assert run.returncode == 0, run.stderr
    # A hand-over altered to announce another key no longer verifies.
    forged = hand_over.read_text().replace(hand_over.read_text().split("\n")[2], "A" * 43 + "=")
    hand_over.write_text(forged)
    assert standalone(old, "--hand-over", str(hand_over)).returncode == 1
