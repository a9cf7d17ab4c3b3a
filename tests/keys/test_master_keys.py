"""Master keys in the keys directory and the environment (URS §5 R-SEAL, §9)."""

import base64
import os
import re
import stat

import pytest

from keys import (
    MASTER_KEY_ENV,
    KeyStoreError,
    MasterKeyRing,
    create_keys_dir,
    load_master_keys,
    rotate_master_key,
)

pytestmark = pytest.mark.requirement("R-SEAL")

NO_ENV: dict[str, str] = {}
KEY_ID = re.compile(r"mk-[0-9a-f]{16}")


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def key_file(keys_dir, key_id):
    return keys_dir / "master" / f"{key_id}.key"


@pytest.fixture
def keys_dir(tmp_path):
    return tmp_path / "keys"


def test_create_keys_dir_makes_private_directories_and_files(keys_dir):
    ring = create_keys_dir(keys_dir)

    assert KEY_ID.fullmatch(ring.active_id)
    assert mode(keys_dir) == 0o700
    assert mode(keys_dir / "master") == 0o700
    assert mode(key_file(keys_dir, ring.active_id)) == 0o600
    assert mode(keys_dir / "master" / "ACTIVE") == 0o600
    assert (keys_dir / "master" / "ACTIVE").read_text() == ring.active_id + "\n"
    text = key_file(keys_dir, ring.active_id).read_text()
    assert text.endswith("\n")
    assert len(base64.b64decode(text, validate=False)) == 32


def test_create_keys_dir_refuses_to_overwrite_an_existing_master_key(keys_dir):
    ring = create_keys_dir(keys_dir)
    before = key_file(keys_dir, ring.active_id).read_bytes()

    with pytest.raises(KeyStoreError, match="already holds master keys"):
        create_keys_dir(keys_dir)

    assert sorted(p.name for p in (keys_dir / "master").glob("*.key")) == [f"{ring.active_id}.key"]
    assert key_file(keys_dir, ring.active_id).read_bytes() == before


def test_create_keys_dir_refuses_an_existing_directory_open_to_others(keys_dir):
    keys_dir.mkdir(mode=0o755)
    os.chmod(keys_dir, 0o755)
    with pytest.raises(KeyStoreError, match="0o755"):
        create_keys_dir(keys_dir)


def test_loaded_ring_unwraps_what_the_created_ring_wrapped(keys_dir):
    created = create_keys_dir(keys_dir)
    key_id, wrapped = created.wrap(b"secret", b"context")

    loaded = load_master_keys(keys_dir, environ=NO_ENV)

    assert key_id == loaded.active_id == created.active_id
    assert loaded.unwrap(key_id, wrapped, b"context") == b"secret"


def test_unwrap_refuses_another_context_a_tampered_blob_and_an_unknown_key():
    ring = MasterKeyRing.generate()
    key_id, wrapped = ring.wrap(b"secret", b"context")
    tampered = wrapped[:-1] + bytes([wrapped[-1] ^ 1])

    with pytest.raises(KeyStoreError):
        ring.unwrap(key_id, wrapped, b"other context")
    with pytest.raises(KeyStoreError):
        ring.unwrap(key_id, tampered, b"context")
    with pytest.raises(KeyStoreError):
        ring.unwrap(key_id, wrapped[:20], b"context")
    with pytest.raises(KeyStoreError, match="unknown master key"):
        ring.unwrap("mk-0000000000000000", wrapped, b"context")


def test_wrap_uses_a_fresh_nonce_each_time():
    ring = MasterKeyRing.generate()
    assert ring.wrap(b"secret", b"c")[1] != ring.wrap(b"secret", b"c")[1]


@pytest.mark.parametrize("bad_mode", [0o644, 0o640, 0o604, 0o660, 0o606])
def test_load_refuses_a_key_file_open_to_group_or_others(keys_dir, bad_mode):
    ring = create_keys_dir(keys_dir)
    path = key_file(keys_dir, ring.active_id)
    os.chmod(path, bad_mode)

    with pytest.raises(KeyStoreError) as caught:
        load_master_keys(keys_dir, environ=NO_ENV)

    assert str(path) in str(caught.value)
    assert f"0o{bad_mode:03o}" in str(caught.value)


