"""The ``sealroom`` command line (URS §9, R-CLI).

Every command acts as ``system`` in the audit trail; each runs in one transaction, so a
failure leaves nothing half done.
"""

from __future__ import annotations

import csv
import io
import json
import os
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
from sqlalchemy import select

from randomizer.config import Settings
from randomizer.db import Database
from randomizer.files import create_private_file, make_private_dir, write_private_file


class Cli:
    """What every command needs: the settings and the database."""

    def __init__(self, database_url: str | None) -> None:
        self.settings = Settings.from_env(database_url=database_url)
        self._db: Database | None = None

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = Database(self.settings.database_url)
        return self._db

    @contextmanager
    def transaction(self) -> Iterator[tuple[Any, Any]]:
        """A transaction and the trial context (the schema must be current, the trial exist)."""
        from randomizer.migrations import check_schema_current
        from randomizer.services.context import load_trial_context

        with self.db.transaction() as session:
            check_schema_current(session.connection())
            ctx = load_trial_context(session, self.settings.keys_dir)
            yield session, replace(ctx, token_lifetime=timedelta(days=self.settings.token_days))


pass_cli = click.make_pass_decorator(Cli)


def fail(message: str) -> None:
    """Print an error and exit 1."""
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _expected_failures() -> tuple[type[Exception], ...]:
    """What a command reports as one ``error:`` line: refusals of the set-up, not bugs."""
    from keys import KeysError
    from randomizer.config import ConfigError
    from randomizer.migrations import SchemaMismatch
    from randomizer.services.backup import BackupError
    from randomizer.services.context import NotInitialised

    return (KeysError, ConfigError, SchemaMismatch, NotInitialised, BackupError)


class _Commands(click.Group):
    """The ``sealroom`` group: a key store, setting or schema that refuses to serve ends any
    command with ``error: ...`` and exit 1, never with a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            if isinstance(exc, _expected_failures()):
                fail(str(exc))
            raise


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--database-url",
    envvar="SEALROOM_DATABASE_URL",
    help="SQLAlchemy URL (default: SQLite in ./instance/).",
)
@click.pass_context
def main(context: click.Context, database_url: str | None) -> None:
    """Sealroom: randomisation and blinding for double-blind clinical trials."""
    context.obj = Cli(database_url)


# init, init-demo ---------------------------------------------------------------------------


def _load_definition(trial_file: str | None) -> tuple[Any, str]:
    """The trial definition and its exact text (the bundled RECLAIIM file by default)."""
    from randomizer.domain import TrialDefinitionError, bundled_trial_path, parse_trial

    path = Path(trial_file) if trial_file else bundled_trial_path()
    # Bytes, not read_text(): the stored definition and its hash are the file's exact bytes.
    toml_text = path.read_bytes().decode("utf-8")
    try:
        return parse_trial(toml_text), toml_text
    except TrialDefinitionError as exc:
        fail(f"{path}: {exc}")
        raise  # unreachable: fail() exits


#: The variable that may hold the list seed: unlike an argument, no other user can read it.
LIST_SEED_ENV = "SEALROOM_LIST_SEED"
#: A seed file holds 64 hex digits and a newline; anything much larger is not a seed file.
_MAX_SEED_TEXT = 4096


def _seed_file_option(required_help: str = "") -> Any:
    return click.option(
        "--seed-file",
        type=click.Path(exists=True, dir_okay=False, allow_dash=True),
        help="File holding the list seed (64 hex digits; mode 0600), or - for standard input"
        f"{required_help}. Or set {LIST_SEED_ENV}.",
    )


def _seed_hex_option(what: str) -> Any:
    return click.option(
        "--seed",
        "seed_hex",
        metavar="HEX",
        help=f"{what}, 64 hex digits, on the command line: for scripted demos only, since "
        "other local users can read it (process list) and the shell's history keeps it.",
    )


def _seed_text(seed_hex: str | None, seed_file: str | None) -> Any:
    """Where the list seed comes from: a function reading its text, or None if none was given.

    One source: ``--seed-file FILE`` (``-``: standard input), else ``SEALROOM_LIST_SEED``,
    else ``--seed HEX`` (with a warning: the command line is visible to other local users).
    The function raises ``ValueError`` when the seed cannot be read; no message ever holds
    the seed. ``init``, ``init-demo`` and ``lists export`` all read the seed through here.
    """
    if seed_hex is not None and seed_file is not None:
        raise click.UsageError("give the seed once: --seed-file or --seed, not both")
    if seed_file is not None:
        return lambda: _read_seed_file(seed_file)
    if seed_hex is not None:
        click.echo(
            "warning: --seed puts the list seed on the command line, where other local users "
            "can read it (process list) and the shell's history keeps it; use --seed-file "
            f"FILE (- for standard input) or {LIST_SEED_ENV} instead",
            err=True,
        )
        return lambda: seed_hex
    from_env = os.environ.get(LIST_SEED_ENV)
    if from_env is not None:

        def read_env() -> str:
            if len(from_env) > _MAX_SEED_TEXT:
                raise ValueError(f"{LIST_SEED_ENV} is too long to hold a seed")
            return from_env.strip()

        return read_env
    return None


def _read_seed_file(name: str) -> str:
    """The seed's text from a file (refused if others than its owner may read it) or ``-``."""
    if name == "-":
        stream = sys.stdin
        if stream.isatty():
            return click.prompt("List seed", hide_input=True, err=True).strip()
        text = stream.read(_MAX_SEED_TEXT + 1)
    else:
        path = Path(name)
        try:
            with path.open("rb") as handle:
                mode = os.fstat(handle.fileno()).st_mode
                if mode & 0o077:
                    raise ValueError(
                        f"--seed-file: {path} may be read by others (mode {mode & 0o777:04o}); "
                        f"chmod 600 {path} first"
                    )
                raw = handle.read(_MAX_SEED_TEXT + 1)
        except OSError as exc:
            raise ValueError(f"--seed-file: cannot read {path}: {exc.strerror}") from None
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError("--seed-file: a seed file holds hexadecimal digits only") from None
    if len(text) > _MAX_SEED_TEXT:
        raise ValueError("--seed-file: too large to be a seed file")
    return text.strip()


