"""The ``sealroom`` command line (URS §9 R-CLI), run in-process with click's CliRunner.

Each instance is a database of its own (a SQLite file, or a scratch PostgreSQL database)
with its instance and keys directories under the test's tmp_path. Commands that only add to
the trail share one module-wide instance; commands that must start from nothing, or that
tamper with the trail, get their own.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import stat
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from audit.checkpoint import verifier_key_from_private
from audit.entry import canonical_bytes, parse_entry
from keys import SealedArm, load_signing_key
from randomizer.cli import main
from randomizer.db import Database, make_engine
from randomizer.models import AuditEntry, Base, Kit, Site
from randomizer.roles import ROLES, Actor
from randomizer.services.context import load_trial_context
from randomizer.services.users import authenticate
from tests.conftest import APPENDIX_A_SEED, BACKENDS

SEED = APPENDIX_A_SEED.hex()
WRONG_SEED = "ff" * 32
HEX_64 = re.compile(r"\b[0-9a-f]{64}\b")
#: URS §9: one user per role, site roles at 101, plus a coordinator and a pharmacist at 102
#: and 201.
DEMO_ROLES_AND_SITES = {
    ("coordinator", "101"),
    ("investigator", "101"),
    ("pharmacist", "101"),
    ("coordinator", "102"),
    ("pharmacist", "102"),
    ("coordinator", "201"),
    ("pharmacist", "201"),
    ("medical_monitor", None),
    ("sponsor", None),
    ("statistician", None),
    ("auditor", None),
    ("admin", None),
}
#: Appendix A, first 16 slots of three strata (A = igpro20, P = placebo).
APPENDIX_A = {
    "region=north_america|prior_ig=yes": "A P A P P A A P A P P A P A P A",
    "region=europe|prior_ig=no": "A P A P P A A A P P A A P P P A",
    "region=rest_of_world|prior_ig=no": "P A P A A P A P P A A P P P A A",
}
LETTER = {"igpro20": "A", "placebo": "P"}


@dataclass
class Instance:
    """One deployment driven through the command line."""

    backend: str
    url: str
    directory: Path

    @property
    def keys_dir(self) -> Path:
        return self.directory / "keys"

    @property
    def tokens_path(self) -> Path:
        return self.directory / "tokens.json"

    def run(
        self, *args: str, env: dict[str, str] | None = None, stdin: str | None = None
    ) -> Result:
        """``sealroom --database-url <url> <args>`` with this instance's directory."""
        environment = {
            "SEALROOM_INSTANCE_DIR": str(self.directory),
            "SEALROOM_DATABASE_URL": None,
            "SEALROOM_KEYS_DIR": None,
            "SEALROOM_MASTER_KEY": None,
            "SEALROOM_LIST_SEED": None,
            **(env or {}),
        }
        return CliRunner().invoke(
            main, ["--database-url", self.url, *args], env=environment, input=stdin
        )

    @contextmanager
    def session(self) -> Iterator[Session]:
        database = Database(self.url)
        try:
            with database.reading() as session:
                yield session
        finally:
            database.dispose()

    def log(self) -> list[str]:
        with self.session() as session:
            return list(session.scalars(select(AuditEntry.canonical).order_by(AuditEntry.seq)))

    def entries_about(self, subject: str) -> list[dict[str, Any]]:
        return [
            entry
            for entry in (parse_entry(c.encode()) for c in self.log())
            if entry["subject"] == subject
        ]

    def authenticate(self, token: str) -> Actor | None:
        with self.session() as session:
            return authenticate(session, token)


def new_instance(scratch, backend: str, directory: Path) -> Instance:
    return Instance(backend=backend, url=scratch.new_url(backend), directory=directory / "instance")


def initialised(scratch, backend: str, directory: Path) -> Instance:
    instance = new_instance(scratch, backend, directory)
    result = instance.run("init-demo", "--seed", SEED)
    assert result.exit_code == 0, result.output
    return instance


@pytest.fixture(scope="module")
def demo(scratch, tmp_path_factory) -> Instance:
    """A SQLite demo shared by the tests that only add users and exports to it."""
    return initialised(scratch, "sqlite", tmp_path_factory.mktemp("cli-demo"))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# init-demo ---------------------------------------------------------------------------------


