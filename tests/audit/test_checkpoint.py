"""Signed checkpoints: the C2SP tlog-checkpoint / signed-note format of URS §7."""

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.checkpoint import (
    Checkpoint,
    CheckpointError,
    VerifierKey,
    parse_checkpoint,
    parse_verifier_key,
    sign_checkpoint,
    verifier_key_from_private,
    verify_checkpoint,
)

NAME = "sealroom/RECLAIIM"
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
ROOT = bytes.fromhex("5a0c199c61becf904ab898569258b4ae4f30ae54e4d7ecd42e7038e821bca07d")
CHECKPOINT = Checkpoint(NAME, 1, ROOT)
VERIFIER = verifier_key_from_private(NAME, KEY)

# The example of golang.org/x/mod/sumdb/note (and of the C2SP signed-note spec): an
# implementation that is not ours, pinning the key id, the key line and the signature line.
GO_SIGNER = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VERIFIER = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_SIGNATURE = (
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
)


def note_with(*signature_lines, body=None):
    body = CHECKPOINT.body() if body is None else body
    return body + "\n" + "".join(line + "\n" for line in signature_lines)


def our_signature_line(checkpoint=CHECKPOINT, key=KEY, name=NAME):
    return sign_checkpoint(checkpoint, key, name).split("\n\n", 1)[1].rstrip("\n")


# --- known answers -----------------------------------------------------------------------------


def test_known_answer_note_and_verifier_key_for_a_fixed_key():
    assert VERIFIER.line() == (
        "sealroom/RECLAIIM+36566c03+AQOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4"
    )
    assert VERIFIER.public_key.hex() == (
        "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
    )
    assert sign_checkpoint(CHECKPOINT, KEY, NAME) == (
        "sealroom/RECLAIIM\n"
        "1\n"
        "WgwZnGG+z5BKuJhWkli0rk8wrlTk1+zULnA46CG8oH0=\n"
        "\n"
        "\u2014 sealroom/RECLAIIM NlZsA5u7vlsE9smSOKtzr5fnrWW0AbehUqyAn6OgiRZo5geSPN46RGyHZYtt"
        "/MPEKR3wEPxc7AcgtakZOsdeL8Rm9A8=\n"
    )


def test_the_known_answer_is_the_urs_formula_spelled_out():
    public = VERIFIER.public_key
    key_id = hashlib.sha256(NAME.encode() + b"\n" + b"\x01" + public).digest()[:4]
    body = f"{NAME}\n1\n{base64.b64encode(ROOT).decode()}\n"
    signature = KEY.sign(body.encode())
    expected = body + "\n\u2014 " + NAME + " " + base64.b64encode(key_id + signature).decode()
    assert sign_checkpoint(CHECKPOINT, KEY, NAME) == expected + "\n"
    assert VERIFIER.key_id == key_id
    material = base64.b64encode(b"\x01" + public).decode()
    assert VERIFIER.line() == f"{NAME}+{key_id.hex()}+{material}"


def test_key_id_and_signature_line_match_the_go_sumdb_note_example():
    seed = base64.b64decode(GO_SIGNER.split("+", 4)[4])[1:]
    key = Ed25519PrivateKey.from_private_bytes(seed)
    verifier = verifier_key_from_private("PeterNeumann", key)
    assert verifier.line() == GO_VERIFIER
    assert parse_verifier_key(GO_VERIFIER) == verifier
    assert base64.b64encode(verifier.key_id + key.sign(GO_TEXT.encode())).decode() == GO_SIGNATURE


def test_the_c2sp_example_checkpoint_parses():
    note = (
        "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n"
        "\u2014 example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URY"
        "N7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
    )
    checkpoint, signatures = parse_checkpoint(note)
    assert (checkpoint.origin, checkpoint.size) == ("example.com/behind-the-sofa", 20852163)
    assert [(s.key_name, s.key_id.hex(), len(s.signature)) for s in signatures] == [
        ("example.com/behind-the-sofa", "033de0ae", 64)
    ]


# --- round trips and several signatures --------------------------------------------------------


def test_a_signed_checkpoint_round_trips():
    checkpoint = Checkpoint(NAME, 123456, hashlib.sha256(b"root").digest())
    note = sign_checkpoint(checkpoint, KEY, NAME)
    assert verify_checkpoint(note, VERIFIER) == checkpoint
    parsed, signatures = parse_checkpoint(note)
    assert parsed == checkpoint
    assert [(s.key_name, s.key_id) for s in signatures] == [(NAME, VERIFIER.key_id)]
    assert parse_verifier_key(VERIFIER.line()) == VERIFIER