def _parse_seed_or_fail(read: Any) -> bytes:
    """The seed's bytes from a reader of :func:`_seed_text`; exit 1 saying why not."""
    from randomizer.domain import parse_seed

    try:
        return parse_seed(read())
    except ValueError as exc:
        message = str(exc)
        fail(message if message.startswith("--") else f"seed: {message}")
        raise  # unreachable: fail() exits


def _holds_trial(cli: Cli) -> bool:
    from sqlalchemy import inspect

    from randomizer.models import Trial

    if Trial.__tablename__ not in inspect(cli.db.engine).get_table_names():
        return False
    with cli.db.reading() as session:
        return session.scalar(select(Trial.id).limit(1)) is not None


@main.command("init")
@click.option(
    "--trial",
    "trial_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="The trial definition (TOML).",
)
@_seed_file_option(" (required, or the variable)")
@pass_cli
def init(cli: Cli, trial_file: str, seed_file: str | None) -> None:
    """Create the schema, keys, the trial and its sealed lists: no sites, kits or users.

    For a real trial; add sites with `sealroom sites add` and users with `sealroom users add`.
    """
    from randomizer.errors import Problem
    from randomizer.roles import SYSTEM
    from randomizer.services import trial_setup

    definition, toml_text = _load_definition(trial_file)
    read = _seed_text(None, seed_file)
    if read is None:
        raise click.UsageError(f"give the list seed with --seed-file FILE or {LIST_SEED_ENV}")
    seed = _parse_seed_or_fail(read)
    make_private_dir(cli.settings.instance_dir)
    try:
        keys = trial_setup.prepare_database(cli.db, cli.settings.keys_dir)
        with cli.db.transaction() as session:
            _ctx, slots = trial_setup.create_trial_with_lists(
                session, keys, definition, toml_text, seed, SYSTEM
            )
    except Problem as exc:
        fail(str(exc))
    click.echo(
        f"Trial {definition.id} initialised: {len(definition.strata())} strata, {slots} slots; "
        "no sites, kits or users yet."
    )
    click.echo(f"Database: {cli.db.engine.url}")
    click.echo(f"Keys: {cli.settings.keys_dir} (losing them loses the ability to unblind)")
    if seed_file not in (None, "-"):
        click.echo(f"The seed file {seed_file} is no longer needed here: keep it offline.")


@main.command("init-demo")
@click.option(
    "--trial",
    "trial_file",
    type=click.Path(exists=True, dir_okay=False),
    help="Trial definition (default: the bundled RECLAIIM file).",
)
@click.option(
    "--tokens-out",
    type=click.Path(dir_okay=False),
    help="Where to write the demo users' tokens and passwords (default: <instance>/tokens.json).",
)
@_seed_file_option(" (default: a fresh seed, printed once)")
@_seed_hex_option("List seed")
@click.option(
    "--keep-existing",
    is_flag=True,
    help="If the database already holds a trial, leave it as it is and exit 0.",
)
@pass_cli
def init_demo(
    cli: Cli,
    trial_file: str | None,
    tokens_out: str | None,
    seed_file: str | None,
    seed_hex: str | None,
    keep_existing: bool,
) -> None:
    """`init` plus the demo's sites, kits and one user per role."""
    from randomizer.errors import Problem
    from randomizer.services.demo import DEMO_SITES, initialise_demo

    settings = cli.settings
    read = _seed_text(seed_hex, seed_file)
    make_private_dir(settings.instance_dir)
    if keep_existing and _holds_trial(cli):
        click.echo(f"The database {cli.db.engine.url} already holds a trial: keeping it.")
        return
    definition, toml_text = _load_definition(trial_file)
    seed = secrets.token_bytes(32) if read is None else _parse_seed_or_fail(read)
    try:
        demo = initialise_demo(cli.db, settings.keys_dir, definition, toml_text, seed)
    except Problem as exc:
        fail(str(exc))

    tokens_path = Path(tokens_out) if tokens_out else settings.instance_dir / "tokens.json"
    write_private_file(tokens_path, json.dumps(demo.tokens, indent=2) + "\n")
    click.echo(
        f"Trial {definition.id} initialised: {len(definition.strata())} strata, "
        f"{demo.slots} slots, {len(DEMO_SITES)} sites with {demo.kits_per_arm} kits "
        "of every arm each."
    )
    click.echo(f"Database: {cli.db.engine.url}")
    click.echo(f"Keys: {settings.keys_dir} (losing them loses the ability to unblind)")
    click.echo(
        f"Tokens and web passwords of {len(demo.tokens)} demo users: {tokens_path} (mode 0600)"
    )
    if read is None:
        click.echo(
            "List seed (hand it to the statistician now: it is not stored and will not "
            f"be shown again):\n{seed.hex()}"
        )


# serve ------------------------------------------------------------------------------------


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option(
    "--workers",
    default=2,
    show_default=True,
    type=int,
    help="Server processes (gunicorn); they may serve one database at once.",
)
@click.option(
    "--threads",
    default=16,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Request threads per server process.",
)
@pass_cli
def serve(cli: Cli, host: str, port: int, workers: int, threads: int) -> None:
    """Serve the API with gunicorn."""
    from gunicorn.app.base import BaseApplication

    from randomizer import create_app
    from randomizer.db import DATABASE_UNAVAILABLE
    from randomizer.serving import BuiltOnceTheDatabaseAnswers, gunicorn_settings

    settings = cli.settings
    # Refuses (an error: line, by the command group) a schema or keys it cannot serve. A
    # database that does not answer yet is no reason to refuse: the workers answer 503
    # until it does (randomizer/serving.py), and check the schema and keys then.
    try:
        create_app({"settings": settings}).extensions["sealroom"].db.dispose()
    except DATABASE_UNAVAILABLE as error:
        click.echo(
            f"warning: the database does not answer ({type(error).__name__}); "
            "serving 503 until it does",
            err=True,
        )

    class Server(BaseApplication):
        def load_config(self) -> None:
            for name, value in gunicorn_settings(host, port, workers, threads).items():
                self.cfg.set(name, value)

        def load(self) -> Any:
            return BuiltOnceTheDatabaseAnswers(lambda: create_app({"settings": settings}))

    click.echo(f"Serving {settings.database_url.split('://')[0]} database on http://{host}:{port}")
    Server().run()


# users ------------------------------------------------------------------------------------


@main.group("users")
def users_group() -> None:
    """Add and deactivate users, issue tokens, set web passwords."""