@pytest.mark.requirement("R-CLI")
@pytest.mark.parametrize("backend", BACKENDS)
def test_init_demo_creates_database_keys_tokens_sites_kits_and_users(scratch, tmp_path, backend):
    instance = new_instance(scratch, backend, tmp_path)

    result = instance.run("init-demo", "--seed", SEED)

    assert result.exit_code == 0, result.output
    # Keys: directories 0700, files 0600.
    assert mode(instance.keys_dir) == 0o700
    inside = list(instance.keys_dir.rglob("*"))
    assert any(path.is_file() for path in inside)
    for path in inside:
        assert mode(path) == (0o700 if path.is_dir() else 0o600), path
    # Tokens: 0600, one user per role, each token good for its own user.
    assert mode(instance.tokens_path) == 0o600
    tokens = json.loads(instance.tokens_path.read_text())
    assert {(t["role"], t["site"]) for t in tokens} == DEMO_ROLES_AND_SITES
    assert {t["role"] for t in tokens} == set(ROLES) and len(tokens) == len(DEMO_ROLES_AND_SITES)
    for token in tokens:
        actor = instance.authenticate(token["token"])
        assert actor is not None
        assert (actor.name, actor.role, actor.site) == (token["user"], token["role"], token["site"])
    # Three sites, 200 kits of every arm at each.
    with instance.session() as session:
        ctx = load_trial_context(session, instance.keys_dir)
        regions = {site.id: site.attributes["region"] for site in session.scalars(select(Site))}
        stock = Counter(
            (
                kit.site_id,
                ctx.sealer.unseal_arm(SealedArm.from_text(kit.sealed_arm), "kit", kit.kit_number),
            )
            for kit in session.scalars(select(Kit))
        )
    assert regions == {"101": "north_america", "102": "north_america", "201": "europe"}
    assert stock == {(site, arm): 200 for site in regions for arm in ("igpro20", "placebo")}
    if backend == "sqlite":
        assert Path(instance.url.removeprefix("sqlite:///")).is_file()
    # A seed was given: none is printed.
    assert SEED not in result.output and not HEX_64.search(result.output)


@pytest.mark.requirement("R-CLI")
@pytest.mark.requirement("R-LIST-3")
def test_init_demo_without_a_seed_prints_a_fresh_one_once_and_stores_only_a_commitment(
    scratch, tmp_path
):
    instance = new_instance(scratch, "sqlite", tmp_path)

    result = instance.run("init-demo")

    assert result.exit_code == 0, result.output
    (seed,) = HEX_64.findall(result.stdout)
    assert seed != SEED
    # It is the seed of the stored lists: the export accepts it.
    exported = instance.run("lists", "export", "--seed", seed, "--out", str(tmp_path / "l.csv"))
    assert exported.exit_code == 0, exported.output
    # Not kept anywhere: neither in the database files nor beside them.
    database = Path(instance.url.removeprefix("sqlite:///"))
    stored = [p for p in database.parent.iterdir() if p.name.startswith(database.name)]
    stored += [p for p in instance.directory.rglob("*") if p.is_file()]
    for path in stored:
        content = path.read_bytes()
        assert seed.encode() not in content and bytes.fromhex(seed) not in content, path


@pytest.mark.requirement("R-CLI")
def test_the_database_and_keys_can_be_named_by_environment_variables(scratch, tmp_path):
    url, keys_dir = scratch.new_url("sqlite"), tmp_path / "elsewhere" / "keys"
    environment = {
        "SEALROOM_DATABASE_URL": url,
        "SEALROOM_KEYS_DIR": str(keys_dir),
        "SEALROOM_INSTANCE_DIR": str(tmp_path / "instance"),
        "SEALROOM_MASTER_KEY": None,
    }

    created = CliRunner().invoke(main, ["init-demo", "--seed", SEED], env=environment)
    verified = CliRunner().invoke(main, ["audit", "verify"], env=environment)

    assert created.exit_code == 0, created.output
    assert mode(keys_dir) == 0o700 and any(keys_dir.rglob("*.key"))
    assert (tmp_path / "instance" / "tokens.json").is_file()
    assert verified.exit_code == 0, verified.output
    first = Instance("sqlite", url, tmp_path / "instance").log()[0]
    assert parse_entry(first.encode())["action"] == "trial.initialised"


