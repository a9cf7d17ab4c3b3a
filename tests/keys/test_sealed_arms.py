"""Sealed arms (URS §5 R-SEAL): bound to their row, one size whatever the arm, never in clear."""

import base64
import dataclasses
import json
import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st

from keys import ARM_PLAINTEXT_LENGTH, SealedArm, Sealer, UnsealError

pytestmark = pytest.mark.requirement("R-SEAL")

TRIAL = "RECLAIIM"
KEY_ID = "dk-00112233445566ff"
KEY = bytes(range(32))
ARMS = ["igpro20", "placebo"]


@pytest.fixture
def sealer():
    return Sealer(TRIAL, {KEY_ID: KEY}, KEY_ID)


@pytest.mark.parametrize("arm", ARMS)
def test_a_sealed_arm_opens_for_its_own_object(sealer, arm):
    sealed = sealer.seal_arm(arm, "slot", "R01-0001")
    assert sealer.unseal_arm(sealed, "slot", "R01-0001") == arm


def test_a_seal_copied_to_another_object_id_does_not_open(sealer):
    sealed = sealer.seal_arm("placebo", "kit", "K-483920")
    with pytest.raises(UnsealError):
        sealer.unseal_arm(sealed, "kit", "K-483921")


def test_a_seal_copied_to_another_kind_does_not_open(sealer):
    sealed = sealer.seal_arm("placebo", "kit", "1234")
    with pytest.raises(UnsealError):
        sealer.unseal_arm(sealed, "slot", "1234")


def test_a_seal_copied_to_another_trial_does_not_open(sealer):
    sealed = sealer.seal_arm("placebo", "participant", "SCR-001")
    other_trial = Sealer("OTHER", {KEY_ID: KEY}, KEY_ID)
    with pytest.raises(UnsealError):
        other_trial.unseal_arm(sealed, "participant", "SCR-001")


@pytest.mark.parametrize("field", ["nonce", "ciphertext"])
def test_a_tampered_seal_does_not_open(sealer, field):
    sealed = sealer.seal_arm("igpro20", "slot", "R01-0001")
    original = getattr(sealed, field)
    for index in range(len(original)):
        altered = bytearray(original)
        altered[index] ^= 0x80
        tampered = dataclasses.replace(sealed, **{field: bytes(altered)})
        with pytest.raises(UnsealError):
            sealer.unseal_arm(tampered, "slot", "R01-0001")


def test_a_seal_under_an_unknown_key_id_does_not_open(sealer):
    sealed = sealer.seal_arm("igpro20", "slot", "R01-0001")
    relabelled = dataclasses.replace(sealed, key_id="dk-ffffffffffffffff")
    with pytest.raises(UnsealError, match="unknown data key"):
        sealer.unseal_arm(relabelled, "slot", "R01-0001")


def test_a_seal_under_another_key_with_the_same_id_does_not_open(sealer):
    sealed = sealer.seal_arm("igpro20", "slot", "R01-0001")
    impostor = Sealer(TRIAL, {KEY_ID: os.urandom(32)}, KEY_ID)
    with pytest.raises(UnsealError):
        impostor.unseal_arm(sealed, "slot", "R01-0001")


def test_old_data_keys_still_open_after_a_new_one_becomes_active():
    old_key, new_key = os.urandom(32), os.urandom(32)
    old = Sealer(TRIAL, {"dk-old": old_key}, "dk-old")
    sealed = old.seal_arm("placebo", "slot", "R01-0001")

    both = Sealer(TRIAL, {"dk-old": old_key, "dk-new": new_key}, "dk-new")

    assert both.unseal_arm(sealed, "slot", "R01-0001") == "placebo"
    assert both.seal_arm("placebo", "slot", "R01-0002").key_id == "dk-new"


def test_every_arm_seals_to_the_same_lengths(sealer):
    arms = [*ARMS, "a", "z" * 32, "arm_2"]
    seals = [sealer.seal_arm(arm, "kit", "K-1") for arm in arms]

    assert {len(s.ciphertext) for s in seals} == {ARM_PLAINTEXT_LENGTH + 16}
    assert {len(s.nonce) for s in seals} == {12}
    assert len({len(s.to_text()) for s in seals}) == 1
    assert len({len(json.dumps(s.to_json())) for s in seals}) == 1