@users_group.command("add")
@click.option(
    "--role",
    required=True,
    help="coordinator, investigator, pharmacist, "
    "medical_monitor, sponsor, statistician, auditor or admin.",
)
@click.option("--site", help="The site of a site role.")
@click.option("--email", help="Where notifications reach the user (e.g. unblindings at its site).")
@click.option(
    "--password",
    "with_password",
    is_flag=True,
    help="Also set their web password (asked twice, or one line on standard input).",
)
@click.option("--language", help="Their web pages' language: en (the default) or fr.")
@click.argument("name")
@pass_cli
def users_add(
    cli: Cli,
    role: str,
    site: str | None,
    email: str | None,
    with_password: bool,
    language: str | None,
    name: str,
) -> None:
    """Add a user and print their first token."""
    from randomizer.roles import SYSTEM
    from randomizer.services import users

    password = _new_password() if with_password else None

    def add(session: Any, ctx: Any) -> str:
        _user, token = users.add_user(session, ctx, SYSTEM, name, role, site, email)
        if password is not None:
            users.set_password(session, ctx, SYSTEM, name, password)
        if language is not None:
            users.set_language(session, ctx, SYSTEM, name, language)
        return token

    click.echo(_run(cli, add))


@users_group.command("password")
@click.argument("name")
@pass_cli
def users_password(cli: Cli, name: str) -> None:
    """Set a user's web password (asked twice, or one line on standard input); their web
    sessions end."""
    from randomizer.roles import SYSTEM
    from randomizer.services import users

    password = _new_password()
    _run(cli, lambda s, c: users.set_password(s, c, SYSTEM, name, password))
    click.echo(f"Password of {name} set; their web sessions are ended.")


def _new_password() -> str:
    """A new password: asked twice at a terminal, else the first line of standard input.

    Never an argument: other local users can read a command line (process list, history).
    """
    from randomizer.services.users import password_problems

    if sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    problems = password_problems(password)
    if problems:
        fail(f"password: {' '.join(problems)}")
    return password


@users_group.command("language")
@click.argument("name")
@click.argument("language")
@pass_cli
def users_language(cli: Cli, name: str, language: str) -> None:
    """Set the language of a user's web pages (en or fr)."""
    from randomizer.roles import SYSTEM
    from randomizer.services import users

    _run(cli, lambda s, c: users.set_language(s, c, SYSTEM, name, language))
    click.echo(f"Web pages of {name} in {language}")


@users_group.command("deactivate")
@click.argument("name")
@pass_cli
def users_deactivate(cli: Cli, name: str) -> None:
    """Deactivate a user: their tokens stop working at once."""
    from randomizer.roles import SYSTEM
    from randomizer.services import users

    _run(cli, lambda s, c: users.deactivate_user(s, c, SYSTEM, name))
    click.echo(f"{name} deactivated")


@users_group.command("token")
@click.argument("name")
@pass_cli
def users_token(cli: Cli, name: str) -> None:
    """Print a new token for a user; their older tokens stop working."""
    from randomizer.roles import SYSTEM
    from randomizer.services import users

    click.echo(_run(cli, lambda s, c: users.issue_token(s, c, SYSTEM, name)))


def _run(cli: Cli, action: Any) -> Any:
    from randomizer.errors import Problem, ValidationFailed

    try:
        with cli.transaction() as (session, ctx):
            return action(session, ctx)
    except ValidationFailed as problem:
        fail("; ".join(f"{k}: {' '.join(v)}" for k, v in problem.extra["errors"].items()))
    except Problem as problem:
        fail(problem.detail)


# audit ------------------------------------------------------------------------------------


@main.group("audit")
def audit_group() -> None:
    """Verify and export the audit trail."""


@audit_group.command("verify")
@click.option("--verifier-key", help="The log's verifier key line, obtained out of band.")
@click.option(
    "--checkpoint",
    "checkpoint_file",
    type=click.Path(exists=True, dir_okay=False),
    help="A checkpoint saved earlier: the log must still extend it.",
)
@pass_cli
def audit_verify(cli: Cli, verifier_key: str | None, checkpoint_file: str | None) -> None:
    """Recompute the chain, the tree and every checkpoint; name the first altered entry."""
    from randomizer.services.verification import verify_stored_log

    key = _verifier_key(cli, verifier_key)
    trusted = [Path(checkpoint_file).read_text(encoding="utf-8")] if checkpoint_file else []
    with cli.db.reading() as session:
        report, checkpoints = verify_stored_log(session, key, trusted)
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    if not report.ok:
        for problem in report.problems:
            click.echo(f"FAILED: {problem}", err=True)
        sys.exit(1)
    click.echo(
        f"OK: {report.size} entries; chain, Merkle tree and {checkpoints} "
        f"checkpoints verified against {key.line()}"
    )


@audit_group.command("export")
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False), help="The JSON Lines file to write."
)
@pass_cli
def audit_export(cli: Cli, out: str) -> None:
    """Write the audit trail as JSON Lines: each entry's canonical bytes, in seq order.

    The last line is the export's own `export.created` entry.
    """
    from randomizer.roles import SYSTEM
    from randomizer.services.exports import export_audit

    target = Path(out)
    partial = target.with_name(target.name + ".partial")

    def export(session: Any, ctx: Any) -> Any:
        # The trail names participants and users: its owner's only, like the database.
        with os.fdopen(create_private_file(partial), "wb") as handle:
            return export_audit(session, ctx, SYSTEM, handle)

    try:
        result = _run(cli, export)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    # Published only once its export.created entry has committed.
    os.replace(partial, target)
    click.echo(
        f"{result.entries} entries written to {out}, the last one recording this export "
        f"(sha256 {result.sha256})"
    )


# monitor ----------------------------------------------------------------------------------


