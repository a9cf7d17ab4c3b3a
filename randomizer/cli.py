"""The ``sealroom`` command line (URS §9, R-CLI).

Every command acts as ``system`` in the audit trail; each runs in one transaction, so a
failure leaves nothing half done.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from sqlalchemy import select

from randomizer.config import Settings
from randomizer.db import Database


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
        """A transaction and the trial context (the trial must exist)."""
        from randomizer.services.context import load_trial_context

        with self.db.transaction() as session:
            yield session, load_trial_context(session, self.settings.keys_dir)


pass_cli = click.make_pass_decorator(Cli)


def fail(message: str) -> None:
    """Print an error and exit 1."""
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--database-url",
    envvar="SEALROOM_DATABASE_URL",
    help="SQLAlchemy URL (default: SQLite in ./instance/).",
)
@click.pass_context
def main(context: click.Context, database_url: str | None) -> None:
    """Sealroom: randomisation and blinding for double-blind clinical trials."""
    context.obj = Cli(database_url)


# init-demo ---------------------------------------------------------------------------------


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
    help="Where to write the demo users' tokens (default: <instance>/tokens.json).",
)
@click.option(
    "--seed", "seed_hex", help="List seed, 64 hex digits (default: a fresh one, printed once)."
)
@pass_cli
def init_demo(
    cli: Cli, trial_file: str | None, tokens_out: str | None, seed_hex: str | None
) -> None:
    """Create the schema, keys, the trial, its lists, demo sites, kits and one user per role."""
    from keys import KeyStoreError
    from randomizer.domain import TrialDefinitionError, bundled_trial_path, parse_seed, parse_trial
    from randomizer.errors import Problem
    from randomizer.services.demo import DEMO_SITES, initialise_demo

    path = Path(trial_file) if trial_file else bundled_trial_path()
    # Bytes, not read_text(): the stored definition and its hash are the file's exact bytes.
    toml_text = path.read_bytes().decode("utf-8")
    try:
        definition = parse_trial(toml_text)
        seed = secrets.token_bytes(32) if seed_hex is None else parse_seed(seed_hex)
    except TrialDefinitionError as exc:
        fail(f"{path}: {exc}")
    except ValueError as exc:
        fail(f"--seed: {exc}")
    settings = cli.settings
    settings.instance_dir.mkdir(parents=True, exist_ok=True)
    try:
        demo = initialise_demo(cli.db, settings.keys_dir, definition, toml_text, seed)
    except (KeyStoreError, Problem) as exc:
        fail(str(exc))

    tokens_path = Path(tokens_out) if tokens_out else settings.instance_dir / "tokens.json"
    _write_secret(tokens_path, json.dumps(demo.tokens, indent=2) + "\n")
    click.echo(
        f"Trial {definition.id} initialised: {len(definition.strata())} strata, "
        f"{demo.slots} slots, {len(DEMO_SITES)} sites with {demo.kits_per_arm} kits "
        "of every arm each."
    )
    click.echo(f"Database: {cli.db.engine.url}")
    click.echo(f"Keys: {settings.keys_dir} (losing them loses the ability to unblind)")
    click.echo(f"Tokens of {len(demo.tokens)} demo users: {tokens_path} (mode 0600)")
    if seed_hex is None:
        click.echo(
            "List seed (hand it to the statistician now: it is not stored and will not "
            f"be shown again):\n{seed.hex()}"
        )


def _write_secret(path: Path, text: str) -> None:
    """Write a file only its owner may read (tokens are secrets)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)


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
@pass_cli
def serve(cli: Cli, host: str, port: int, workers: int) -> None:
    """Serve the API with gunicorn."""
    from gunicorn.app.base import BaseApplication

    from randomizer import create_app
    from randomizer.services.context import NotInitialised

    settings = cli.settings
    try:
        create_app({"settings": settings}).extensions["sealroom"].db.dispose()
    except NotInitialised as exc:
        fail(str(exc))

    class Server(BaseApplication):
        def load_config(self) -> None:
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", workers)
            # A request line of a few thousand characters must reach the application's
            # own error handling (a problem detail), not gunicorn's HTML 400.
            self.cfg.set("limit_request_line", 8190)
            self.cfg.set("accesslog", "-")
            # No management socket in the home directory: one path shared by every server
            # on the machine, and an admin channel the service does not need.
            self.cfg.set("control_socket_disable", True)

        def load(self) -> Any:
            return create_app({"settings": settings})

    click.echo(f"Serving {settings.database_url.split('://')[0]} database on http://{host}:{port}")
    Server().run()


# users ------------------------------------------------------------------------------------


@main.group("users")
def users_group() -> None:
    """Add and deactivate users, issue tokens."""


