"""Per-trial data keys wrapped by master keys, and master key rotation (URS §5 R-SEAL)."""

import base64
import dataclasses
import re

import pytest

from keys import (
    KeyStoreError,
    MasterKeyRing,
    WrappedDataKey,
    create_keys_dir,
    load_master_keys,
    new_data_key,
    rewrap_data_key,
    rotate_master_key,
    unwrap_data_key,
)

pytestmark = pytest.mark.requirement("R-SEAL")

TRIAL = "RECLAIIM"


@pytest.fixture
def ring():
    return MasterKeyRing.generate()


def test_a_new_data_key_is_random_and_wrapped_by_the_active_master_key(ring):
    wrapped, key = new_data_key(ring, TRIAL)
    other, other_key = new_data_key(ring, TRIAL)

    assert re.fullmatch(r"dk-[0-9a-f]{16}", wrapped.key_id)
    assert wrapped.master_key_id == ring.active_id
    assert len(key) == 32
    assert key not in wrapped.wrapped
    assert (other.key_id, other_key) != (wrapped.key_id, key)
    assert unwrap_data_key(ring, wrapped, TRIAL) == key


def test_a_data_key_does_not_unwrap_for_another_trial(ring):
    wrapped, _ = new_data_key(ring, TRIAL)
    with pytest.raises(KeyStoreError, match=wrapped.key_id):
        unwrap_data_key(ring, wrapped, "OTHER-TRIAL")


def test_a_wrapped_key_does_not_unwrap_under_another_data_key_id(ring):
    wrapped, _ = new_data_key(ring, TRIAL)
    relabelled = dataclasses.replace(wrapped, key_id="dk-0000000000000000")
    with pytest.raises(KeyStoreError):
        unwrap_data_key(ring, relabelled, TRIAL)


def test_a_tampered_wrapped_key_does_not_unwrap(ring):
    wrapped, _ = new_data_key(ring, TRIAL)
    for index in (0, 12, len(wrapped.wrapped) - 1):
        blob = bytearray(wrapped.wrapped)
        blob[index] ^= 0x01
        with pytest.raises(KeyStoreError):
            unwrap_data_key(ring, dataclasses.replace(wrapped, wrapped=bytes(blob)), TRIAL)


def test_a_data_key_does_not_unwrap_without_its_master_key(ring):
    wrapped, _ = new_data_key(ring, TRIAL)
    with pytest.raises(KeyStoreError, match="unknown master key"):
        unwrap_data_key(MasterKeyRing.generate(), wrapped, TRIAL)


def test_unwrap_errors_never_contain_the_key(ring):
    wrapped, key = new_data_key(ring, TRIAL)
    with pytest.raises(KeyStoreError) as caught:
        unwrap_data_key(ring, wrapped, "OTHER")
    assert key.hex() not in str(caught.value)
    assert repr(key) not in str(caught.value)


@pytest.mark.parametrize("trial_id", ["", "A|B"])
def test_an_ambiguous_trial_id_is_refused(ring, trial_id):
    with pytest.raises(ValueError, match="trial id"):
        new_data_key(ring, trial_id)


def test_rotation_keeps_old_data_keys_readable_and_rewrap_moves_them_to_the_new_key(tmp_path):
    keys_dir = tmp_path / "keys"
    first = create_keys_dir(keys_dir)
    wrapped, key = new_data_key(first, TRIAL)

    rotated = rotate_master_key(keys_dir)

    # Old data keys still open: nothing in the database had to change at rotation.
    assert unwrap_data_key(rotated, wrapped, TRIAL) == key
    rewrapped = rewrap_data_key(rotated, wrapped, TRIAL)
    assert rewrapped.key_id == wrapped.key_id
    assert rewrapped.master_key_id == rotated.active_id != wrapped.master_key_id
    assert unwrap_data_key(rotated, rewrapped, TRIAL) == key
    # The rewrapped key needs only the new master key...
    only_new = MasterKeyRing(
        {rotated.active_id: _raw_master_key(keys_dir, rotated.active_id)}, rotated.active_id
    )
    assert unwrap_data_key(only_new, rewrapped, TRIAL) == key
    # ... and new data keys are wrapped by it.
    fresh, _ = new_data_key(load_master_keys(keys_dir, environ={}), TRIAL)
    assert fresh.master_key_id == rotated.active_id


def test_rewrap_under_the_active_key_changes_nothing(ring):
    wrapped, _ = new_data_key(ring, TRIAL)
    assert rewrap_data_key(ring, wrapped, TRIAL) is wrapped


def test_rewrap_still_checks_the_key(ring):
    wrapped, _ = new_data_key(ring, TRIAL)
    with pytest.raises(KeyStoreError):
        rewrap_data_key(ring, wrapped, "OTHER")


def test_a_wrapped_data_key_is_a_frozen_value():
    wrapped = WrappedDataKey(key_id="dk-0", master_key_id="mk-0", wrapped=b"x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        wrapped.key_id = "dk-1"


def _raw_master_key(keys_dir, key_id) -> bytes:
    return base64.b64decode((keys_dir / "master" / f"{key_id}.key").read_text())