@main.command()
@click.option("--url", required=True, help="The service, e.g. https://irt.example.org")
@click.option(
    "--token",
    required=True,
    envvar="SEALROOM_MONITOR_TOKEN",
    help="Any user's bearer token "
    "(or SEALROOM_MONITOR_TOKEN, which keeps it out of the process list).",
)
@click.option("--verifier-key", required=True, help="The log's verifier key, obtained out of band.")
@click.option(
    "--state",
    "state_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Directory keeping the last checkpoint seen (and a history).",
)
@click.option(
    "--accept-restore",
    "restored_file",
    type=click.Path(exists=True, dir_okay=False),
    help="After an announced restore: the backup's signed checkpoint (its checkpoint.txt). "
    "Accepted if it extends what this monitor saw up to its size and the log extends it.",
)
def monitor(
    url: str, token: str, verifier_key: str, state_dir: str, restored_file: str | None
) -> None:
    """Check that the log still extends the last checkpoint seen; exit 1 on fork or rollback."""
    from audit.checkpoint import CheckpointError, parse_verifier_key
    from audit.monitor import MonitorAlarm, MonitorError, accept_restore, check_log, http_fetcher

    try:
        key = parse_verifier_key(verifier_key)
    except CheckpointError as exc:
        fail(f"--verifier-key: {exc}")
    try:
        fetch = http_fetcher(url, token)
        if restored_file is None:
            result: Any = check_log(fetch, key, Path(state_dir))
        else:
            restored = Path(restored_file).read_text(encoding="utf-8")
            result = accept_restore(fetch, key, Path(state_dir), restored)
    except MonitorAlarm as alarm:
        click.echo(f"ALARM: {alarm}", err=True)
        sys.exit(1)
    except MonitorError as error:
        click.echo(f"error: cannot check the log: {error}", err=True)
        sys.exit(2)
    click.echo(result.message())


# backup, restore --------------------------------------------------------------------------


@main.command()
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="A new (or empty) directory for the copy and its manifest; never the keys directory.",
)
@pass_cli
def backup(cli: Cli, out: str) -> None:
    """Write a consistent copy of the database while the service runs, with a manifest.

    SQLite: its online backup API. PostgreSQL: pg_dump, custom format, from one snapshot.
    The keys are not in it: back them up apart (README, Operations).
    """
    from randomizer.services.backup import MANIFEST_FILE, create_backup

    manifest = create_backup(cli.db, Path(out), cli.settings.keys_dir)
    backend = "PostgreSQL" if manifest.backend == "postgresql" else "SQLite"
    click.echo(f"{backend}: backup written to {out} (mode 0700) by {manifest.method}:")
    for name, digest in sorted({**manifest.files, MANIFEST_FILE: None}.items()):
        click.echo(f"  {name}" + (f"  sha256 {digest}" if digest else ""))
    click.echo(
        f"It covers {manifest.audit_entries} audit entries up to the signed checkpoint of size "
        f"{manifest.checkpoint.size} (root {manifest.checkpoint.root}); schema revision "
        f"{manifest.schema_revision}."
    )
    click.echo(
        f"The keys are not in it: back up {cli.settings.keys_dir} (master key "
        f"{manifest.master_key_id} and the signing key) apart (README, Operations)."
    )


@main.command()
@click.option(
    "--from",
    "source",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="A backup directory written by `sealroom backup`.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace a database that is not empty (what it holds is printed first).",
)
@click.option("--verifier-key", help="The log's verifier key line, obtained out of band.")
@pass_cli
def restore(cli: Cli, source: str, force: bool, verifier_key: str | None) -> None:
    """Restore a backup into an empty database, announce it in the log and verify the audit.

    Stop the service first. Refuses a database that is not empty unless --force; exits 1,
    saying what failed, when the restored audit does not verify.
    """
    from audit.checkpoint import CheckpointError, parse_verifier_key
    from randomizer.services.backup import (
        CHECKPOINT_FILE,
        RESTORED_ACTION,
        RestoreNotVerified,
        restore_backup,
    )

    key = None
    if verifier_key:
        try:
            key = parse_verifier_key(verifier_key)
        except CheckpointError as exc:
            fail(f"--verifier-key: {exc}")
    else:
        click.echo(OWN_KEY_WARNING, err=True)

    def replacing(state: Any) -> None:
        click.echo(f"--force: replacing the target database, which holds {state.describe()}")

    directory = Path(source)
    try:
        result = restore_backup(
            cli.db,
            directory,
            cli.settings.keys_dir,
            force=force,
            verifier_key=key,
            on_replace=replacing,
        )
    except RestoreNotVerified as failure:
        for warning in failure.warnings:
            click.echo(f"warning: {warning}", err=True)
        for problem in failure.problems:
            click.echo(f"FAILED: {failure.stage}: {problem}", err=True)
        click.echo("error: the restore did not verify: do not serve this database", err=True)
        sys.exit(1)
    manifest = result.manifest
    click.echo(
        f"Restored the backup of {manifest.created_at} ({manifest.method}): "
        f"{manifest.audit_entries} audit entries, up to the signed checkpoint of size "
        f"{manifest.checkpoint.size}."
    )
    if result.upgraded_from is not None:
        click.echo(f"Schema upgraded from revision {result.upgraded_from}.")
    click.echo(
        f"Announced: entry {result.announcement_seq} ({RESTORED_ACTION}), signed into the "
        f"checkpoint of size {result.announcement_seq + 1}."
    )
    for warning in result.report.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(
        f"OK: {result.report.size} entries; chain, Merkle tree and {result.checkpoints} "
        f"checkpoints verified against {result.verifier_key.line()}; the log extends the "
        "backup's checkpoint."
    )
    click.echo(
        "Every monitor that saw a later checkpoint now raises its rollback alarm, as it must. "
        f"Tell them of the restore and hand them {directory / CHECKPOINT_FILE}: "
        "`sealroom monitor ... --accept-restore checkpoint.txt` (README, Operations)."
    )


# validate ---------------------------------------------------------------------------------


@main.command("validate")
@click.option(
    "--trial",
    "trial_file",
    type=click.Path(exists=True, dir_okay=False),
    help="The trial definition (TOML; default: the bundled RECLAIIM file).",
)
@click.option(
    "--kits-per-arm",
    type=click.IntRange(min=0),
    help="Kits of each arm a site holds before resupply (default: what init-demo stocks).",
)
def validate(trial_file: str | None, kits_per_arm: int | None) -> None:
    """Check a trial definition before go-live and print what to fix or review.

    Strata and list length against trial.target_participants, kit stock against dosing for
    the heaviest weight a request may state, eligibility rules over undeclared fields,
    overlapping visit windows. Exits 1 when there is an error, 0 with warnings only. Reads
    no database.
    """
    from randomizer.domain import bundled_trial_path
    from randomizer.services.trial_review import review_trial_definition

    path = Path(trial_file) if trial_file else bundled_trial_path()
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        fail(f"{path}: not UTF-8 text")
    review = review_trial_definition(text, kits_per_arm=kits_per_arm)
    name = review.definition.id if review.definition else "the definition"
    click.echo(f"{path}: {name}: {len(review.errors)} errors, {len(review.warnings)} warnings")
    for finding in review.findings:
        click.echo(f"{finding.severity}: {finding.key}: {finding.message}")
    if review.errors:
        sys.exit(1)