def test_load_refuses_an_active_file_open_to_others(keys_dir):
    create_keys_dir(keys_dir)
    os.chmod(keys_dir / "master" / "ACTIVE", 0o644)
    with pytest.raises(KeyStoreError, match="ACTIVE"):
        load_master_keys(keys_dir, environ=NO_ENV)


@pytest.mark.parametrize("which", ["root", "master"])
@pytest.mark.parametrize("bad_mode", [0o755, 0o750, 0o705, 0o711])
def test_load_refuses_a_keys_directory_open_to_group_or_others(keys_dir, which, bad_mode):
    create_keys_dir(keys_dir)
    path = keys_dir if which == "root" else keys_dir / "master"
    os.chmod(path, bad_mode)

    with pytest.raises(KeyStoreError) as caught:
        load_master_keys(keys_dir, environ=NO_ENV)

    assert str(path) in str(caught.value)
    assert f"0o{bad_mode:03o}" in str(caught.value)


@pytest.mark.parametrize(
    "content",
    [
        b"not base64 at all!!\n",
        base64.b64encode(b"k" * 16) + b"\n",
        base64.b64encode(b"k" * 33) + b"\n",
        b"\xc3\xa9" + base64.b64encode(b"k" * 32) + b"\n",
        b"",
    ],
    ids=["not-base64", "short", "long", "not-ascii", "empty"],
)
def test_load_refuses_a_malformed_key_file_without_quoting_it(keys_dir, content):
    ring = create_keys_dir(keys_dir)
    path = key_file(keys_dir, ring.active_id)
    os.chmod(path, 0o600)
    path.write_bytes(content)

    with pytest.raises(KeyStoreError, match="malformed") as caught:
        load_master_keys(keys_dir, environ=NO_ENV)

    message = str(caught.value)
    assert str(path) in message
    assert content.strip() == b"" or content.strip().decode("latin-1") not in message
    assert "0xc3" not in message


def test_load_refuses_a_missing_active_file(keys_dir):
    create_keys_dir(keys_dir)
    (keys_dir / "master" / "ACTIVE").unlink()
    with pytest.raises(KeyStoreError, match=r"ACTIVE is missing"):
        load_master_keys(keys_dir, environ=NO_ENV)


def test_load_refuses_an_active_file_naming_an_absent_key(keys_dir):
    create_keys_dir(keys_dir)
    (keys_dir / "master" / "ACTIVE").write_text("mk-0123456789abcdef\n")
    with pytest.raises(KeyStoreError, match="mk-0123456789abcdef"):
        load_master_keys(keys_dir, environ=NO_ENV)


def test_load_refuses_a_missing_keys_directory(keys_dir):
    with pytest.raises(KeyStoreError, match="does not exist"):
        load_master_keys(keys_dir, environ=NO_ENV)


def test_the_environment_key_is_active_without_a_keys_directory(keys_dir):
    raw = os.urandom(32)
    environ = {MASTER_KEY_ENV: "mk-00112233445566ff:" + base64.b64encode(raw).decode()}

    ring = load_master_keys(keys_dir, environ=environ)

    assert ring.active_id == "mk-00112233445566ff"
    assert ring.key_ids == ("mk-00112233445566ff",)
    assert ring.wrap(b"secret", b"c")[0] == "mk-00112233445566ff"


def test_the_environment_key_is_active_and_directory_keys_still_unwrap(keys_dir):
    old = create_keys_dir(keys_dir)
    old_id, old_wrapped = old.wrap(b"old secret", b"c")
    environ = {MASTER_KEY_ENV: "mk-00112233445566ff:" + base64.b64encode(os.urandom(32)).decode()}

    ring = load_master_keys(keys_dir, environ=environ)

    assert ring.active_id == "mk-00112233445566ff"
    assert set(ring.key_ids) == {old_id, "mk-00112233445566ff"}
    assert ring.unwrap(old_id, old_wrapped, b"c") == b"old secret"
    assert ring.wrap(b"new", b"c")[0] == "mk-00112233445566ff"