def test_a_note_signed_with_the_signers_verifier_key_given_is_the_same_note():
    assert sign_checkpoint(CHECKPOINT, KEY, NAME, VERIFIER) == sign_checkpoint(
        CHECKPOINT, KEY, NAME
    )


def test_a_verifier_key_given_under_another_name_is_refused():
    with pytest.raises(CheckpointError, match="the verifier key is other/origin's"):
        sign_checkpoint(CHECKPOINT, KEY, NAME, verifier_key_from_private("other/origin", KEY))


def test_the_empty_tree_has_a_checkpoint_of_size_0():
    empty = Checkpoint(NAME, 0, hashlib.sha256(b"").digest())
    assert verify_checkpoint(sign_checkpoint(empty, KEY, NAME), VERIFIER) == empty


@pytest.mark.parametrize("ours_first", [True, False])
def test_our_signature_is_found_among_signatures_by_unknown_keys(ours_first):
    witness = our_signature_line(key=OTHER_KEY, name="witness.example")
    lines = [our_signature_line(), witness] if ours_first else [witness, our_signature_line()]
    assert verify_checkpoint(note_with(*lines), VERIFIER) == CHECKPOINT


def test_extension_lines_are_accepted_and_stay_signed():
    extended = Checkpoint(NAME, 7, ROOT, ("timestamp 1764403200",))
    note = sign_checkpoint(extended, KEY, NAME)
    assert note.startswith(
        f"{NAME}\n7\n{base64.b64encode(ROOT).decode()}\ntimestamp 1764403200\n\n"
    )
    assert verify_checkpoint(note, VERIFIER) == extended
    with pytest.raises(CheckpointError, match="not signed by the trusted key"):
        verify_checkpoint(note.replace("1764403200", "1764403201"), VERIFIER)


# --- refusals ----------------------------------------------------------------------------------


def test_a_note_signed_only_by_an_unknown_key_is_refused():
    note = sign_checkpoint(CHECKPOINT, OTHER_KEY, "witness.example")
    with pytest.raises(CheckpointError) as refused:
        verify_checkpoint(note, VERIFIER)
    assert str(refused.value).startswith(
        "checkpoint is not signed by the trusted key sealroom/RECLAIIM+36566c03"
    )


@pytest.mark.parametrize(
    "change",
    [
        ("\n1\n", "\n2\n"),
        ("WgwZ", "WgwY"),
        ("sealroom/RECLAIIM\n1", "sealroom/RECLAIIX\n1"),
    ],
    ids=["size", "root", "origin"],
)
def test_a_changed_body_is_refused(change):
    note = sign_checkpoint(CHECKPOINT, KEY, NAME).replace(*change, 1)
    with pytest.raises(CheckpointError, match="not signed by the trusted key"):
        verify_checkpoint(note, VERIFIER)


def test_a_different_key_under_our_name_is_refused():
    # Same name, different key: its key id differs, so the line is not even tried.
    impostor = sign_checkpoint(CHECKPOINT, OTHER_KEY, NAME)
    with pytest.raises(CheckpointError, match="no signature line carries that key's name and id"):
        verify_checkpoint(impostor, VERIFIER)
    # Same name and our key id, but a signature made with another key: it does not verify.
    forged_raw = base64.b64decode(our_signature_line(key=OTHER_KEY).split(" ")[2])
    forged = f"\u2014 {NAME} {base64.b64encode(VERIFIER.key_id + forged_raw[4:]).decode()}"
    with pytest.raises(CheckpointError, match="its signature by that key does not verify"):
        verify_checkpoint(note_with(forged), VERIFIER)


def test_a_signature_under_another_name_with_our_key_is_refused():
    note = sign_checkpoint(CHECKPOINT, KEY, "sealroom/OTHER")
    with pytest.raises(CheckpointError, match="not signed by the trusted key"):
        verify_checkpoint(note, VERIFIER)


def test_a_truncated_signature_is_refused():
    line = our_signature_line()
    raw = base64.b64decode(line.split(" ")[2])
    short = f"\u2014 {NAME} {base64.b64encode(raw[:-1]).decode()}"
    with pytest.raises(CheckpointError, match="not signed by the trusted key"):
        verify_checkpoint(note_with(short), VERIFIER)


SIGNATURE = our_signature_line()
ROOT_B64 = base64.b64encode(ROOT).decode()