def test_sealing_the_same_arm_twice_gives_different_seals(sealer):
    first = sealer.seal_arm("placebo", "slot", "R01-0001")
    second = sealer.seal_arm("placebo", "slot", "R01-0001")
    assert first.nonce != second.nonce
    assert first.ciphertext != second.ciphertext
    assert first.to_text() != second.to_text()


@pytest.mark.parametrize("arm", ARMS)
def test_no_form_of_a_seal_shows_the_arm_or_the_key(sealer, arm):
    sealed = sealer.seal_arm(arm, "slot", "R01-0001")
    forms = [sealed.to_text(), json.dumps(sealed.to_json()), repr(sealed), repr(sealer)]
    for form in forms:
        assert arm not in form
        assert KEY.hex() not in form
        assert base64.b64encode(KEY).decode() not in form
        assert repr(KEY) not in form
    assert KEY not in vars(sealer).values()


def test_the_text_form_round_trips_and_has_the_documented_shape(sealer):
    sealed = sealer.seal_arm("igpro20", "slot", "R01-0001")
    text = sealed.to_text()

    version, key_id, nonce, ciphertext = text.split(".")
    assert (version, key_id) == ("v1", KEY_ID)
    assert "=" not in text
    assert base64.urlsafe_b64decode(nonce + "==") == sealed.nonce
    assert base64.urlsafe_b64decode(ciphertext + "=") == sealed.ciphertext
    assert SealedArm.from_text(text) == sealed
    assert sealer.unseal_arm(SealedArm.from_text(text), "slot", "R01-0001") == "igpro20"


def test_the_json_form_round_trips_with_standard_base64(sealer):
    sealed = sealer.seal_arm("igpro20", "slot", "R01-0001")
    obj = json.loads(json.dumps(sealed.to_json()))

    assert set(obj) == {"key_id", "nonce", "ciphertext"}
    assert base64.b64decode(obj["ciphertext"], validate=True) == sealed.ciphertext
    assert SealedArm.from_json(obj) == sealed


def _valid_text(sealer) -> str:
    return sealer.seal_arm("igpro20", "slot", "R01-0001").to_text()


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: "",
        lambda t: "garbage",
        lambda t: "v2" + t[2:],
        lambda t: t + ".extra",
        lambda t: t.replace(".", "..", 1),
        lambda t: t + "=",
        lambda t: t[:-1] + "+",
        lambda t: t[:-2],
        lambda t: t + "AA",
        lambda t: t.replace(KEY_ID, "dk/0"),
        lambda t: t * 10,
    ],
)
def test_malformed_text_is_refused(sealer, mangle):
    with pytest.raises(UnsealError, match="malformed"):
        SealedArm.from_text(mangle(_valid_text(sealer)))


def test_text_with_spare_base64_bits_is_refused(sealer):
    text = _valid_text(sealer)
    # 80 bytes end in a 3-character group whose last character carries 2 spare bits.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(text[-1])
    altered = text[:-1] + alphabet[last ^ 0x01]
    with pytest.raises(UnsealError, match="malformed"):
        SealedArm.from_text(altered)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda o: {k: v for k, v in o.items() if k != "nonce"},
        lambda o: {**o, "arm": "x"},
        lambda o: {**o, "nonce": 12},
        lambda o: {**o, "nonce": o["nonce"][:-4]},
        lambda o: {**o, "ciphertext": o["ciphertext"].replace("=", "")},
        lambda o: {**o, "ciphertext": "!" + o["ciphertext"][1:]},
        lambda o: {**o, "key_id": "dk.1"},
        lambda o: [o],
    ],
)
def test_malformed_json_is_refused(sealer, mangle):
    obj = sealer.seal_arm("igpro20", "slot", "R01-0001").to_json()
    with pytest.raises(UnsealError, match="malformed"):
        SealedArm.from_json(mangle(obj))


def test_a_sealed_arm_with_wrong_sizes_cannot_be_built():
    with pytest.raises(UnsealError):
        SealedArm(key_id=KEY_ID, nonce=b"n" * 11, ciphertext=b"c" * 80)
    with pytest.raises(UnsealError):
        SealedArm(key_id=KEY_ID, nonce=b"n" * 12, ciphertext=b"c" * 79)


