"""Key custody through the command line: split knowledge and rotation (R-KEY-1, R-KEY-2).

Each test follows the commands README.md's key-custody section gives a sponsor's quality
team, on a deployment of its own.
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest
from sqlalchemy import select

from audit.entry import parse_entry
from keys import SealedArm
from keys.custody import read_share_file
from randomizer.models import DataKey, Kit, Trial
from randomizer.services.context import load_trial_context
from tests.conftest import BACKENDS
from tests.randomizer.test_cli import Instance, initialised, mode


def key_entries(instance: Instance) -> list[dict]:
    return [
        entry
        for entry in (parse_entry(c.encode()) for c in instance.log())
        if entry["action"].startswith("key.")
    ]


def master_key_file(instance: Instance) -> tuple[str, bytes]:
    master = instance.keys_dir / "master"
    active = (master / "ACTIVE").read_text().strip()
    return active, (master / f"{active}.key").read_bytes()


def split(instance: Instance, out: Path, *extra: str) -> list[Path]:
    result = instance.run(
        "keys", "split", "--shares", "5", "--threshold", "3", "--out", str(out), *extra
    )
    assert result.exit_code == 0, result.output
    return sorted(out.iterdir())


def assert_no_secret_in_trail(instance: Instance, secrets: list[str]) -> None:
    trail = "\n".join(instance.log())
    for secret in secrets:
        assert secret not in trail


@pytest.fixture(scope="module")
def deployment(scratch, tmp_path_factory) -> Instance:
    return initialised(scratch, "sqlite", tmp_path_factory.mktemp("custody"))


@pytest.fixture(scope="module")
def shares(deployment: Instance, tmp_path_factory) -> list[Path]:
    return split(deployment, tmp_path_factory.mktemp("shares") / "custodians")


@pytest.mark.requirement("R-KEY-2")
def test_split_writes_one_private_file_per_custodian_and_audits_key_ids_only(deployment, shares):
    key_id, key_file = master_key_file(deployment)

    assert len(shares) == 5
    assert mode(shares[0].parent) == 0o700
    assert all(mode(path) == 0o600 for path in shares)
    parsed = [read_share_file(path) for path in shares]
    assert {share.key_id for share in parsed} == {key_id}
    assert sorted(share.number for share in parsed) == [1, 2, 3, 4, 5]
    assert all(len(share.mnemonic.split()) == 33 for share in parsed)
    # The key itself stays where it is.
    assert master_key_file(deployment) == (key_id, key_file)
    (entry,) = [e for e in key_entries(deployment) if e["action"] == "key.split"]
    assert entry["data"]["master_key_id"] == key_id
    assert (entry["data"]["shares"], entry["data"]["threshold"]) == (5, 3)
    assert entry["data"]["passphrase"] is False
    assert_no_secret_in_trail(
        deployment, [key_file.decode().strip()] + [share.mnemonic for share in parsed]
    )


@pytest.mark.requirement("R-KEY-2")
def test_any_three_of_five_shares_rebuild_the_key_file(deployment, shares, tmp_path):
    key_id, key_file = master_key_file(deployment)

    for number, chosen in enumerate(itertools.combinations(shares, 3)):
        out = tmp_path / f"rebuilt-{number}.key"
        result = deployment.run("keys", "combine", *map(str, chosen), "--out", str(out))
        assert result.exit_code == 0, result.output
        assert out.read_bytes() == key_file
        assert mode(out) == 0o600
    combined = [e for e in key_entries(deployment) if e["action"] == "key.combined"]
    assert len(combined) >= 10
    assert all(e["data"]["master_key_id"] == key_id for e in combined)


@pytest.mark.requirement("R-KEY-2")
def test_two_shares_do_not_rebuild_the_key(deployment, shares, tmp_path):
    out = tmp_path / "rebuilt.key"

    result = deployment.run("keys", "combine", str(shares[0]), str(shares[3]), "--out", str(out))

    assert result.exit_code == 1
    assert "2 share(s) given, but 3 are needed" in result.output
    assert not out.exists()


@pytest.mark.requirement("R-KEY-2")
def test_a_mistyped_word_is_refused_with_a_clear_message(deployment, shares, tmp_path):
    lines = shares[1].read_text().splitlines()
    words = lines[2].removeprefix("share: ").split()
    words[7] = "academic" if words[7] != "academic" else "acid"  # another list word
    typo = tmp_path / "typo.share"
    typo.write_text("\n".join([*lines[:2], "share: " + " ".join(words)]) + "\n")
    typo.chmod(0o600)

    result = deployment.run(
        "keys", "combine", str(shares[0]), str(typo), str(shares[2]), "--out", str(tmp_path / "k")
    )

    assert result.exit_code == 1
    assert f"share file {typo} is not a valid share" in result.output
    assert "checksum does not match: a word is mistyped" in result.output
    assert " ".join(words) not in result.output
    assert not (tmp_path / "k").exists()


@pytest.mark.requirement("R-KEY-2")
def test_combine_asks_for_the_shares_when_none_are_named_and_retypes_a_bad_one(deployment, shares):
    key_id, key_file = master_key_file(deployment)
    mnemonics = [read_share_file(path).mnemonic for path in shares]
    typed = [key_id, mnemonics[4], mnemonics[0][:-1], mnemonics[0], mnemonics[2]]

    result = deployment.run("keys", "combine", "--out", "-", stdin="\n".join(typed) + "\n")

    assert result.exit_code == 0, result.output
    assert "type it again" in result.output
    expected = f"{key_id}:{key_file.decode().strip()}"
    assert result.output.strip().splitlines()[-1] == expected


@pytest.mark.requirement("R-KEY-2")
@pytest.mark.parametrize("backend", BACKENDS)
def test_the_service_starts_from_the_combined_value_without_a_key_file(scratch, tmp_path, backend):
    instance = initialised(scratch, backend, tmp_path)
    files = split(instance, tmp_path / "custodians")
    value = instance.run("keys", "combine", *map(str, files[2:]), "--out", "-")
    assert value.exit_code == 0, value.output
    # The master key leaves the disk: only the custodians' shares hold it now.
    shutil.rmtree(instance.keys_dir / "master")

    env = {"SEALROOM_MASTER_KEY": value.output.strip()}
    with instance.session() as session:
        ctx = load_trial_context(session, instance.keys_dir, env)
        kit = session.scalars(select(Kit).limit(1)).one()
        arm = ctx.sealer.unseal_arm(SealedArm.from_text(kit.sealed_arm), "kit", kit.kit_number)
    assert arm in {"igpro20", "placebo"}
    assert instance.run("audit", "verify", env=env).exit_code == 0


@pytest.mark.requirement("R-KEY-2")
def test_a_passphrase_split_needs_the_passphrase_to_combine(scratch, tmp_path):
    instance = initialised(scratch, "sqlite", tmp_path)
    passphrase = tmp_path / "passphrase"
    passphrase.write_text("correct horse battery staple\n")
    files = split(instance, tmp_path / "custodians", "--passphrase-file", str(passphrase))
    wrong = tmp_path / "wrong"
    wrong.write_text("incorrect horse\n")

    without = instance.run("keys", "combine", *map(str, files[:3]), "--out", "-")
    mistaken = instance.run(
        "keys", "combine", *map(str, files[:3]), "--out", "-", "--passphrase-file", str(wrong)
    )
    right = instance.run(
        "keys", "combine", *map(str, files[:3]), "--out", "-", "--passphrase-file", str(passphrase)
    )

    for refused in (without, mistaken):
        assert refused.exit_code == 1
        assert "the rebuilt key does not open data key" in refused.output
    assert right.exit_code == 0, right.output
    key_id, key_file = master_key_file(instance)
    assert right.output.strip() == f"{key_id}:{key_file.decode().strip()}"
    (entry,) = [e for e in key_entries(instance) if e["action"] == "key.split"]
    assert entry["data"]["passphrase"] is True


# rotation ----------------------------------------------------------------------------------


def arms_of_kits(instance: Instance, env: dict[str, str] | None = None) -> dict[str, str]:
    with instance.session() as session:
        ctx = load_trial_context(session, instance.keys_dir, env)
        return {
            kit.kit_number: ctx.sealer.unseal_arm(
                SealedArm.from_text(kit.sealed_arm), "kit", kit.kit_number
            )
            for kit in session.scalars(select(Kit))
        }


@pytest.mark.requirement("R-KEY-1")
@pytest.mark.parametrize("backend", BACKENDS)
def test_rotate_master_rewraps_every_data_key_and_the_old_version_can_be_retired(
    scratch, tmp_path, backend
):
    instance = initialised(scratch, backend, tmp_path)
    before = arms_of_kits(instance)
    old_id, _ = master_key_file(instance)
    with instance.session() as session:
        sealed_before = {k.kit_number: k.sealed_arm for k in session.scalars(select(Kit))}

    result = instance.run("keys", "rotate-master")

    assert result.exit_code == 0, result.output
    new_id, _ = master_key_file(instance)
    assert new_id != old_id
    with instance.session() as session:
        assert {row.master_key_id for row in session.scalars(select(DataKey))} == {new_id}
        # No arm was re-encrypted.
        assert {k.kit_number: k.sealed_arm for k in session.scalars(select(Kit))} == sealed_before
    # Retiring the old version: its file goes, and every arm still opens.
    (instance.keys_dir / "master" / f"{old_id}.key").unlink()
    assert arms_of_kits(instance) == before
    (entry,) = [e for e in key_entries(instance) if e["action"] == "key.rotated"]
    assert entry["data"]["key"] == "master"
    assert (entry["data"]["old_key_id"], entry["data"]["new_key_id"]) == (old_id, new_id)
    assert instance.run("audit", "verify").exit_code == 0


@pytest.mark.requirement("R-KEY-1")
def test_rotate_master_is_refused_while_the_key_comes_from_the_environment(scratch, tmp_path):
    instance = initialised(scratch, "sqlite", tmp_path)
    key_id, key_file = master_key_file(instance)
    env = {"SEALROOM_MASTER_KEY": f"{key_id}:{key_file.decode().strip()}"}

    result = instance.run("keys", "rotate-master", env=env)

    assert result.exit_code == 1
    assert "rotate it in the secrets manager" in result.output
    assert [e for e in key_entries(instance) if e["action"] == "key.rotated"] == []


@pytest.mark.requirement("R-KEY-1")
@pytest.mark.parametrize("backend", BACKENDS)
def test_rotate_data_key_seals_anew_while_old_seals_still_open(scratch, tmp_path, backend):
    instance = initialised(scratch, backend, tmp_path)
    before = arms_of_kits(instance)
    with instance.session() as session:
        old_key = session.scalars(select(Trial.data_key_id)).one()
        # A serving process started before the rotation.
        running = load_trial_context(session, instance.keys_dir)

    result = instance.run("keys", "rotate-data-key")

    assert result.exit_code == 0, result.output
    with instance.session() as session:
        new_key = session.scalars(select(Trial.data_key_id)).one()
        assert {row.id for row in session.scalars(select(DataKey))} == {old_key, new_key}
        fresh = load_trial_context(session, instance.keys_dir)
    assert new_key != old_key
    assert fresh.sealer.active_key_id == new_key
    sealed = fresh.sealer.seal_arm("placebo", "kit", "K-NEW")
    assert sealed.key_id == new_key
    # Old seals open with the old key; the running process opens the new key's seals too.
    assert arms_of_kits(instance) == before
    assert running.sealer.unseal_arm(sealed, "kit", "K-NEW") == "placebo"
    (entry,) = [e for e in key_entries(instance) if e["action"] == "key.rotated"]
    assert entry["data"] == {
        "key": "data",
        "old_key_id": old_key,
        "new_key_id": new_key,
        "master_key_id": master_key_file(instance)[0],
    }
    assert instance.run("audit", "verify").exit_code == 0


def verifier_key_line(instance: Instance) -> str:
    result = instance.run("audit", "verify")
    assert result.exit_code == 0, result.output
    return result.output.strip().splitlines()[-1].rsplit(" against ", 1)[1]


@pytest.mark.requirement("R-KEY-1")
@pytest.mark.parametrize("backend", BACKENDS)
def test_rotate_signing_hands_over_through_a_checkpoint_signed_by_both_keys(
    scratch, tmp_path, backend
):
    from randomizer.models import AuditCheckpoint
    from randomizer.roles import SYSTEM
    from randomizer.services import users

    instance = initialised(scratch, backend, tmp_path)
    old = verifier_key_line(instance)
    with instance.session() as session:
        running = load_trial_context(session, instance.keys_dir)  # serving before the rotation

    result = instance.run("keys", "rotate-signing")

    assert result.exit_code == 0, result.output
    new = verifier_key_line(instance)
    assert new != old
    assert list((instance.keys_dir / "signing").iterdir()) == [
        instance.keys_dir / "signing" / "ed25519.key"
    ]
    (entry,) = [e for e in key_entries(instance) if e["action"] == "key.rotated"]
    assert entry["data"]["key"] == "signing"
    assert (entry["data"]["old_verifier_key"], entry["data"]["new_verifier_key"]) == (old, new)
    # The process that served before the rotation learns the key in force, and signs with it.
    database = __import__("randomizer.db", fromlist=["Database"]).Database(instance.url)
    try:
        with database.reading() as session:
            assert running.audit.current_verifier_key(session).line() == new
        with database.transaction() as session:
            users.add_user(session, running, SYSTEM, "after-rotation", "sponsor", None, None)
    finally:
        database.dispose()
    with instance.session() as session:
        notes = list(session.scalars(select(AuditCheckpoint.note).order_by(AuditCheckpoint.size)))
    hand_over = notes[-2]
    assert hand_over.count("\n\u2014 ") + hand_over.startswith("\u2014") == 2
    assert notes[-1].count("\u2014 ") == 1
    # Either key verifies the whole log: the old one forward, the new one backward.
    for key in (old, new):
        verified = instance.run("audit", "verify", "--verifier-key", key)
        assert verified.exit_code == 0, verified.output


@pytest.mark.requirement("R-KEY-1")
def test_a_signing_key_swapped_without_a_hand_over_signs_nothing(scratch, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    instance = initialised(scratch, "sqlite", tmp_path)
    old = verifier_key_line(instance)
    size = len(instance.log())
    key_file = instance.keys_dir / "signing" / "ed25519.key"
    key_file.unlink()
    key_file.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)

    refused = instance.run("users", "add", "--role", "sponsor", "late")

    # The service checks the last checkpoint with its own key before it signs over it: a key
    # that no hand-over brought in signs nothing, and the log is as it was.
    assert refused.exit_code == 1
    assert "not signed by the trusted key" in str(refused.exception)
    assert len(instance.log()) == size
    assert instance.run("audit", "verify", "--verifier-key", old).exit_code == 0