def snapshot(instance: Instance) -> dict[str, Any]:
    """Everything init-demo writes: every table's rows, the tokens file and the key files."""
    with instance.session() as session:
        tables = {
            table.name: sorted(map(str, session.execute(select(table)).all()))
            for table in Base.metadata.sorted_tables
        }
        tables["alembic_version"] = session.execute(text("SELECT * FROM alembic_version")).all()
    files = {
        str(path): path.read_bytes()
        for path in sorted(instance.directory.rglob("*"))
        if path.is_file() and path.name != ".lock"
    }
    return {"tables": tables, "files": files}


@pytest.mark.requirement("R-CLI")
@pytest.mark.parametrize(
    "seed", [SEED, WRONG_SEED, None], ids=["same seed", "other seed", "no seed"]
)
def test_a_second_init_demo_refuses_with_exit_1_and_changes_nothing(scratch, tmp_path, seed):
    instance = initialised(scratch, "sqlite", tmp_path)
    before = snapshot(instance)

    result = instance.run("init-demo", *(("--seed", seed) if seed else ()))

    assert result.exit_code == 1, result.output
    assert "already holds a trial" in result.output
    assert not HEX_64.search(result.output)  # no seed handed out for lists never stored
    assert snapshot(instance) == before


@pytest.mark.requirement("R-CLI")
def test_a_second_init_demo_from_another_directory_creates_no_keys(scratch, tmp_path):
    instance = initialised(scratch, "sqlite", tmp_path / "first")
    elsewhere = Instance("sqlite", instance.url, tmp_path / "second")
    before = snapshot(instance)

    result = elsewhere.run("init-demo", "--seed", SEED)

    assert result.exit_code == 1, result.output
    # A key set that wraps nothing would be left to mislead whoever finds it.
    assert not elsewhere.keys_dir.exists()
    assert not elsewhere.tokens_path.exists()
    assert snapshot(instance) == before


# users -------------------------------------------------------------------------------------


@pytest.mark.requirement("R-CLI")
@pytest.mark.requirement("R-ROLE")
def test_users_add_prints_a_token_that_authenticates_and_is_audited(demo):
    result = demo.run("users", "add", "--role", "coordinator", "--site", "101", "alice")

    assert result.exit_code == 0, result.output
    actor = demo.authenticate(result.stdout.strip())
    assert actor is not None
    assert (actor.name, actor.role, actor.site) == ("alice", "coordinator", "101")
    (entry,) = demo.entries_about("alice")
    assert (entry["action"], entry["actor"], entry["role"]) == ("user.created", "system", "system")
    assert result.stdout.strip() not in demo.log()[entry["seq"]]


@pytest.mark.requirement("R-CLI")
@pytest.mark.requirement("R-ROLE")
def test_users_add_refuses_a_site_role_without_a_site(demo):
    size = len(demo.log())

    result = demo.run("users", "add", "--role", "pharmacist", "sitless")

    assert result.exit_code == 1
    assert "site" in result.output
    assert len(demo.log()) == size
    assert demo.entries_about("sitless") == []


@pytest.mark.requirement("R-CLI")
@pytest.mark.parametrize(
    "name",
    ["eve\n", "e" * 64 + "\n", "e" * 65, "", "eve smith"],
    ids=["trailing newline", "64 and a newline", "65 characters", "empty", "space"],
)
def test_users_add_refuses_a_malformed_name_and_creates_nobody(demo, name):
    size = len(demo.log())

    result = demo.run("users", "add", "--role", "auditor", name)

    assert result.exit_code == 1, result.output
    assert "name" in result.output
    assert len(demo.log()) == size