@pytest.mark.parametrize("arm", ["Placebo", "1arm", "", "a" * 33, "arm-1", "armé", "arm\n", "a|b"])
def test_an_invalid_arm_id_is_refused_without_quoting_it(sealer, arm):
    with pytest.raises(ValueError) as caught:
        sealer.seal_arm(arm, "slot", "R01-0001")
    if arm:
        assert arm not in str(caught.value)


@pytest.mark.parametrize(
    ("kind", "object_id"),
    [
        ("sl|ot", "1"),
        ("slot", "R01|0001"),
        ("", "1"),
        ("slot", ""),
        ("Slot", "1"),
        ("slot", "\ud800"),
    ],
)
def test_ambiguous_associated_data_is_refused(sealer, kind, object_id):
    with pytest.raises(ValueError):
        sealer.seal_arm("placebo", kind, object_id)
    sealed = sealer.seal_arm("placebo", "slot", "1")
    with pytest.raises(ValueError):
        sealer.unseal_arm(sealed, kind, object_id)


@pytest.mark.parametrize("trial_id", ["", "A|B"])
def test_an_ambiguous_trial_id_is_refused(trial_id):
    with pytest.raises(ValueError):
        Sealer(trial_id, {KEY_ID: KEY}, KEY_ID)


def test_a_sealer_refuses_bad_keys_without_quoting_them():
    with pytest.raises(ValueError) as caught:
        Sealer(TRIAL, {KEY_ID: b"short key"}, KEY_ID)
    assert "short key" not in str(caught.value)
    with pytest.raises(ValueError):
        Sealer(TRIAL, {"dk.1": KEY}, "dk.1")
    with pytest.raises(ValueError):
        Sealer(TRIAL, {KEY_ID: KEY}, "dk-other")


@pytest.mark.parametrize(
    "plaintext",
    [
        b"\0" * 64,
        b"placebo".ljust(63, b"\0") + b"x",
        b"PLACEBO".ljust(64, b"\0"),
        b"placebo".ljust(64, b" "),
        b"placebo\0x".ljust(64, b"\0"),
        b"placebo".ljust(64, b"\0")[:63],
    ],
)
def test_an_authentic_seal_without_proper_padding_is_refused(sealer, plaintext):
    # Built by hand with the right key and associated data: only the padding is wrong.
    nonce = os.urandom(12)
    aad = f"sealroom/arm/v1|{TRIAL}|slot|R01-0001".encode()
    ciphertext = AESGCM(KEY).encrypt(nonce, plaintext, aad)
    if len(ciphertext) != 80:
        # A short plaintext cannot even form a SealedArm.
        with pytest.raises(UnsealError):
            SealedArm(key_id=KEY_ID, nonce=nonce, ciphertext=ciphertext)
        return
    with pytest.raises(UnsealError, match="padding") as caught:
        sealer.unseal_arm(SealedArm(KEY_ID, nonce, ciphertext), "slot", "R01-0001")
    assert "placebo" not in str(caught.value).lower()


def test_the_associated_data_is_exactly_the_documented_bytes(sealer):
    sealed = sealer.seal_arm("igpro20", "participant", "SCR-001")
    aad = b"sealroom/arm/v1|RECLAIIM|participant|SCR-001"
    plaintext = AESGCM(KEY).decrypt(sealed.nonce, sealed.ciphertext, aad)
    assert plaintext == b"igpro20" + b"\0" * 57


TEXT_LENGTH = len(Sealer(TRIAL, {KEY_ID: KEY}, KEY_ID).seal_arm("a", "slot", "1").to_text())


@given(
    arm=st.from_regex(r"[a-z][a-z0-9_]{0,31}", fullmatch=True),
    kind=st.sampled_from(["slot", "kit", "participant"]),
    object_id=st.text(min_size=1, max_size=40).filter(lambda s: "|" not in s),
)
def test_any_valid_arm_and_object_round_trips_at_one_length(arm, kind, object_id):
    sealer = Sealer(TRIAL, {KEY_ID: KEY}, KEY_ID)
    sealed = sealer.seal_arm(arm, kind, object_id)

    assert len(sealed.ciphertext) == ARM_PLAINTEXT_LENGTH + 16
    assert len(sealed.to_text()) == TEXT_LENGTH
    assert sealer.unseal_arm(SealedArm.from_text(sealed.to_text()), kind, object_id) == arm
    assert sealer.unseal_arm(SealedArm.from_json(sealed.to_json()), kind, object_id) == arm