# lists ------------------------------------------------------------------------------------


@main.group("lists")
def lists_group() -> None:
    """The statistician's randomisation lists."""


@lists_group.command("export")
@_seed_file_option()
@_seed_hex_option("The list seed")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="CSV file to write.")
@pass_cli
def lists_export(cli: Cli, seed_file: str | None, seed_hex: str | None, out: str) -> None:
    """Write the unblinded lists (stratum,randomization_number,arm); needs the right seed.

    Every refused attempt (a seed that cannot be read, is malformed or is not the lists')
    is audited as export.refused, without the seed.
    """
    from randomizer.services.lists import export_lists

    read = _seed_text(seed_hex, seed_file)
    if read is None:
        raise click.UsageError(
            f"give the list seed with --seed-file FILE (- for standard input), {LIST_SEED_ENV}"
            " or --seed HEX"
        )
    rows = _run(cli, lambda s, c: export_lists(s, c, read))
    # The unblinded allocation: written only for its owner, like the tokens.
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(["stratum", "randomization_number", "arm"])
    writer.writerows(rows)
    write_private_file(Path(out), table.getvalue())
    click.echo(f"{len(rows)} slots written to {out}")


# keys -------------------------------------------------------------------------------------


@main.group("keys")
def keys_group() -> None:
    """Key custody: split knowledge of the master key, and rotation of every key."""


def _read_passphrase(name: str | None) -> bytes:
    if name is None:
        return b""
    try:
        text = Path(name).read_bytes()
    except OSError as exc:
        fail(f"cannot read the passphrase file {name}: {exc.strerror}")
    return text.rstrip(b"\r\n")


@keys_group.command("split")
@click.option("--shares", required=True, type=int, help="How many custodians get a share.")
@click.option("--threshold", required=True, type=int, help="How many shares rebuild the key.")
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Directory for the share files (one per custodian, mode 0600).",
)
@click.option(
    "--passphrase-file",
    type=click.Path(exists=True, dir_okay=False),
    help="A passphrase the shares need beside them (default: none).",
)
@pass_cli
def keys_split(
    cli: Cli, shares: int, threshold: int, out: str, passphrase_file: str | None
) -> None:
    """Split the active master key into SLIP-39 mnemonic shares; the key stays where it is."""
    from keys.custody import write_share_files
    from randomizer.roles import SYSTEM
    from randomizer.services.key_custody import split_master_key

    passphrase = _read_passphrase(passphrase_file)
    made = _run(
        cli,
        lambda s, c: split_master_key(
            s, c, SYSTEM, cli.settings.keys_dir, shares, threshold, passphrase
        ),
    )
    for path in write_share_files(Path(out), made.shares):
        click.echo(f"wrote {path}")
    click.echo(
        f"{shares} shares of master key {made.shares[0].key_id} (share set {made.share_set}); "
        f"any {threshold} rebuild it. Give one file to each custodian, then delete DIR."
    )


def _prompt_shares() -> list[Any]:
    from keys.custody import ShareError, parse_share

    key_id = click.prompt("master key id (mk-...)").strip()
    shares: list[Any] = []
    needed = None
    while needed is None or len(shares) < needed:
        words = click.prompt(f"share {len(shares) + 1}", hide_input=True)
        try:
            share = parse_share(key_id, words, f"share {len(shares) + 1}")
        except ShareError as exc:
            click.echo(f"refused: {exc}; type it again", err=True)
            continue
        shares.append(share)
        needed = share.threshold
    return shares


@keys_group.command("combine")
@click.argument("share_files", nargs=-1, type=click.Path(dir_okay=False))
@click.option(
    "--out",
    required=True,
    help="The master key file to write (mode 0600), or - to print the SEALROOM_MASTER_KEY value.",
)
@click.option(
    "--passphrase-file",
    type=click.Path(exists=True, dir_okay=False),
    help="The passphrase given to `keys split`, if one was.",
)
@pass_cli
def keys_combine(
    cli: Cli, share_files: tuple[str, ...], out: str, passphrase_file: str | None
) -> None:
    """Rebuild the master key from share files (or, with none named, shares typed in).

    The rebuilt key is checked against the data keys it wrapped before it is written.
    """
    from keys import MASTER_KEY_ENV
    from keys.custody import (
        combine_shares,
        master_key_env_value,
        read_share_file,
        write_master_key_file,
    )
    from randomizer.migrations import check_schema_current
    from randomizer.roles import SYSTEM
    from randomizer.services.context import load_trial_context
    from randomizer.services.key_custody import check_master_key, record_master_key_combined

    passphrase = _read_passphrase(passphrase_file)
    shares = [read_share_file(Path(name)) for name in share_files] or _prompt_shares()
    key_id, key = combine_shares(shares, passphrase)
    value = master_key_env_value(key_id, key)
    # The rebuilt key is the one this context unwraps with: the key directory may hold none.
    environ = {**os.environ, MASTER_KEY_ENV: value}
    with cli.db.transaction() as session:
        check_schema_current(session.connection())
        # Checked before anything else reads keys: a wrong share set or passphrase is named.
        check_master_key(session, key_id, key)
        ctx = load_trial_context(session, cli.settings.keys_dir, environ)
        opened = record_master_key_combined(
            session,
            ctx,
            SYSTEM,
            key_id,
            key,
            [share.number for share in shares],
            "environment" if out == "-" else "file",
        )
        if out != "-":
            write_master_key_file(Path(out), key)
    if out == "-":
        click.echo(value)
    else:
        click.echo(f"wrote {out}: master key {key_id}, which opens data key(s) {', '.join(opened)}")


@keys_group.command("rotate-master")
@pass_cli
def keys_rotate_master(cli: Cli) -> None:
    """Make a new master key version and rewrap every data key under it (no arm re-encrypted)."""
    from keys.pkcs11 import KEY_ENV
    from keys.providers import PKCS11, provider_name
    from randomizer.roles import SYSTEM
    from randomizer.services.key_custody import rotate_master

    rotation = _run(cli, lambda s, c: rotate_master(s, c, SYSTEM, cli.settings.keys_dir))
    click.echo(
        f"master key {rotation.old_key_id} -> {rotation.new_key_id}; rewrapped data key(s) "
        f"{', '.join(rotation.data_keys)}"
    )
    if provider_name() == PKCS11:
        click.echo(f"set {KEY_ENV}={rotation.new_key_id} for the service's next start")