@pytest.mark.requirement("R-CLI")
def test_users_token_replaces_the_token(demo):
    added = demo.run("users", "add", "--role", "auditor", "bob")
    old = added.stdout.strip()

    result = demo.run("users", "token", "bob")

    assert result.exit_code == 0, result.output
    new = result.stdout.strip()
    assert new != old
    assert demo.authenticate(old) is None
    assert demo.authenticate(new).name == "bob"
    assert [e["action"] for e in demo.entries_about("bob")] == ["user.created", "user.token_issued"]
    assert new not in "".join(demo.log())


@pytest.mark.requirement("R-CLI")
def test_users_deactivate_stops_the_users_token_at_once(demo):
    added = demo.run("users", "add", "--role", "pharmacist", "--site", "201", "carol")
    token = added.stdout.strip()
    assert demo.authenticate(token).name == "carol"

    result = demo.run("users", "deactivate", "carol")

    assert result.exit_code == 0, result.output
    assert demo.authenticate(token) is None
    assert [e["action"] for e in demo.entries_about("carol")] == [
        "user.created",
        "user.deactivated",
    ]


@pytest.mark.requirement("R-CLI")
def test_users_language_sets_the_web_pages_language_audited_and_refuses_an_unknown_one(demo):
    added = demo.run(
        "users", "add", "--role", "pharmacist", "--site", "201", "--language", "fr", "dan"
    )
    assert added.exit_code == 0, added.output
    assert demo.run("users", "language", "dan", "en").exit_code == 0
    refused = demo.run("users", "language", "dan", "de")
    assert refused.exit_code != 0 and "Traceback" not in refused.output
    changes = [e["data"] for e in demo.entries_about("dan") if e["action"] == "user.language_set"]
    assert changes == [
        {"user": "dan", "language": "fr", "previous": "en"},
        {"user": "dan", "language": "en", "previous": "fr"},
    ]


# audit export and verify -------------------------------------------------------------------


@pytest.mark.requirement("R-CLI")
@pytest.mark.requirement("R-AUD")
def test_audit_export_writes_one_canonical_entry_per_line_in_seq_order(demo, tmp_path):
    log = demo.log()
    out = tmp_path / "audit.jsonl"

    result = demo.run("audit", "export", "--out", str(out))

    assert result.exit_code == 0, result.output
    exported = out.read_bytes()
    lines = exported.split(b"\n")
    assert lines.pop() == b""  # every line, the last too, ends with "\n"
    assert [parse_entry(line)["seq"] for line in lines] == list(range(len(log) + 1))
    # The export ends with its own entry, as the log holds it, and nothing was left out.
    assert lines == [entry.encode() for entry in demo.log()]
    entry = parse_entry(lines[-1])
    assert entry["action"] == "export.created"
    # It records the entries before it and the digest of their lines.
    assert entry["data"]["entries"] == len(log)
    before = b"".join(line + b"\n" for line in lines[:-1])
    assert entry["data"]["sha256"] == hashlib.sha256(before).hexdigest()
    assert hashlib.sha256(exported).hexdigest() in result.output
    assert not (tmp_path / "audit.jsonl.partial").exists()


@pytest.mark.requirement("R-CLI")
def test_audit_verify_without_a_key_passes_a_good_log_with_a_warning(demo):
    result = demo.run("audit", "verify")

    assert result.exit_code == 0, result.output
    assert "warning" in result.stderr and "proves nothing" in result.stderr


def verifier_key_line(instance: Instance) -> str:
    key = verifier_key_from_private("sealroom/RECLAIIM", load_signing_key(instance.keys_dir))
    return key.line()


@pytest.mark.requirement("R-CLI")
def test_audit_verify_with_the_logs_verifier_key_passes_and_with_another_fails(demo):
    good = demo.run("audit", "verify", "--verifier-key", verifier_key_line(demo))
    other = verifier_key_from_private("sealroom/RECLAIIM", Ed25519PrivateKey.generate()).line()
    bad = demo.run("audit", "verify", "--verifier-key", other)

    assert good.exit_code == 0, good.output
    assert "proves nothing" not in good.output
    assert bad.exit_code == 1, bad.output