@pytest.mark.parametrize(
    ("note", "message"),
    [
        ("", "ends with a newline"),
        (note_with(SIGNATURE).rstrip("\n"), "ends with a newline"),
        (CHECKPOINT.body(), "no blank line before the signatures"),
        (CHECKPOINT.body() + "\n", "no signature lines"),
        (note_with(SIGNATURE, body=f"{NAME}\n1\n"), "needs origin, size and root"),
        (note_with(SIGNATURE, body=f"{NAME}\n01\n{ROOT_B64}\n"), "size '01' is not a tree size"),
        (note_with(SIGNATURE, body=f"{NAME}\n-1\n{ROOT_B64}\n"), "size '-1' is not a tree size"),
        (note_with(SIGNATURE, body=f"{NAME}\n+1\n{ROOT_B64}\n"), "is not a tree size"),
        (note_with(SIGNATURE, body=f"{NAME}\n\u0661\n{ROOT_B64}\n"), "is not a tree size"),
        (note_with(SIGNATURE, body=f"{NAME}\n{2**64}\n{ROOT_B64}\n"), "is not a tree size"),
        (note_with(SIGNATURE, body=f"{NAME}\n1\n{ROOT_B64[:-1]}\n"), "root hash is not base64"),
        (note_with(SIGNATURE, body=f"{NAME}\n1\n{ROOT_B64[:-2]}1=\n"), "root hash is not base64"),
        (note_with(SIGNATURE, body=f"{NAME}\n1\nAAAA\n"), "root hash is not 32 bytes"),
        (note_with(SIGNATURE, body=f"\n1\n{ROOT_B64}\n"), "empty line"),
        (note_with(SIGNATURE, body=f"{NAME}\r\n1\n{ROOT_B64}\n"), "control characters"),
        (note_with("- " + SIGNATURE[2:]), "not a signature line"),
        (note_with(SIGNATURE, "hello"), "not a signature line"),
        (note_with(SIGNATURE.replace(" ", "  ", 1)), "is '\u2014 <name> <base64>'"),
        (note_with(SIGNATURE + " extra"), "is '\u2014 <name> <base64>'"),
        (note_with(f"\u2014 {NAME} AAAA"), "too short"),
        (note_with(f"\u2014 {NAME} not-base64!"), "signature is not base64"),
        (note_with(f"\u2014 bad+name {SIGNATURE.split(' ')[2]}"), "key name"),
        (note_with(*[SIGNATURE] * 101), "too many signature lines"),
    ],
)
def test_malformed_notes_are_refused_with_a_clear_message(note, message):
    with pytest.raises(CheckpointError, match=message) as refused:
        verify_checkpoint(note, VERIFIER)
    assert str(refused.value).startswith("malformed checkpoint: ")


def test_a_plain_signed_note_is_not_a_checkpoint():
    note = GO_TEXT + "\n\u2014 PeterNeumann " + GO_SIGNATURE + "\n"
    with pytest.raises(CheckpointError, match="needs origin, size and root"):
        parse_checkpoint(note)


# --- verifier keys -----------------------------------------------------------------------------


def test_a_verifier_key_whose_base64_contains_a_plus_parses():
    # From the tests of transparency-dev/formats: the key material itself contains '+'.
    key = parse_verifier_key("TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6")
    assert (key.name, key.key_id.hex()) == ("TEST", "7997405c")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("sealroom/RECLAIIM", "expected <name>\\+<key id>\\+<key>"),
        (VERIFIER.line().replace("36566c03", "36566c04"), "key id does not match"),
        (VERIFIER.line().replace("36566c03", "36566C03"), "8 lowercase hex digits"),
        (VERIFIER.line().replace("36566c03", "36566c0"), "8 lowercase hex digits"),
        (VERIFIER.line().replace("+AQ", "+Ag"), "not base64|not an Ed25519 key"),
        (VERIFIER.line()[:-4], "not base64|not an Ed25519 key"),
        ("+36566c03+" + VERIFIER.line().split("+", 2)[2], "key name"),
        ("seal room" + VERIFIER.line()[len(NAME) :], "key name"),
    ],
)
def test_malformed_verifier_keys_are_refused(line, message):
    with pytest.raises(CheckpointError, match=message) as refused:
        parse_verifier_key(line)
    assert str(refused.value).startswith("malformed verifier key: ")


def test_a_verifier_key_must_have_the_id_of_its_key():
    with pytest.raises(CheckpointError, match="key id does not match"):
        VerifierKey(NAME, b"\x00" * 4, VERIFIER.public_key)


def test_signing_refuses_a_key_name_a_verifier_could_not_parse():
    for name in ("", "with space", "a+b"):
        with pytest.raises(CheckpointError, match="key name"):
            sign_checkpoint(CHECKPOINT, KEY, name)
