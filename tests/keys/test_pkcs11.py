"""The PKCS#11 master key provider against a real SoftHSM2 token (R-KEY-3).

Debian's ``softhsm2`` is installed by ``.ci/run``; without it these tests fail in CI and are
skipped elsewhere, saying why. Each test gets a token of its own, in a token directory of
this test session (SoftHSM2 reads its configuration once per process, when the module is
first loaded).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from keys import KeyStoreError, MasterKeyRing, new_data_key, unwrap_data_key
from keys.pkcs11 import Pkcs11MasterKeys
from tests.conftest import BACKENDS

LIBRARIES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
)
PIN = "246810"


def _library() -> str | None:
    return next((path for path in LIBRARIES if Path(path).exists()), None)


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    library = _library()
    if library is None or shutil.which("softhsm2-util") is None:
        reason = "SoftHSM2 is not installed (apt-get install softhsm2; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: CI must run the PKCS#11 tests")
        pytest.skip(reason)
    directory = tmp_path_factory.mktemp("softhsm")
    (directory / "tokens").mkdir()
    config = directory / "softhsm2.conf"
    config.write_text(
        f"directories.tokendir = {directory / 'tokens'}\nobjectstore.backend = file\n"
        "log.level = ERROR\n"
    )
    os.environ["SOFTHSM2_CONF"] = str(config)
    pin_file = directory / "pin"
    pin_file.write_text(PIN + "\n")
    pin_file.chmod(0o600)
    return {"library": library, "pin_file": pin_file}


@pytest.fixture
def token(softhsm: dict[str, Any]) -> dict[str, str]:
    """A fresh, empty token; the settings that name it."""
    import pkcs11

    label = "sealroom-" + secrets.token_hex(4)
    init = ["softhsm2-util", "--init-token", "--free", "--label", label, "--pin", PIN]
    subprocess.run(
        [*init, "--so-pin", "13579246"],
        check=True,
        capture_output=True,
    )
    # A module loaded earlier in this process lists only the tokens it found then.
    pkcs11.lib(softhsm["library"]).reinitialize()
    return {
        "SEALROOM_MASTER_KEY_PROVIDER": "pkcs11",
        "SEALROOM_PKCS11_LIBRARY": softhsm["library"],
        "SEALROOM_PKCS11_TOKEN": label,
        "SEALROOM_PKCS11_PIN_FILE": str(softhsm["pin_file"]),
    }


def empty(token: dict[str, str]) -> Pkcs11MasterKeys:
    return Pkcs11MasterKeys.from_environ(token, empty_ok=True)


@pytest.mark.requirement("R-KEY-3")
def test_a_key_made_in_the_token_wraps_and_unwraps_data_keys_there(token):
    hsm = empty(token)
    hsm.activate(hsm.generate())

    wrapped, key = new_data_key(hsm, "RECLAIIM")

    assert wrapped.master_key_id == hsm.active_id
    assert unwrap_data_key(hsm, wrapped, "RECLAIIM") == key
    # Bound to its trial and id, like the key file's wraps: another trial's context fails.
    with pytest.raises(KeyStoreError, match="cannot unwrap"):
        unwrap_data_key(hsm, wrapped, "OTHER")
    # A provider opened afresh from the settings finds the key (the only one in the token).
    assert unwrap_data_key(Pkcs11MasterKeys.from_environ(token), wrapped, "RECLAIIM") == key


@pytest.mark.requirement("R-KEY-3")
def test_the_token_never_lets_the_key_out(token):
    import pkcs11

    hsm = empty(token)
    key_id = hsm.generate()
    with hsm._session() as session:
        key = hsm._key(session, key_id)
        assert key[pkcs11.Attribute.SENSITIVE] is True
        assert key[pkcs11.Attribute.EXTRACTABLE] is False
        with pytest.raises(pkcs11.PKCS11Error):
            key[pkcs11.Attribute.VALUE]


@pytest.mark.requirement("R-KEY-3")
def test_a_key_file_imported_into_the_token_opens_what_it_wrapped(token):
    key_id, secret = "mk-" + secrets.token_hex(8), secrets.token_bytes(32)
    file_ring = MasterKeyRing({key_id: secret}, key_id)
    wrapped, key = new_data_key(file_ring, "RECLAIIM")
    hsm = empty(token)

    hsm.import_key(key_id, secret)
    hsm.activate(key_id)

    assert unwrap_data_key(hsm, wrapped, "RECLAIIM") == key
    # And the other way: what the token wraps, the same key outside opens.
    rewrapped, again = new_data_key(hsm, "RECLAIIM")
    assert unwrap_data_key(file_ring, rewrapped, "RECLAIIM") == again


@pytest.mark.requirement("R-KEY-3")
def test_a_token_with_several_keys_needs_the_active_one_named(token):
    hsm = empty(token)
    first, second = hsm.generate(), hsm.generate()

    with pytest.raises(KeyStoreError, match="name the active one in SEALROOM_PKCS11_KEY"):
        Pkcs11MasterKeys.from_environ(token)
    named = Pkcs11MasterKeys.from_environ({**token, "SEALROOM_PKCS11_KEY": second})
    assert named.active_id == second and set(named.key_ids) == {first, second}


@pytest.mark.requirement("R-KEY-3")
def test_a_wrong_pin_is_refused_without_showing_it(token, tmp_path):
    wrong = tmp_path / "pin"
    wrong.write_text("999999\n")
    wrong.chmod(0o600)

    with pytest.raises(KeyStoreError) as refused:
        Pkcs11MasterKeys.from_environ({**token, "SEALROOM_PKCS11_PIN_FILE": str(wrong)})

    assert "cannot log in" in str(refused.value) and "999999" not in str(refused.value)


@pytest.mark.requirement("R-KEY-3")
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_deployment_moves_its_master_key_into_the_token_and_serves_from_it(
    scratch, tmp_path, token, backend
):
    from sqlalchemy import select

    from keys import SealedArm
    from randomizer.models import DataKey, Kit
    from randomizer.services.context import load_trial_context
    from tests.randomizer.test_cli import initialised

    instance = initialised(scratch, backend, tmp_path)
    settings = {k: v for k, v in token.items() if k != "SEALROOM_MASTER_KEY_PROVIDER"}

    imported = instance.run("keys", "hsm-import", env=settings)
    assert imported.exit_code == 0, imported.output
    # The key files are destroyed; from now on the token is the only holder.
    shutil.rmtree(instance.keys_dir / "master")
    with instance.session() as session:
        ctx = load_trial_context(session, instance.keys_dir, token)
        kit = session.scalars(select(Kit).limit(1)).one()
        sealed, kit_number = SealedArm.from_text(kit.sealed_arm), kit.kit_number
        arm = ctx.sealer.unseal_arm(sealed, "kit", kit_number)
    assert arm in {"igpro20", "placebo"}
    assert instance.run("audit", "verify", env=token).exit_code == 0

    rotated = instance.run("keys", "rotate-master", env=token)
    assert rotated.exit_code == 0, rotated.output
    new_id = rotated.output.split("set SEALROOM_PKCS11_KEY=")[1].split()[0]
    with instance.session() as session:
        assert {row.master_key_id for row in session.scalars(select(DataKey))} == {new_id}
    after = {**token, "SEALROOM_PKCS11_KEY": new_id}
    assert instance.run("keys", "rotate-data-key", env=after).exit_code == 0
    with instance.session() as session:
        served = load_trial_context(session, instance.keys_dir, after)
    assert served.sealer.unseal_arm(sealed, "kit", kit_number) == arm
    refused = instance.run(
        "keys",
        "split",
        "--shares",
        "3",
        "--threshold",
        "2",
        "--out",
        str(tmp_path / "s"),
        env=after,
    )
    assert refused.exit_code == 1 and "never lets it out" in refused.output
    actions = [json.loads(entry)["action"] for entry in instance.log()]
    assert {"key.imported", "key.rotated"} <= set(actions)