def test_the_environment_key_defaults_to_os_environ(keys_dir, monkeypatch):
    value = "mk-00112233445566ff:" + base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv(MASTER_KEY_ENV, value)
    assert load_master_keys(keys_dir).active_id == "mk-00112233445566ff"


VALID_B64 = base64.b64encode(bytes(range(32))).decode()


@pytest.mark.parametrize(
    "value",
    [
        "",
        VALID_B64,
        "mk-00112233445566ff",
        "mk-00112233445566ff:",
        "mk-00112233445566ff:not base64 at all",
        "mk-00112233445566ff:" + base64.b64encode(b"s" * 16).decode(),
        "mk-00112233445566ff:" + base64.b64encode(b"s" * 40).decode(),
        "MK-00112233445566FF:" + VALID_B64,
        "prod-key:" + VALID_B64,
        "mk-00112233445566ff:" + VALID_B64 + "é",
    ],
)
def test_a_malformed_environment_key_is_refused_without_quoting_it(keys_dir, value):
    with pytest.raises(KeyStoreError, match=MASTER_KEY_ENV) as caught:
        load_master_keys(keys_dir, environ={MASTER_KEY_ENV: value})

    message = str(caught.value)
    secret_part = value.partition(":")[2] or value
    if secret_part:
        assert secret_part not in message
    assert VALID_B64 not in message
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__ or caught.value.__context__ is None


def test_an_environment_key_conflicting_with_a_directory_key_is_refused(keys_dir):
    ring = create_keys_dir(keys_dir)
    environ = {MASTER_KEY_ENV: f"{ring.active_id}:" + base64.b64encode(os.urandom(32)).decode()}
    with pytest.raises(KeyStoreError, match="different key"):
        load_master_keys(keys_dir, environ=environ)


def test_rotation_adds_an_active_key_and_keeps_the_old_ones(keys_dir):
    first = create_keys_dir(keys_dir)
    old_id, old_wrapped = first.wrap(b"old secret", b"c")

    rotated = rotate_master_key(keys_dir)

    assert rotated.active_id != first.active_id
    assert set(rotated.key_ids) == {first.active_id, rotated.active_id}
    assert (keys_dir / "master" / "ACTIVE").read_text() == rotated.active_id + "\n"
    assert mode(key_file(keys_dir, rotated.active_id)) == 0o600
    assert mode(keys_dir / "master" / "ACTIVE") == 0o600
    reloaded = load_master_keys(keys_dir, environ=NO_ENV)
    assert reloaded.active_id == rotated.active_id
    assert reloaded.unwrap(old_id, old_wrapped, b"c") == b"old secret"
    assert reloaded.wrap(b"new", b"c")[0] == rotated.active_id


def test_rotation_refuses_an_exposed_key_set(keys_dir):
    ring = create_keys_dir(keys_dir)
    os.chmod(key_file(keys_dir, ring.active_id), 0o644)
    with pytest.raises(KeyStoreError, match="0o644"):
        rotate_master_key(keys_dir)
    assert len(list((keys_dir / "master").glob("*.key"))) == 1


def test_no_temporary_files_are_left_behind(keys_dir):
    create_keys_dir(keys_dir)
    rotate_master_key(keys_dir)
    leftovers = [p.name for p in (keys_dir / "master").iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_the_ring_repr_shows_ids_never_key_material(keys_dir):
    ring = create_keys_dir(keys_dir)
    encoded = key_file(keys_dir, ring.active_id).read_text().strip()
    raw = base64.b64decode(encoded)

    text = repr(ring)

    assert ring.active_id in text
    assert encoded not in text
    assert raw.hex() not in text
    assert repr(raw) not in text
    assert not any(isinstance(value, bytes) for value in vars(ring).values())
