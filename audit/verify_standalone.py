"""Check a Sealroom audit export against a signed checkpoint, with nothing of Sealroom itself.

    python verify_standalone.py --export log.jsonl --checkpoint cp.txt --verifier-key KEY

Standard library and `cryptography` (Ed25519) only, to be read beside URS §7. It checks that:
  1. every line of the export is one entry's canonical JSON, with seq 0, 1, 2, ... and a
     `prev` that is the SHA-256 of the line before (64 zeros for seq 0);
  2. the checkpoint carries a valid signature by the verifier key given on the command line
     (never a key taken from the log under test);
  3. the RFC 9162 Merkle root of the first N entries, N being the checkpoint's size, is the
     root the checkpoint signs (a longer export is fine; a shorter one lost entries).
After a signing-key rotation (R-KEY-1) give each hand-over checkpoint with `--hand-over FILE`
(`GET /api/v1/audit/key-hand-overs` serves them): a hand-over is the checkpoint of the tree
ending with the `key.rotated` entry that names the outgoing and incoming verifier keys, and
both keys sign it. From the key given, the script then trusts the next key (forward) or the
one before (backward) only through such a checkpoint whose root matches the export, and
checks the checkpoint against the key in force at its size.

Exit status 0 when all hold, 1 otherwise, with the reason on standard error.
"""

import argparse
import base64
import hashlib
import json
import re
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

ENTRY_KEYS = {"seq", "time", "actor", "role", "action", "subject", "data", "prev"}


class Failure(Exception):
    """The export or checkpoint does not verify; the message says why."""


def b64(text: str, size: int | None = None) -> bytes:
    """Strict standard base64 (RFC 4648 §4), optionally of an exact length."""
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raw = None
    if raw is None or base64.b64encode(raw).decode() != text or size not in (None, len(raw)):
        raise Failure(f"not base64 of {size or 'some'} bytes: {text!r}")
    return raw


def parse_verifier_key(line: str) -> tuple[str, bytes, bytes]:
    """URS §7: `<name>+<hex key id>+<base64(0x01 || 32-byte Ed25519 public key)>`."""
    parts = line.strip().split("+", 2)  # the base64 part may itself contain '+'
    if len(parts) != 3:
        raise Failure("the verifier key is not <name>+<key id>+<key>")
    name, key_id_hex, material = parts[0], parts[1], b64(parts[2], 33)
    if material[0] != 0x01:
        raise Failure("the verifier key is not an Ed25519 key (algorithm byte 0x01)")
    # The key id is the first 4 bytes of SHA-256(name || "\n" || 0x01 || public key).
    key_id = hashlib.sha256(name.encode() + b"\n" + material).digest()[:4]
    if key_id.hex() != key_id_hex:
        raise Failure("the verifier key's id does not match its name and key")
    return name, key_id, material[1:]


def verify_checkpoint(note: str, name: str, key_id: bytes, key: bytes) -> tuple[str, int, bytes]:
    """C2SP signed note (URS §7): the body, a blank line, then `— <name> <base64>` lines."""
    body, _, signatures = note.rpartition("\n\n")
    body += "\n"  # the signed body ends with its last line's newline
    lines = body[:-1].split("\n")
    if len(lines) < 3 or not re.fullmatch(r"0|[1-9][0-9]*", lines[1]):
        raise Failure("the checkpoint body is not `origin / size / root`")
    size, root = int(lines[1]), b64(lines[2], 32)
    for line in signatures.splitlines():
        dash, _, rest = line.partition(" ")
        signer, _, signature = rest.partition(" ")
        raw = b64(signature) if dash == "\u2014" and signer == name else b""
        if raw[:4] != key_id:
            continue  # a signature by another key (a witness, say) is allowed and ignored
        try:
            Ed25519PublicKey.from_public_bytes(key).verify(raw[4:], body.encode())
            return lines[0], size, root
        except InvalidSignature:
            pass
    raise Failure(f"the checkpoint is not signed by the trusted key {name}+{key_id.hex()}")


def keys_in_force(
    trusted: tuple[str, bytes, bytes], hand_overs: list[str], lines: list[bytes], size: int
) -> list[tuple[str, bytes, bytes]]:
    """The keys that must sign a checkpoint of `size`, reached from `trusted` (R-KEY-1).

    Each hand-over must be signed by both keys its `key.rotated` entry names, its root must
    match the export, and the rotations must chain: key k hands over to k + 1.
    """
    chain: list[tuple[str, bytes, bytes]] = []
    starts = [0]
    leaves = [hashlib.sha256(b"\x00" + line).digest() for line in lines]
    for note in sorted(hand_overs, key=lambda text: int(text.split("\n")[1])):
        h = int(note.split("\n")[1])
        if not 0 < h <= len(lines):
            raise Failure(f"the hand-over of size {h} is beyond the export")
        entry = json.loads(lines[h - 1])
        data = entry["data"] if isinstance(entry["data"], dict) else {}
        if entry["action"] != "key.rotated" or data.get("key") != "signing":
            raise Failure(f"the hand-over of size {h} does not end with a signing key.rotated")
        old, new = (parse_verifier_key(data[f"{w}_verifier_key"]) for w in ("old", "new"))
        if chain and chain[-1] != old:
            raise Failure(f"the rotation at seq {h - 1} does not hand over from the key before")
        for key in (old, new):  # signed by both, over the export's own tree
            _, _, root = verify_checkpoint(note, *key)
            if root != merkle_root(leaves, 0, h):
                raise Failure(f"the hand-over of size {h} does not match the export")
        chain = chain or [old]
        chain.append(new)
        starts.append(h)
    if not chain:
        return [trusted]
    if trusted not in chain:
        raise Failure("the verifier key is none of the keys the hand-overs chain")
    epoch = max(i for i, start in enumerate(starts) if start <= size)
    return [chain[epoch - 1], chain[epoch]] if epoch and starts[epoch] == size else [chain[epoch]]


