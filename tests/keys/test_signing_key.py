"""The checkpoint-signing key, kept apart from the data keys (URS §7 R-AUD)."""

import os
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from keys import (
    KeyStoreError,
    create_keys_dir,
    create_signing_key,
    load_master_keys,
    load_signing_key,
    public_key_bytes,
    signing_key_path,
)

pytestmark = pytest.mark.requirement("R-AUD")


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def keys_dir(tmp_path):
    return tmp_path / "keys"


def test_the_signing_key_is_created_private_and_loads_back(keys_dir):
    created = create_signing_key(keys_dir)
    path = keys_dir / "signing" / "ed25519.key"

    assert signing_key_path(keys_dir) == path
    assert mode(keys_dir) == 0o700
    assert mode(keys_dir / "signing") == 0o700
    assert mode(path) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert public_key_bytes(load_signing_key(keys_dir)) == public_key_bytes(created)


def test_a_signature_by_the_loaded_key_verifies_with_the_public_bytes(keys_dir):
    create_signing_key(keys_dir)
    body = b"sealroom/RECLAIIM\n1\nWgwZnGG+z5BKuJhWkli0tE8wrlTX1+zUKnA46CG8oH0=\n"

    signature = load_signing_key(keys_dir).sign(body)
    public = public_key_bytes(load_signing_key(keys_dir))

    assert len(public) == 32
    Ed25519PublicKey.from_public_bytes(public).verify(signature, body)


def test_creating_refuses_to_overwrite_the_signing_key(keys_dir):
    create_signing_key(keys_dir)
    before = signing_key_path(keys_dir).read_bytes()
    with pytest.raises(KeyStoreError, match="refusing to overwrite"):
        create_signing_key(keys_dir)
    assert signing_key_path(keys_dir).read_bytes() == before


@pytest.mark.parametrize("bad_mode", [0o644, 0o640, 0o604])
def test_loading_refuses_a_key_file_open_to_group_or_others(keys_dir, bad_mode):
    create_signing_key(keys_dir)
    os.chmod(signing_key_path(keys_dir), bad_mode)
    with pytest.raises(KeyStoreError) as caught:
        load_signing_key(keys_dir)
    assert str(signing_key_path(keys_dir)) in str(caught.value)
    assert f"0o{bad_mode:03o}" in str(caught.value)


def test_loading_refuses_a_signing_directory_open_to_others(keys_dir):
    create_signing_key(keys_dir)
    os.chmod(keys_dir / "signing", 0o755)
    with pytest.raises(KeyStoreError, match="0o755"):
        load_signing_key(keys_dir)


def test_loading_refuses_a_missing_key(keys_dir):
    with pytest.raises(KeyStoreError):
        load_signing_key(keys_dir)
    create_signing_key(keys_dir)
    signing_key_path(keys_dir).unlink()
    with pytest.raises(KeyStoreError, match="missing"):
        load_signing_key(keys_dir)


def test_loading_refuses_a_malformed_key_without_quoting_it(keys_dir):
    create_signing_key(keys_dir)
    signing_key_path(keys_dir).write_bytes(b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n")
    with pytest.raises(KeyStoreError, match="malformed") as caught:
        load_signing_key(keys_dir)
    assert "c2VjcmV0" not in str(caught.value)


def test_loading_refuses_a_key_that_is_not_ed25519(keys_dir):
    create_signing_key(keys_dir)
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    signing_key_path(keys_dir).write_bytes(other)
    with pytest.raises(KeyStoreError, match="Ed25519"):
        load_signing_key(keys_dir)


def test_signing_and_master_keys_share_a_keys_directory_in_either_order(tmp_path):
    for first, second in [
        (create_signing_key, create_keys_dir),
        (create_keys_dir, create_signing_key),
    ]:
        keys_dir = tmp_path / first.__name__
        first(keys_dir)
        second(keys_dir)
        load_signing_key(keys_dir)
        load_master_keys(keys_dir, environ={})