@keys_group.command("hsm-import")
@pass_cli
def keys_hsm_import(cli: Cli) -> None:
    """Put the key directory's master keys into the PKCS#11 token (SEALROOM_PKCS11_*).

    They keep their ids, so every data key opens inside the token; then destroy the files
    and set SEALROOM_MASTER_KEY_PROVIDER=pkcs11.
    """
    from randomizer.roles import SYSTEM
    from randomizer.services.key_custody import import_master_keys_into_token

    imported = _run(
        cli, lambda s, c: import_master_keys_into_token(s, c, SYSTEM, cli.settings.keys_dir)
    )
    click.echo(
        f"imported master key(s) {', '.join(imported)} into the token; every data key opens "
        "there. Destroy the key files, then set SEALROOM_MASTER_KEY_PROVIDER=pkcs11."
    )


@keys_group.command("rotate-data-key")
@pass_cli
def keys_rotate_data_key(cli: Cli) -> None:
    """Start a new data key for new seals; older seals still open with their own key."""
    from randomizer.roles import SYSTEM
    from randomizer.services.key_custody import rotate_data_key

    rotation = _run(cli, lambda s, c: rotate_data_key(s, c, SYSTEM, cli.settings.keys_dir))
    click.echo(f"data key {rotation.old_key_id} -> {rotation.new_key_id}")


@keys_group.command("rotate-signing")
@pass_cli
def keys_rotate_signing(cli: Cli) -> None:
    """Hand over to a new checkpoint-signing key, through a checkpoint signed by both keys."""
    from randomizer.roles import SYSTEM
    from randomizer.services.key_custody import finish_signing_rotation, rotate_signing

    rotation = _run(cli, lambda s, c: rotate_signing(s, c, SYSTEM, cli.settings.keys_dir))
    with cli.db.reading() as session:
        finish_signing_rotation(session, cli.settings.keys_dir)
    click.echo(
        f"signing key {rotation.old_key_id} -> {rotation.new_key_id}; the hand-over checkpoint "
        "is signed by both. Publish the new verifier key (GET /audit/verifier-key)."
    )


@keys_group.command("envelope-key")
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False), help="The private key file (0600)."
)
def keys_envelope_key(out: str) -> None:
    """Make the medical monitor's safety-line key pair; print the public key line.

    The private key opens code-break envelopes: keep it with the 24-hour safety line only.
    """
    from keys.envelopes import write_recipient_key

    click.echo(write_recipient_key(Path(out)))


@keys_group.command("emergency-envelopes")
@click.option("--recipient", required=True, help="The safety line's public key line.")
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="A new directory for the envelopes (one per slot) and their MANIFEST.sha256.",
)
@pass_cli
def keys_emergency_envelopes(cli: Cli, recipient: str, out: str) -> None:
    """Write sealed code-break envelopes, one per list slot, to the recipient's key (statistician).

    The set's SHA-256 is audited, so an inspector can tell which set was in circulation.
    """
    from randomizer.roles import SYSTEM
    from randomizer.services.envelopes import create_emergency_envelopes

    made = _run(cli, lambda s, c: create_emergency_envelopes(s, c, SYSTEM, recipient, Path(out)))
    click.echo(
        f"{made.envelopes} envelopes written to {out} for key {made.recipient}; "
        f"set sha256 {made.set_sha256} (audited)"
    )


@keys_group.command("open-envelope")
@click.option(
    "--key",
    "key_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="The safety line's private key file.",
)
@click.argument("envelope", type=click.Path(exists=True, dir_okay=False))
def keys_open_envelope(key_file: str, envelope: str) -> None:
    """Open one code-break envelope offline (no database, no service): print its arm.

    Record it afterwards with `sealroom unblind-record --offline`.
    """
    from keys.envelopes import EnvelopeError, load_private_key, open_envelope

    try:
        opened = open_envelope(
            Path(envelope).read_text(encoding="ascii"), load_private_key(Path(key_file))
        )
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {envelope}: {exc}")
    except EnvelopeError as exc:
        fail(str(exc))
    click.echo(
        f"{opened.trial} {opened.randomization_number}: {opened.arm_label} ({opened.arm_id})"
    )
    click.echo(
        "Record this unblinding once the service is back: sealroom unblind-record --offline",
        err=True,
    )


@main.command("unblind-record")
@click.option("--offline", is_flag=True, required=True, help="An envelope opened offline.")
@click.option("--randomization-number", required=True, help="The envelope's number.")
@click.option("--by", "opened_by", required=True, help="Who opened it.")
@click.option(
    "--opened-at",
    required=True,
    type=click.DateTime(formats=["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M%z"]),
    help="When, with its UTC offset, e.g. 2026-12-01T03:10+00:00.",
)
@click.option("--reason", required=True, help="One of the trial's unblinding reasons.")
@click.option("--event-reference", required=True, help="The safety event's reference.")
@click.option("--envelope-set", required=True, help="The set's sha256 (its MANIFEST's).")
@pass_cli
def unblind_record(
    cli: Cli,
    offline: bool,
    randomization_number: str,
    opened_by: str,
    opened_at: Any,
    reason: str,
    event_reference: str,
    envelope_set: str,
) -> None:
    """Enter an unblinding made with a code-break envelope into the audit trail."""
    from randomizer.roles import SYSTEM
    from randomizer.services.envelopes import record_offline_unblinding

    record = _run(
        cli,
        lambda s, c: record_offline_unblinding(
            s,
            c,
            SYSTEM,
            randomization_number,
            opened_by,
            opened_at,
            reason,
            event_reference,
            envelope_set,
        ),
    )
    whom = record.screening_number or "no participant yet (the slot's arm is now known)"
    click.echo(f"recorded as audit entry {record.seq}: {randomization_number}, {whom}")


# notifications ----------------------------------------------------------------------------


@main.group("notifications")
def notifications_group() -> None:
    """The outbox: notifications waiting for delivery, and their delivery."""