def merkle_root(leaves: list[bytes], lo: int, hi: int) -> bytes:
    """RFC 9162 §2.1.1: MTH of leaves[lo:hi], split at the largest power of two below n."""
    n = hi - lo
    if n <= 1:
        return leaves[lo] if n else hashlib.sha256(b"").digest()
    k = 1 << ((n - 1).bit_length() - 1)
    left, right = merkle_root(leaves, lo, lo + k), merkle_root(leaves, lo + k, hi)
    return hashlib.sha256(b"\x01" + left + right).digest()


def refuse_float(text: str) -> float:
    """Floats are not allowed in entries (URS §7 writes decimals as strings)."""
    raise Failure(f"a float ({text}) in an entry")


def check_export(path: str, size: int) -> tuple[int, list[bytes]]:
    """Check every line; return the number of entries and the leaf hashes of the first `size`."""
    with open(path, "rb") as export:
        lines = export.read().split(b"\n")
    if lines.pop() != b"":
        raise Failure("the export does not end with a newline (was it cut short?)")
    leaves, prev = [], "0" * 64
    for seq, line in enumerate(lines):
        try:
            entry = json.loads(line, parse_float=refuse_float, parse_constant=refuse_float)
        except ValueError as error:
            raise Failure(f"line {seq + 1} is not a JSON entry: {error}") from None
        if not isinstance(entry, dict) or set(entry) != ENTRY_KEYS:
            raise Failure(f"line {seq + 1} does not have exactly the keys of URS §7")
        # URS §7's normative canonical form: any other spelling of the entry is refused.
        canonical = json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        if canonical.encode("utf-8") != line:
            raise Failure(f"line {seq + 1} is not in canonical form")
        if type(entry["seq"]) is not int or entry["seq"] != seq:  # a bool is not a seq
            raise Failure(f"line {seq + 1} holds seq {entry['seq']}, expected {seq}")
        if entry["prev"] != prev:  # so this entry, or the one before it, was altered
            raise Failure(f"entry {seq}'s prev is not the hash of the entry before it")
        prev = hashlib.sha256(line).hexdigest()
        if seq < size:
            leaves.append(hashlib.sha256(b"\x00" + line).digest())  # RFC 9162 leaf hash
    return len(lines), leaves


def main(argv: list[str] | None = None) -> int:
    """Run the checks, print a summary, and return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export", required=True, help="the JSON Lines audit export")
    parser.add_argument("--checkpoint", required=True, help="a file holding a signed checkpoint")
    parser.add_argument("--verifier-key", required=True, help="name+id+key, obtained out of band")
    parser.add_argument(
        "--hand-over", action="append", default=[], help="a signing-key hand-over checkpoint"
    )
    args = parser.parse_args(argv)
    try:
        trusted = parse_verifier_key(args.verifier_key)
        with open(args.checkpoint, encoding="utf-8", newline="") as file:
            note = file.read()
        signers = [trusted]
        if args.hand_over:
            hand_overs = []
            for path in args.hand_over:
                with open(path, encoding="utf-8", newline="") as file:
                    hand_overs.append(file.read())
            with open(args.export, "rb") as export:
                lines = export.read().split(b"\n")[:-1]
            signers = keys_in_force(trusted, hand_overs, lines, int(note.split("\n")[1]))
        for signer in signers:  # at a hand-over size, both keys
            origin, size, root = verify_checkpoint(note, *signer)
        name, key_id, _ = signers[-1]
        count, leaves = check_export(args.export, size)
        if count < size:
            raise Failure(f"entries {count} to {size - 1} are missing (truncation or rollback)")
        if merkle_root(leaves, 0, size) != root:
            raise Failure(f"the first {size} entries do not match the signed checkpoint's root")
    except (Failure, OSError, UnicodeError, ValueError, KeyError, IndexError) as error:
        print(f"FAILED: {error}", file=sys.stderr)
        return 1
    print(f"OK: {count} entries, canonical and chained; the checkpoint of size {size} ({origin})")
    print(f"    is signed by {name}+{key_id.hex()} and its root matches the first {size} entries.")
    if count > size:
        print(f"    Entries {size} to {count - 1} came later: no checkpoint here covers them yet.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
