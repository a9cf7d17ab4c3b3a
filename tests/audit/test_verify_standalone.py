"""The inspector's standalone verifier, run as a script exactly as an inspector would run it."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from audit.checkpoint import Checkpoint, sign_checkpoint, verifier_key_from_private
from audit.entry import canonical_bytes
from audit.merkle import leaf_hash, root_from_leaves
from tests.audit.test_verify import KEY, LOG, NAME, OTHER_KEY, VERIFIER, chain, entry_fields

SCRIPT = Path(__file__).resolve().parents[2] / "audit" / "verify_standalone.py"


def checkpoint_note(entries, size, key=KEY):
    root = root_from_leaves([leaf_hash(raw) for raw in entries[:size]])
    return sign_checkpoint(Checkpoint(NAME, size, root), key, NAME)


def run(tmp_path, entries, note, key_line=None, cut=0):
    export = tmp_path / "log.jsonl"
    content = b"".join(raw + b"\n" for raw in entries)
    export.write_bytes(content[: len(content) - cut])
    checkpoint = tmp_path / "cp.txt"
    checkpoint.write_bytes(note.encode("utf-8"))
    command = [sys.executable, str(SCRIPT), "--export", str(export), "--checkpoint"]
    command += [str(checkpoint), "--verifier-key", key_line or VERIFIER.line()]
    return subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, check=False)


def test_it_imports_only_the_standard_library_and_cryptography():
    tree = ast.parse(SCRIPT.read_text())
    modules = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert modules <= set(sys.stdlib_module_names) | {"cryptography"}
    # Short enough to read beside URS §7; following signing-key hand-overs (R-KEY-1) added
    # some 60 lines to the 150 it had.
    assert len(SCRIPT.read_text().splitlines()) <= 220


def test_a_good_export_verifies(tmp_path):
    result = run(tmp_path, LOG, checkpoint_note(LOG, 40))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK: 40 entries, canonical and chained;")
    assert "signed by sealroom/RECLAIIM+36566c03" in result.stdout


def test_an_export_longer_than_the_checkpoint_verifies_and_says_so(tmp_path):
    result = run(tmp_path, LOG, checkpoint_note(LOG, 25))
    assert result.returncode == 0, result.stderr
    assert "Entries 25 to 39 came later: no checkpoint here covers them yet." in result.stdout


def test_the_empty_log_verifies_against_the_empty_checkpoint(tmp_path):
    assert run(tmp_path, [], checkpoint_note([], 0)).returncode == 0


def test_several_signatures_are_accepted_when_one_is_by_the_key(tmp_path):
    witness = sign_checkpoint(Checkpoint(NAME, 40, b"\x00" * 32), OTHER_KEY, "witness.example")
    note = checkpoint_note(LOG, 40) + witness.split("\n\n", 1)[1]
    assert run(tmp_path, LOG, note).returncode == 0


def edited(raw, **changes):
    entry = json.loads(raw)
    entry.update(changes)
    return canonical_bytes(entry)


def tampered_data():
    log = list(LOG)
    log[17] = edited(LOG[17], data={"note": "edited"})
    return log


def rechained():
    fields = [entry_fields(seq) for seq in range(40)]
    fields[17]["data"] = {"note": "edited"}
    return chain(fields)


OTHER_VERIFIER = verifier_key_from_private(NAME, OTHER_KEY)


@pytest.mark.parametrize(
    ("entries", "note", "key_line", "message"),
    [
        (tampered_data(), None, None, "entry 18's prev is not the hash of the entry before it"),
        (rechained(), None, None, "the first 40 entries do not match the signed checkpoint's root"),
        (LOG[:38], None, None, "entries 38 to 39 are missing (truncation or rollback)"),
        ([*LOG[:5], LOG[6], LOG[5], *LOG[7:]], None, None, "line 6 holds seq 6, expected 5"),
        (
            [*LOG[:3], LOG[3].replace(b'"seq":3', b'"seq": 3'), *LOG[4:]],
            None,
            None,
            "line 4 is not in canonical form",
        ),
        (
            [*LOG[:3], LOG[3].replace(b'"note":""', b'"note":1.5'), *LOG[4:]],
            None,
            None,
            "a float (1.5) in an entry",
        ),
        (
            LOG,
            checkpoint_note(LOG, 40, key=OTHER_KEY),
            None,
            "the checkpoint is not signed by the trusted key sealroom/RECLAIIM+36566c03",
        ),
        (
            LOG,
            checkpoint_note(LOG, 40, key=OTHER_KEY),
            OTHER_VERIFIER.line().replace(OTHER_VERIFIER.key_id.hex(), "00000000"),
            "the verifier key's id does not match its name and key",
        ),
        (
            LOG,
            checkpoint_note(LOG, 40).replace("\n40\n", "\n39\n"),
            None,
            "the checkpoint is not signed by the trusted key",
        ),
        (LOG, "not a checkpoint\n", None, "the checkpoint body is not `origin / size / root`"),
    ],
    ids=[
        "edited",
        "edited-and-rechained",
        "truncated",
        "reordered",
        "not-canonical",
        "float",
        "other-key",
        "bad-verifier-key",
        "changed-size",
        "not-a-checkpoint",
    ],
)
def test_a_tampered_export_or_checkpoint_fails_with_a_clear_message(
    tmp_path, entries, note, key_line, message
):
    result = run(tmp_path, entries, note or checkpoint_note(LOG, 40), key_line)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("FAILED: ")
    assert message in result.stderr


def test_an_export_cut_mid_line_fails(tmp_path):
    result = run(tmp_path, LOG, checkpoint_note(LOG, 40), cut=10)
    assert result.returncode == 1
    assert "does not end with a newline" in result.stderr