@notifications_group.command("send")
@click.option("--all", "everything", is_flag=True, help="Also those still in their back-off.")
@pass_cli
def notifications_send(cli: Cli, everything: bool) -> None:
    """Deliver the pending notifications over SMTP (SEALROOM_SMTP_URL); for cron.

    Each delivery is audited as notification.sent; a failure keeps the message pending.
    Exits 1 if any message could not be delivered.
    """
    from randomizer.services.context import load_trial_context
    from randomizer.services.notifications import transport_for
    from randomizer.services.outbox import deliver_pending

    transport = transport_for(cli.settings)
    if transport is None:
        fail("SEALROOM_SMTP_URL is not set: no mail server to deliver to")
    with cli.db.reading() as session:
        ctx = load_trial_context(session, cli.settings.keys_dir)
    report = deliver_pending(cli.db, ctx, transport, ignore_back_off=everything)
    click.echo(f"{len(report.delivered)} delivered, {len(report.failed)} failed")
    if report.failed:
        sys.exit(1)


@notifications_group.command("list")
@click.option(
    "--status",
    type=click.Choice(["pending", "delivered", "all"]),
    default="pending",
    show_default=True,
)
@pass_cli
def notifications_list(cli: Cli, status: str) -> None:
    """List notifications: id, status, attempts, recipient, subject, last error."""
    from audit.entry import format_time
    from randomizer.services.outbox import listed

    with cli.db.reading() as session:
        for row in listed(session, None if status == "all" else status):
            when = format_time(row.delivered_at or row.created_at)
            error = f"  last error: {row.last_error}" if row.last_error else ""
            click.echo(
                f"{row.id}\t{row.status}\t{row.attempts} attempts\t{when}\t{row.recipient}\t"
                f"{row.subject}{error}"
            )


# sites ------------------------------------------------------------------------------------


@main.group("sites")
def sites_group() -> None:
    """Add and close trial sites."""


def _attributes(pairs: tuple[str, ...]) -> dict[str, str]:
    attributes: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            fail(f"--attr {pair!r}: write it as FACTOR=LEVEL, e.g. region=europe")
        attributes[name] = value
    return attributes


@sites_group.command("add")
@click.option(
    "--attr",
    "pairs",
    multiple=True,
    help="A site-derived stratification factor's level, e.g. region=europe (repeat per factor).",
)
@click.option("--name", help="The site's name (default: 'Site ID').")
@click.argument("site_id")
@pass_cli
def sites_add(cli: Cli, pairs: tuple[str, ...], name: str | None, site_id: str) -> None:
    """Add an open site with its stratification attributes (audited as site.created)."""
    from randomizer.roles import SYSTEM
    from randomizer.services.trial_setup import add_site

    attributes = _attributes(pairs)
    shown_name = f"Site {site_id}" if name is None else name
    _run(cli, lambda s, c: add_site(s, c, SYSTEM, site_id, shown_name, attributes))
    shown = ", ".join(f"{k}={v}" for k, v in sorted(attributes.items()))
    click.echo(f"site {site_id} added ({shown})")


@sites_group.command("close")
@click.argument("site_id")
@pass_cli
def sites_close(cli: Cli, site_id: str) -> None:
    """Close a site: it screens and randomises no one from now on (audited as site.closed)."""
    from randomizer.roles import SYSTEM
    from randomizer.services.trial_setup import close_site

    _run(cli, lambda s, c: close_site(s, c, SYSTEM, site_id))
    click.echo(f"site {site_id} closed")


# db ---------------------------------------------------------------------------------------


@main.group("db")
def db_group() -> None:
    """The database's schema."""


@db_group.command("upgrade")
@pass_cli
def db_upgrade(cli: Cli) -> None:
    """Upgrade the schema to this code's (Alembic upgrade head), keeping every row.

    Refuses a database upgraded by a newer Sealroom than this one.
    """
    from keys import create_session_secret, session_secret_path
    from randomizer.migrations import upgrade

    with cli.db.schema_transaction() as connection:
        before, after = upgrade(connection)
    # A deployment older than the web pages has no session secret: made here, explicitly.
    if not session_secret_path(cli.settings.keys_dir).exists():
        create_session_secret(cli.settings.keys_dir)
        click.echo(f"Web session secret created: {session_secret_path(cli.settings.keys_dir)}")
    if before == after:
        click.echo(f"The schema is already at revision {after}.")
    else:
        click.echo(f"Schema upgraded from revision {before or 'none'} to {after}.")


@db_group.command("revision")
@pass_cli
def db_revision(cli: Cli) -> None:
    """Print the database's schema revision and the code's."""
    from randomizer.migrations import current_revision, head_revision

    with cli.db.reading() as session:
        current = current_revision(session.connection())
    click.echo(f"database: {current or 'none'}; code: {head_revision()}")


# reports, exports, simulate (issue 14) ----------------------------------------------------


def _file_format(out: str, formats: tuple[str, ...]) -> str:
    """The format named by ``out``'s extension, one of ``formats``."""
    extension = Path(out).suffix.lower().removeprefix(".")
    if extension not in formats:
        raise click.UsageError(f"--out must end in one of: {', '.join('.' + f for f in formats)}")
    return extension


def _publish(out: str, content: bytes) -> None:
    """Write ``content`` to ``out`` for its owner only (mode 0600): reports name
    participants, and the statistician's hold arms."""
    with os.fdopen(create_private_file(Path(out)), "wb") as handle:
        handle.write(content)


@main.command("report")
@click.argument("name", type=click.Choice(["enrollment", "screen-failures", "balance"]))
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False),
    help="File to write: .json or .csv (the report), .svg or .png (its picture).",
)
@pass_cli
def report(cli: Cli, name: str, out: str) -> None:
    """Write a report or its picture: enrollment (blinded), screen-failures (blinded),
    balance (UNBLINDED: per stratum and arm)."""
    from randomizer.roles import SYSTEM
    from randomizer.services.reports import FILE_FORMATS, report_file

    file_format = _file_format(out, FILE_FORMATS)
    if name == "screen-failures" and file_format in ("json", "csv"):
        raise click.UsageError("screen-failures is a picture (.svg, .png); see enrollment")
    _publish(out, _run(cli, lambda s, c: report_file(s, c, SYSTEM, name, file_format)))
    click.echo(f"{name} written to {out}")


@main.group("export")
def export_group() -> None:
    """Exports for analysis (audited)."""