@users_group.command("add")
@click.option(
    "--role",
    required=True,
    help="coordinator, investigator, pharmacist, "
    "medical_monitor, sponsor, statistician, auditor or admin.",
)
@click.option("--site", help="The site of a site role.")
@click.argument("name")
@pass_cli
def users_add(cli: Cli, role: str, site: str | None, name: str) -> None:
    """Add a user and print their first token."""
    from randomizer.roles import SYSTEM
    from randomizer.services import users

    token = _run(cli, lambda s, c: users.add_user(s, c, SYSTEM, name, role, site)[1])
    click.echo(token)


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
    from audit.checkpoint import CheckpointError, parse_verifier_key, verifier_key_from_private
    from audit.verify import verify_log
    from keys import load_signing_key
    from randomizer.models import AuditCheckpoint, AuditEntry, AuditHead

    if verifier_key:
        try:
            key = parse_verifier_key(verifier_key)
        except CheckpointError as exc:
            fail(f"--verifier-key: {exc}")
    else:
        with cli.db.reading() as session:
            origin = _origin(session)
        key = verifier_key_from_private(origin, load_signing_key(cli.settings.keys_dir))
        click.echo(
            "warning: no --verifier-key given: checking against the service's own key, "
            "which proves nothing against whoever holds that key",
            err=True,
        )
    trusted = [Path(checkpoint_file).read_text(encoding="utf-8")] if checkpoint_file else []
    with cli.db.reading() as session:
        # Read the head first and nothing beyond it: entries and checkpoints are append-only,
        # so what lies below the head is stable while the service keeps appending.
        size, head = session.execute(select(AuditHead.size, AuditHead.last_hash)).one()
        checkpoints = list(
            session.scalars(
                select(AuditCheckpoint.note)
                .where(AuditCheckpoint.size <= size)
                .order_by(AuditCheckpoint.size)
            )
        )
        entries = (
            canonical.encode("utf-8")
            for canonical in session.scalars(
                select(AuditEntry.canonical)
                .where(AuditEntry.seq < size)
                .order_by(AuditEntry.seq)
                .execution_options(yield_per=2000)
            )
        )
        report = verify_log(entries, checkpoints, key, trusted, head_hash=head)
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    if not report.ok:
        for problem in report.problems:
            click.echo(f"FAILED: {problem}", err=True)
        sys.exit(1)
    click.echo(
        f"OK: {report.size} entries; chain, Merkle tree and {len(checkpoints)} "
        f"checkpoints verified against {key.line()}"
    )


@audit_group.command("export")
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False), help="The JSON Lines file to write."
)
@pass_cli
def audit_export(cli: Cli, out: str) -> None:
    """Write the audit trail as JSON Lines: each entry's canonical bytes, in seq order."""
    from randomizer.models import AuditEntry
    from randomizer.roles import SYSTEM

    def export(session: Any, ctx: Any) -> tuple[int, str]:
        digest = hashlib.sha256()
        count = 0
        with open(out, "wb") as handle:
            for canonical in session.scalars(select(AuditEntry.canonical).order_by(AuditEntry.seq)):
                line = canonical.encode("utf-8") + b"\n"
                handle.write(line)
                digest.update(line)
                count += 1
        ctx.audit.append(
            session,
            SYSTEM,
            "export.created",
            ctx.definition.id,
            {"kind": "audit", "entries": count, "sha256": digest.hexdigest()},
        )
        return count, digest.hexdigest()

    count, sha = _run(cli, export)
    click.echo(f"{count} entries written to {out} (sha256 {sha})")


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
def monitor(url: str, token: str, verifier_key: str, state_dir: str) -> None:
    """Check that the log still extends the last checkpoint seen; exit 1 on fork or rollback."""
    from audit.checkpoint import CheckpointError, parse_verifier_key
    from audit.monitor import MonitorAlarm, MonitorError, check_log, http_fetcher

    try:
        key = parse_verifier_key(verifier_key)
    except CheckpointError as exc:
        fail(f"--verifier-key: {exc}")
    try:
        result = check_log(http_fetcher(url, token), key, Path(state_dir))
    except MonitorAlarm as alarm:
        click.echo(f"ALARM: {alarm}", err=True)
        sys.exit(1)
    except MonitorError as error:
        click.echo(f"error: cannot check the log: {error}", err=True)
        sys.exit(2)
    click.echo(result.message())


# lists ------------------------------------------------------------------------------------


@main.group("lists")
def lists_group() -> None:
    """The statistician's randomisation lists."""


@lists_group.command("export")
@click.option("--seed", "seed_hex", required=True, help="The list seed (64 hex digits).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="CSV file to write.")
@pass_cli
def lists_export(cli: Cli, seed_hex: str, out: str) -> None:
    """Write the unblinded lists (stratum,randomization_number,arm); needs the right seed."""
    from randomizer.services.lists import export_lists

    rows = _run(cli, lambda s, c: export_lists(s, c, seed_hex))
    # The unblinded allocation: written only for its owner, like the tokens.
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(["stratum", "randomization_number", "arm"])
    writer.writerows(rows)
    _write_secret(Path(out), table.getvalue())
    click.echo(f"{len(rows)} slots written to {out}")


def _origin(session: Any) -> str:
    from randomizer.domain import parse_trial
    from randomizer.models import Trial

    trial = session.scalars(select(Trial)).one_or_none()
    if trial is None:
        fail("the database holds no trial")
    return parse_trial(trial.definition_toml).audit_origin


if __name__ == "__main__":  # pragma: no cover
    main()