def rewrite_entry(instance: Instance, seq: int, canonical: str) -> None:
    """Replace an entry's stored text behind the append-only triggers' back."""
    engine = make_engine(instance.url)
    try:
        with engine.begin() as connection:
            if instance.backend == "sqlite":
                connection.exec_driver_sql("DROP TRIGGER IF EXISTS audit_entry_no_update")
            else:
                connection.exec_driver_sql("ALTER TABLE audit_entry DISABLE TRIGGER USER")
            connection.execute(
                update(AuditEntry).where(AuditEntry.seq == seq).values(canonical=canonical)
            )
    finally:
        engine.dispose()


def first_named_entry(output: str) -> int:
    """The seq named by the first FAILED line of ``audit verify``."""
    failed = [line for line in output.splitlines() if line.startswith("FAILED")]
    assert failed, output
    named = re.search(r"\b(?:entry|seq) (\d+)", failed[0])
    assert named, failed[0]
    return int(named.group(1))


@pytest.mark.requirement("R-CLI")
@pytest.mark.requirement("R-AUD")
@pytest.mark.parametrize("where", ["middle", "last"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_audit_verify_names_the_edited_entry_not_its_successor(scratch, tmp_path, backend, where):
    instance = initialised(scratch, backend, tmp_path)
    log = instance.log()
    seq = len(log) // 2 if where == "middle" else len(log) - 1
    original = log[seq]
    forged = parse_entry(original.encode())
    forged["actor"] = "mallory"  # still a well-formed, canonical entry

    rewrite_entry(instance, seq, canonical_bytes(forged).decode())
    result = instance.run("audit", "verify")

    assert result.exit_code == 1, result.output
    assert first_named_entry(result.output) == seq
    # Put back, the log verifies again: the edit alone was what verify found.
    rewrite_entry(instance, seq, original)
    assert instance.run("audit", "verify").exit_code == 0


# lists export ------------------------------------------------------------------------------


@pytest.mark.requirement("R-CLI")
@pytest.mark.requirement("R-LIST")
def test_lists_export_with_the_right_seed_writes_the_appendix_a_lists(demo, tmp_path):
    out = tmp_path / "lists.csv"

    result = demo.run("lists", "export", "--seed", SEED, "--out", str(out))

    assert result.exit_code == 0, result.output
    assert mode(out) == 0o600  # the unblinded allocation, like the tokens: its owner's only
    with out.open(newline="", encoding="utf-8") as handle:
        header, *rows = list(csv.reader(handle))
    assert header == ["stratum", "randomization_number", "arm"]
    assert len(rows) == 1204
    assert {arm for _, _, arm in rows} == {"igpro20", "placebo"}
    for key, expected in APPENDIX_A.items():
        slots = [(number, arm) for stratum, number, arm in rows if stratum == key]
        first = slots[:16]
        assert " ".join(LETTER[arm] for _, arm in first) == expected, key
    stratum_1 = [number for stratum, number, _ in rows if stratum.endswith("america|prior_ig=yes")]
    assert stratum_1[:3] == ["R01-0001", "R01-0002", "R01-0003"]


@pytest.mark.requirement("R-CLI")
@pytest.mark.requirement("R-LIST-3")
@pytest.mark.parametrize("seed", [WRONG_SEED, "not-hex"], ids=["wrong seed", "malformed seed"])
def test_lists_export_with_a_wrong_seed_exits_1_and_writes_nothing(demo, tmp_path, seed):
    out = tmp_path / "lists.csv"

    result = demo.run("lists", "export", "--seed", seed, "--out", str(out))

    assert result.exit_code == 1
    assert not out.exists()
    assert "igpro20" not in result.output and "placebo" not in result.output


# the list seed kept off the command line (issue 7, finding 11) ------------------------------


def seed_file_at(directory: Path, seed: str = SEED, file_mode: int = 0o600) -> Path:
    path = directory / "seed.hex"
    path.write_text(seed + "\n", encoding="ascii")
    path.chmod(file_mode)
    return path


def seed_given_by(source: str, directory: Path) -> tuple[list[str], dict[str, str], str | None]:
    """The arguments, environment and standard input that give a command the list seed
    from ``source``: a file, standard input, the environment or the command line."""
    if source == "file":
        return ["--seed-file", str(seed_file_at(directory))], {}, None
    if source == "stdin":
        return ["--seed-file", "-"], {}, SEED + "\n"
    if source == "environment":
        return [], {"SEALROOM_LIST_SEED": SEED}, None
    assert source == "command line", source
    return ["--seed", SEED], {}, None


def exported_rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


ON_THE_COMMAND_LINE = "other local users"


@pytest.mark.requirement("R-CLI")
@pytest.mark.requirement("R-LIST-3")
@pytest.mark.parametrize("source", ["file", "stdin", "environment", "command line"])
def test_lists_export_takes_the_seed_from_a_file_stdin_or_the_environment(demo, tmp_path, source):
    out = tmp_path / "lists.csv"
    args, env, stdin = seed_given_by(source, tmp_path)

    result = demo.run("lists", "export", *args, "--out", str(out), env=env, stdin=stdin)

    assert result.exit_code == 0, result.output
    assert len(exported_rows(out)) == 1205 and mode(out) == 0o600
    # Only the seed on the command line, which every local user can see, earns a warning.
    assert (ON_THE_COMMAND_LINE in result.stderr) == (source == "command line"), result.stderr
    assert SEED not in result.output


def refusals_of_export(instance: Instance) -> list[dict[str, Any]]:
    return [e for e in instance.entries_about("RECLAIIM") if e["action"] == "export.refused"]


@pytest.mark.requirement("R-CLI")
@pytest.mark.requirement("R-AUD")
@pytest.mark.requirement("R-LIST-3")
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_refused_lists_export_is_audited_without_the_seed(scratch, tmp_path, backend):
    instance = initialised(scratch, backend, tmp_path)
    out = tmp_path / "lists.csv"
    loose = tmp_path / "loose"
    loose.mkdir()
    attempts = {
        "wrong seed": (["--seed", WRONG_SEED], {}, None, "forbidden"),
        "malformed seed": (["--seed", "not-hex"], {}, None, "validation"),
        "wrong seed file": (
            ["--seed-file", str(seed_file_at(tmp_path, WRONG_SEED))],
            {},
            None,
            "forbidden",
        ),
        "malformed stdin": (["--seed-file", "-"], {}, SEED[:-1] + "g\n", "validation"),
        "wrong variable": ([], {"SEALROOM_LIST_SEED": WRONG_SEED}, None, "forbidden"),
        "file others may read": (
            ["--seed-file", str(seed_file_at(loose, SEED, 0o644))],
            {},
            None,
            "validation",
        ),
    }
    for name, (args, env, stdin, reason) in attempts.items():
        size = len(instance.log())

        result = instance.run("lists", "export", *args, "--out", str(out), env=env, stdin=stdin)

        assert result.exit_code == 1, (name, result.output)
        assert not out.exists(), name
        assert result.stderr.splitlines()[-1].startswith("error: "), (name, result.output)
        log = instance.log()
        assert len(log) == size + 1, name  # committed although the command failed
        entry = parse_entry(log[-1].encode())
        assert entry["action"] == "export.refused", name
        assert (entry["actor"], entry["subject"]) == ("system", "RECLAIIM")
        assert entry["data"]["kind"] == "randomisation-lists"
        assert entry["data"]["reason"] == reason, (name, entry)
        for secret in (SEED, WRONG_SEED, SEED[:-1] + "g"):
            assert secret not in log[-1], name
        assert not HEX_64.search(json.dumps(entry["data"])), (name, entry)
    assert len(refusals_of_export(instance)) == len(attempts)
    # Refusals change nothing else, and verify still holds.
    verified = instance.run("audit", "verify", "--verifier-key", verifier_key_line(instance))
    assert verified.exit_code == 0, verified.output


@pytest.mark.requirement("R-CLI")
def test_lists_export_without_any_seed_is_a_usage_error(demo, tmp_path):
    result = demo.run("lists", "export", "--out", str(tmp_path / "lists.csv"))

    assert result.exit_code == 2
    assert "--seed-file" in result.output and "SEALROOM_LIST_SEED" in result.output


@pytest.mark.requirement("R-CLI")
def test_the_seed_is_given_once(demo, tmp_path):
    both = ["--seed", SEED, "--seed-file", str(seed_file_at(tmp_path))]

    exported = demo.run("lists", "export", *both, "--out", str(tmp_path / "lists.csv"))
    created = demo.run("init-demo", *both)

    for result in (exported, created):
        assert result.exit_code == 2, result.output
        assert "not both" in result.output


@pytest.mark.requirement("R-CLI")
@pytest.mark.requirement("R-LIST-3")
@pytest.mark.parametrize("source", ["file", "stdin", "environment"])
def test_init_demo_takes_the_seed_from_a_file_stdin_or_the_environment(scratch, tmp_path, source):
    instance = new_instance(scratch, "sqlite", tmp_path)
    args, env, stdin = seed_given_by(source, tmp_path)

    result = instance.run("init-demo", *args, env=env, stdin=stdin)

    assert result.exit_code == 0, result.output
    assert ON_THE_COMMAND_LINE not in result.output
    assert not HEX_64.search(result.output)  # the seed given is not printed
    out = tmp_path / "lists.csv"
    exported = instance.run("lists", "export", "--seed-file", "-", "--out", str(out), stdin=SEED)
    assert exported.exit_code == 0, exported.output


@pytest.mark.requirement("R-CLI")
def test_init_demo_with_the_seed_on_the_command_line_warns(scratch, tmp_path):
    instance = new_instance(scratch, "sqlite", tmp_path)

    result = instance.run("init-demo", "--seed", SEED)

    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("warning: ") and ON_THE_COMMAND_LINE in result.stderr
    assert "--seed-file" in result.stderr and "SEALROOM_LIST_SEED" in result.stderr
    assert SEED not in result.output


@pytest.mark.requirement("R-CLI")
@pytest.mark.parametrize(
    ("seed", "file_mode", "message"),
    [
        ("not-hex", 0o600, "64 hexadecimal characters"),
        (SEED, 0o640, "may be read by others (mode 0640)"),
    ],
    ids=["malformed", "others may read"],
)
def test_init_demo_refuses_a_bad_seed_file_and_creates_nothing(
    scratch, tmp_path, seed, file_mode, message
):
    instance = new_instance(scratch, "sqlite", tmp_path)

    result = instance.run("init-demo", "--seed-file", str(seed_file_at(tmp_path, seed, file_mode)))

    assert result.exit_code == 1, result.output
    assert message in result.stderr
    assert not instance.keys_dir.exists()


# keys with loose permissions (issue 7, finding 13) -----------------------------------------


@contextmanager
def loosened(path: Path, new_mode: int) -> Iterator[None]:
    """``path`` with ``new_mode`` for the block, then as it was."""
    before = mode(path)
    path.chmod(new_mode)
    try:
        yield
    finally:
        path.chmod(before)


def refused_cleanly(result: Result, *words: str) -> None:
    """One ``error:`` line and exit 1: no exception escaped the command."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    *warnings, error = result.stderr.splitlines()
    assert error.startswith("error: "), result.output
    assert all(line.startswith("warning: ") for line in warnings), result.output
    assert "Traceback" not in result.output
    for word in words:
        assert word in result.stderr, result.stderr


#: Every command that needs the keys, with arguments it would otherwise accept.
NEEDS_KEYS = {
    "users add": ["users", "add", "--role", "auditor", "loose-keys"],
    "users token": ["users", "token", "auditor"],
    "users deactivate": ["users", "deactivate", "auditor"],
    "users language": ["users", "language", "auditor", "fr"],
    "audit verify": ["audit", "verify"],
    "audit export": ["audit", "export", "--out", "{tmp}/audit.jsonl"],
    "lists export": ["lists", "export", "--seed", SEED, "--out", "{tmp}/lists.csv"],
    "sites add": ["sites", "add", "--attr", "region=europe", "301"],
    "sites close": ["sites", "close", "102"],
    "notifications send": ["notifications", "send"],
    "serve": ["serve", "--port", "1"],
}


@pytest.mark.requirement("R-CLI")
@pytest.mark.parametrize("command", list(NEEDS_KEYS))
def test_a_keys_directory_others_may_read_is_refused_with_an_error_line(demo, tmp_path, command):
    args = [arg.format(tmp=tmp_path) for arg in NEEDS_KEYS[command]]
    size = len(demo.log())

    with loosened(demo.keys_dir, 0o755):
        result = demo.run(*args, env={"SEALROOM_SMTP_URL": "smtp://127.0.0.1:1"})

    refused_cleanly(result, "mode 0o755", "chmod 700")
    assert len(demo.log()) == size
    assert list(tmp_path.iterdir()) == []


@pytest.mark.requirement("R-CLI")
@pytest.mark.parametrize(
    ("command", "key_file"),
    [
        ("users add", "master"),
        ("lists export", "master"),
        ("audit verify", "signing"),
        ("audit export", "signing"),
        ("serve", "signing"),
    ],
)
def test_a_key_file_others_may_read_is_refused_with_an_error_line(
    demo, tmp_path, command, key_file
):
    args = [arg.format(tmp=tmp_path) for arg in NEEDS_KEYS[command]]
    (path,) = (demo.keys_dir / key_file).glob("*.key")

    with loosened(path, 0o644):
        result = demo.run(*args)

    refused_cleanly(result, "mode 0o644", "chmod 600")


@pytest.mark.requirement("R-CLI")
def test_a_malformed_master_key_variable_is_refused_with_an_error_line(demo):
    result = demo.run("users", "token", "auditor", env={"SEALROOM_MASTER_KEY": "mk-1:not-base64"})

    refused_cleanly(result, "SEALROOM_MASTER_KEY")


@pytest.mark.requirement("R-CLI")
@pytest.mark.parametrize("command", ["init-demo", "init"])
def test_creating_a_trial_beside_a_loose_keys_directory_is_refused_with_an_error_line(
    scratch, tmp_path, command
):
    instance = new_instance(scratch, "sqlite", tmp_path)
    instance.keys_dir.mkdir(parents=True)
    instance.keys_dir.chmod(0o755)
    seed_file = tmp_path / "seed.txt"
    seed_file.write_text(SEED + "\n")
    seed_file.chmod(0o600)
    args = ["init-demo", "--seed", SEED]
    if command == "init":
        args = ["init", "--trial", str(bundled_trial()), "--seed-file", str(seed_file)]

    refused_cleanly(instance.run(*args), "mode 0o755")


def bundled_trial() -> Path:
    from randomizer.domain import bundled_trial_path

    return bundled_trial_path()


@pytest.mark.requirement("R-CLI")
def test_the_console_script_prints_no_traceback_for_loose_keys(demo):
    import os
    import subprocess
    import sys

    script = Path(sys.executable).with_name("sealroom")
    environment = {
        **os.environ,
        "SEALROOM_INSTANCE_DIR": str(demo.directory),
        "SEALROOM_DATABASE_URL": demo.url,
    }
    for name in ("SEALROOM_KEYS_DIR", "SEALROOM_MASTER_KEY"):
        environment.pop(name, None)
    with loosened(demo.keys_dir, 0o755):
        result = subprocess.run(
            [str(script), "audit", "verify"], env=environment, capture_output=True, text=True
        )

    assert result.returncode == 1
    assert result.stderr.startswith("error: key directory "), result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# --help ------------------------------------------------------------------------------------


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield prefix
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from command_paths(command, (*prefix, name))
        else:
            yield (*prefix, name)


@pytest.mark.requirement("R-CLI")
@pytest.mark.parametrize("path", list(command_paths(main)), ids=lambda p: " ".join(p) or "sealroom")
def test_every_command_has_help(path):
    result = CliRunner().invoke(main, [*path, "--help"])

    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage:")
    assert len(result.output.splitlines()) > 3


def test_every_command_of_urs_9_exists():
    paths = {" ".join(path) for path in command_paths(main)}

    assert {
        "init-demo",
        "serve",
        "audit verify",
        "audit export",
        "users add",
        "users deactivate",
        "users token",
        "lists export",
    } <= paths