@export_group.command("dm")
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False),
    help="File to write: .csv, or .xpt (SAS transport, version 5).",
)
@pass_cli
def export_dm_command(cli: Cli, out: str) -> None:
    """Write the CDISC SDTM DM-style dataset (UNBLINDED: one row per randomised
    participant, with its arm); audited as export.created."""
    from randomizer.roles import SYSTEM
    from randomizer.services.cdisc import FORMATS, export_dm

    file_format = _file_format(out, FORMATS)
    export = _run(cli, lambda s, c: export_dm(s, c, SYSTEM, file_format))
    _publish(out, export.content)
    click.echo(f"{export.rows} participants written to {out}")


@main.command()
@click.option("--participants", "count", required=True, type=click.IntRange(min=1))
@click.option("--url", default="http://127.0.0.1:8000", show_default=True, help="The service.")
@click.option(
    "--tokens",
    "tokens_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="The demo users' tokens (default: tokens.json in the instance directory).",
)
@click.option("--seed", type=int, default=None, help="Seed of the random answers (repeatable).")
@pass_cli
def simulate(cli: Cli, count: int, url: str, tokens_file: str | None, seed: int | None) -> None:
    """Screen N participants across the demo sites over HTTP, randomising the eligible
    (some are ineligible, some outside the screening window); a progress bar on a terminal."""
    from randomizer.simulation import Service, SimulationError, coordinators
    from randomizer.simulation import simulate as run_simulation

    tokens = Path(tokens_file) if tokens_file else cli.settings.instance_dir / "tokens.json"
    try:
        service, sites = Service(url), coordinators(tokens)
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import Progress

            # On standard error, so that standard output holds the summary alone.
            with Progress(console=Console(stderr=True), transient=True) as bar:
                task = bar.add_task("simulating", total=count)
                result = run_simulation(service, sites, count, seed, lambda n: bar.advance(task, n))
        else:
            result = run_simulation(service, sites, count, seed)
    except SimulationError as error:
        fail(str(error))
    click.echo(result.summary())


#: What a verification against the service's own key is worth.
OWN_KEY_WARNING = (
    "warning: no --verifier-key given: checking against the service's own key, "
    "which proves nothing against whoever holds that key"
)


def _verifier_key(cli: Cli, line: str | None) -> Any:
    """The verifier key given on the command line, or the service's own (with a warning)."""
    from audit.checkpoint import CheckpointError, parse_verifier_key, verifier_key_from_private
    from keys import load_signing_key

    if line:
        try:
            return parse_verifier_key(line)
        except CheckpointError as exc:
            fail(f"--verifier-key: {exc}")
    with cli.db.reading() as session:
        origin = _origin(session)
    key = verifier_key_from_private(origin, load_signing_key(cli.settings.keys_dir))
    click.echo(OWN_KEY_WARNING, err=True)
    return key


def _origin(session: Any) -> str:
    from randomizer.domain import parse_trial
    from randomizer.models import Trial

    trial = session.scalars(select(Trial)).one_or_none()
    if trial is None:
        fail("the database holds no trial")
    return parse_trial(trial.definition_toml).audit_origin


# kits and shipments -----------------------------------------------------------------------


@main.group("kits")
def kits_group() -> None:
    """Depot stock and kit expiry."""


@kits_group.command("generate")
@click.option("--lot", required=True, help="The blinded lot number, e.g. L2027-03.")
@click.option(
    "--count", required=True, type=int, help="Kits in all: a multiple of the arms' ratio sum."
)
@click.option(
    "--expiry",
    required=True,
    type=click.DateTime(formats=["%Y-%m-%d"]),
    help="The lot's blinded expiry, YYYY-MM-DD (after today).",
)
@pass_cli
def kits_generate(cli: Cli, lot: str, count: int, expiry: Any) -> None:
    """Add a lot to the depot (in_depot): arms balanced by the trial's ratio, random kit
    numbers, random order, random row ids. Prints how many kits were made."""
    from randomizer.domain.supply import KitGeneration
    from randomizer.roles import SYSTEM
    from randomizer.services import shipments

    order = KitGeneration(lot=lot, count=count, expires_on=expiry.date())
    numbers = _run(cli, lambda s, c: shipments.generate_kits(s, c, SYSTEM, order))
    click.echo(f"{len(numbers)} kits of lot {lot} in the depot")


@kits_group.command("expire")
@pass_cli
def kits_expire(cli: Cli) -> None:
    """Mark expired every kit past its blinded expiry, at every site and at the depot (for
    cron; allocation never takes such a kit anyway). Prints the count per place."""
    from randomizer.roles import SYSTEM
    from randomizer.services import shipments

    expired = _run(cli, lambda s, c: shipments.expire_kits(s, c, SYSTEM))
    for where, kits in expired.items():
        click.echo(f"{where}\t{len(kits)} expired")
    if not expired:
        click.echo("no kit has expired")


@main.group("shipments")
def shipments_group() -> None:
    """Shipments from the depot to the sites."""


def _echo_shipment(shipment: Any) -> None:
    click.echo(f"shipment {shipment.id} to site {shipment.site}: {shipment.status}")
    for number in shipment.kits:
        click.echo(number)


@shipments_group.command("create")
@click.option("--site", required=True)
@click.option("--count", type=int, help="Kits in all, balanced across arms.")
@click.option("--lot", help="Ship this whole lot instead.")
@pass_cli
def shipments_create(cli: Cli, site: str, count: int | None, lot: str | None) -> None:
    """Send kits from the depot to a site (the service chooses them); prints the kits."""
    from randomizer.domain.supply import ShipmentRequest
    from randomizer.roles import SYSTEM
    from randomizer.services import shipments
    from randomizer.services.inputs import Submission

    if (count is None) == (lot is None):
        fail("give either --count or --lot")
    order = Submission.of(ShipmentRequest(site=site, count=count, lot=lot))
    _echo_shipment(_run(cli, lambda s, c: shipments.create_shipment(s, c, SYSTEM, order)))


@shipments_group.command("dispatch")
@click.argument("shipment_id")
@pass_cli
def shipments_dispatch(cli: Cli, shipment_id: str) -> None:
    """Send a resupply the service requested (see `sealroom notifications list`)."""
    from randomizer.roles import SYSTEM
    from randomizer.services import shipments

    _echo_shipment(_run(cli, lambda s, c: shipments.dispatch_shipment(s, c, SYSTEM, shipment_id)))


if __name__ == "__main__":  # pragma: no cover
    main()
