"""Notifications over a real mail server (R-UNB-2; issue 10; the stratum alert of URS §3).

A real ``aiosmtpd`` server on a free port receives what the service sends over ``smtplib``.
The databases are real ones of each test's own (the dispatcher delivers from a background
thread, outside any test transaction). Every unblinding is announced to the safety contacts
and the site's investigators without the arm; a dead or slow mail server never delays an
unblinding; undelivered messages keep their attempts and last error, wait out their
back-off, are listed for the admin and are delivered later, each delivery audited.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from click.testing import CliRunner
from sqlalchemy import select, update

from randomizer import create_app
from randomizer.cli import main as cli
from randomizer.config import Settings
from randomizer.db import Database
from randomizer.domain import generate_lists
from randomizer.models import AuditEntry, OutboxMessage, Stratum, User
from randomizer.roles import SYSTEM
from randomizer.services.context import load_trial_context
from randomizer.services.notifications import SmtpTransport
from randomizer.services.outbox import FIRST_RETRY, deliver_pending
from randomizer.services.users import add_user
from tests.conftest import APPENDIX_A_SEED, ApiClient, Clock, make_trial_database
from tests.randomizer.served import free_port
from tests.randomizer.test_blinding import ARM_IDS, names_an_arm

SAFETY = "drug-safety@sponsor.example"
INVESTIGATOR_101 = "investigator-101@sealroom-demo.invalid"
STATISTICIAN = "statistician@sealroom-demo.invalid"
SENDER = "sealroom@localhost"
SAE = {"reason": "serious_adverse_event", "event_reference": "SAE-2026-0042"}
#: Site 101's stratum for prior_ig=no (region north_america).
NORTH_AMERICA_NO = "region=north_america|prior_ig=no"
#: However loaded the machine, an unblinding that waits for the mail server takes far longer
#: (smtplib's timeout is 10 s); one that does not takes milliseconds.
PROMPT = 3.0


# A real SMTP server -------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes

    @property
    def message(self) -> email.message.EmailMessage:
        return email.message_from_bytes(self.content, policy=email.policy.default)


class Inbox:
    """An aiosmtpd handler that keeps every message; ``hold`` makes it a slow server."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.hold = threading.Event()
        self.hold.set()
        self.waiting = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.waiting.set()
        while not self.hold.is_set():  # a slow server: the client waits for its "250"
            await asyncio.sleep(0.02)
        self.received.append(
            Received(envelope.mail_from, tuple(envelope.rcpt_tos), bytes(envelope.content))
        )
        return "250 Message accepted for delivery"

    def wait_for(self, count: int, timeout: float = 15.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.received) >= count, f"{len(self.received)} of {count} messages arrived"
        return list(self.received)


class MailServer:
    """A real SMTP server on 127.0.0.1:``port``, started and stopped by the test."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.inbox = Inbox()
        self.controller: Controller | None = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self) -> MailServer:
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.inbox.hold.set()
            self.controller.stop()
            self.controller = None


@pytest.fixture
def mail_server() -> Iterator[MailServer]:
    server = MailServer(free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def dead_port() -> Iterator[MailServer]:
    """A port with nothing listening; ``start()`` brings a server up on it later."""
    server = MailServer(free_port())
    yield server
    server.stop()


# A trial database and service of the test's own ----------------------------------------------


class Service:
    """A trial database, the app serving it, and the command line on it."""

    def __init__(self, trial: Any, directory: Path) -> None:
        self.trial = trial
        self.directory = directory
        self.apps: list[Any] = []
        self.database = Database(trial.url)

    def app(self, smtp_url: str | None, safety: tuple[str, ...] = (SAFETY,)) -> ApiClient:
        settings = Settings.from_env(
            {},
            database_url=self.trial.url,
            instance_dir=self.directory,
            keys_dir=self.trial.settings.keys_dir,
            smtp_url=smtp_url,
            notify_unblinding=safety,
        )
        app = create_app({"settings": settings, "TESTING": True})
        self.apps.append(app)
        return ApiClient(app.test_client(), self.trial.tokens, Clock())

    def settle(self) -> None:
        """Wait for the dispatchers' rounds in progress."""
        for app in self.apps:
            dispatcher = app.extensions["sealroom"].dispatcher
            if dispatcher is not None:
                dispatcher.join(30)

    def cli(self, *args: str, smtp_url: str | None = None) -> Any:
        return CliRunner().invoke(
            cli,
            ["--database-url", self.trial.url, *args],
            env={
                "SEALROOM_KEYS_DIR": str(self.trial.settings.keys_dir),
                "SEALROOM_DATABASE_URL": None,
                "SEALROOM_SMTP_URL": smtp_url,
                "SEALROOM_NOTIFY_UNBLINDING": None,
            },
        )

    def outbox(self) -> list[OutboxMessage]:
        with self.database.reading() as session:
            rows = list(session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))
            session.expunge_all()
        return rows

    def entries(self, action: str) -> list[dict[str, Any]]:
        with self.database.reading() as session:
            return [
                json.loads(c)
                for c in session.scalars(
                    select(AuditEntry.canonical)
                    .where(AuditEntry.action == action)
                    .order_by(AuditEntry.seq)
                )
            ]

    def context(self, clock: Any) -> Any:
        with self.database.reading() as session:
            return load_trial_context(session, self.trial.settings.keys_dir, clock=clock)

    def close(self) -> None:
        self.settle()
        for app in self.apps:
            app.extensions["sealroom"].db.dispose()
        self.database.dispose()


@pytest.fixture
def service(scratch: Any, backend: str, tmp_path: Path) -> Iterator[Service]:
    trial = make_trial_database(scratch, backend, tmp_path, kits_per_arm=12)
    own = Service(trial, tmp_path)
    yield own
    own.close()


def unblind(client: ApiClient, sn: str, user: str = "investigator-101", body: Any = SAE) -> Any:
    return client.post(f"/participants/{sn}/unblind", user, json=body)


def one_of_each_arm(client: ApiClient, definition: Any, prefix: str) -> dict[str, str]:
    """Randomise at site 101 until both arms are taken: {arm id: screening number}."""
    lists = generate_lists(APPENDIX_A_SEED, definition)
    found: dict[str, str] = {}
    n = 0
    while len(found) < len(ARM_IDS):
        sn = f"{prefix}-{n}"
        response = client.screen_and_randomize(sn)
        assert response.status_code == 201, response.get_json()
        stratum, position = response.get_json()["randomization_number"][1:].split("-")
        found.setdefault(lists[int(stratum)][int(position) - 1], sn)
        n += 1
    return found


def definition_of(client: ApiClient) -> Any:
    return client.client.application.extensions["sealroom"].ctx.definition


def shape(received: Received, variables: list[str]) -> bytes:
    """The message with what legitimately varies (ids, times, numbers) replaced by a mark."""
    message = received.message
    text = "".join(f"{name}: {value}\n" for name, value in message.items())
    text += "\n" + message.get_content()
    text = re.sub(r"(?m)^(Message-ID|Date): .*$", r"\1: *", text)
    for value in variables:
        text = text.replace(value, "*")
    return text.encode()


# Every unblinding announced, never the arm -------------------------------------------------


@pytest.mark.requirement("R-UNB-2")
@pytest.mark.requirement("R-BLIND-1")
def test_an_unblinding_is_mailed_to_safety_and_the_sites_investigators_without_the_arm(
    service, mail_server
):
    client = service.app(mail_server.url)
    by_arm = one_of_each_arm(client, definition_of(client), "101-MAIL")
    answers = {arm: unblind(client, sn) for arm, sn in by_arm.items()}
    assert all(a.status_code == 200 for a in answers.values())
    assert {arm: a.get_json()["arm"]["id"] for arm, a in answers.items()} == {a: a for a in ARM_IDS}

    received = mail_server.inbox.wait_for(4)
    service.settle()

    views = {
        arm: client.get(f"/participants/{sn}", "coordinator-101").get_json()
        for arm, sn in by_arm.items()
    }
    shapes = set()
    for arm, sn in by_arm.items():
        mine = [r for r in received if sn in r.message["Subject"]]
        assert sorted(r.rcpt_tos for r in mine) == [(SAFETY,), (INVESTIGATOR_101,)]
        answer = answers[arm].get_json()
        for message in mine:
            assert message.mail_from == SENDER
            parsed = message.message
            assert parsed["From"] == SENDER
            assert parsed["To"] == message.rcpt_tos[0]
            subject, body = parsed["Subject"], parsed.get_content()
            for word in ("RECLAIIM", sn, "101"):
                assert word in subject
            for word in (
                "RECLAIIM",
                sn,
                views[arm]["randomization_number"],
                "Site:            101",
                "investigator-101 (investigator)",
                answer["unblinded_at"],
                SAE["reason"],
                SAE["event_reference"],
                str(answer["receipt"]["seq"]),
            ):
                assert word in body, word
            assert not names_an_arm(message.content.decode("ascii"))
            shapes.add(
                shape(
                    message,
                    [
                        sn,
                        views[arm]["randomization_number"],
                        answer["unblinded_at"],
                        f"Audit entry:     {answer['receipt']['seq']}",
                        message.rcpt_tos[0],
                    ],
                )
            )
    # Subject and body lengths do not depend on the arm (the screening numbers have one
    # length; the audit seq's digits are discounted).
    lengths = {
        (
            len(r.message["Subject"]),
            len(r.message.get_content()) - len(str(answers[arm].get_json()["receipt"]["seq"])),
        )
        for arm, sn in by_arm.items()
        for r in received
        if sn in r.message["Subject"]
    }
    assert len(lengths) == 1, lengths
    # Byte for byte the same once the participant's own identifiers are masked.
    assert len(shapes) == 1, shapes

    # Each delivery is delivered in the outbox and audited as notification.sent.
    rows = service.outbox()
    assert {(r.status, r.attempts, r.last_error) for r in rows} == {("delivered", 1, None)}
    sent = service.entries("notification.sent")
    assert sorted((e["data"]["message"], e["data"]["recipient"]) for e in sent) == sorted(
        (r.id, r.recipient) for r in rows
    )
    assert {(e["actor"], e["data"]["topic"], e["data"]["attempts"]) for e in sent} == {
        ("system", "participant.unblinded", 1)
    }
    assert {e["subject"] for e in sent} == set(by_arm.values())
    assert not any(names_an_arm(json.dumps(e)) for e in sent)


@pytest.mark.requirement("R-UNB-2")
def test_the_investigators_of_the_participants_site_are_told_and_no_others(service, mail_server):
    with service.database.transaction() as session:
        ctx = load_trial_context(session, service.trial.settings.keys_dir)
        add_user(session, ctx, SYSTEM, "inv-101-b", "investigator", "101", email="b@site101.test")
        add_user(session, ctx, SYSTEM, "inv-102", "investigator", "102", email="c@site102.test")
        add_user(session, ctx, SYSTEM, "inv-101-c", "investigator", "101")  # no address
        add_user(session, ctx, SYSTEM, "inv-101-d", "investigator", "101", email="d@site101.test")
        session.execute(update(User).where(User.name == "inv-101-d").values(active=False))
        add_user(session, ctx, SYSTEM, "crc-101", "coordinator", "101", email="e@site101.test")
    client = service.app(mail_server.url)
    assert client.screen_and_randomize("101-TOLD-1").status_code == 201

    detail = "Anaphylaxis after the infusion; the site asks for the treatment."
    body = {"reason": "other", "event_reference": "SAE-7", "detail": detail}

    response = unblind(client, "101-TOLD-1", "medical-monitor", body)

    assert response.status_code == 200
    received = mail_server.inbox.wait_for(3)
    service.settle()
    time.sleep(0.2)
    assert sorted(r.rcpt_tos[0] for r in mail_server.inbox.received) == sorted(
        [SAFETY, INVESTIGATOR_101, "b@site101.test"]
    )
    for message in received:
        content = message.message.get_content()
        assert "medical-monitor (medical_monitor)" in content
        assert "other" in content and "SAE-7" in content
        # Free text a hurried physician might write the arm into never leaves in a mail.
        assert detail not in content


@pytest.mark.requirement("R-UNB-2")
@pytest.mark.requirement("R-CLI")
def test_an_investigator_added_with_an_email_hears_of_unblindings_at_its_site(service, mail_server):
    refused = service.cli(
        "users", "add", "--role", "investigator", "--site", "102", "--email", "no address", "x"
    )
    assert refused.exit_code != 0
    assert "email" in refused.output
    added = service.cli(
        "users", "add", "--role", "investigator", "--site", "102", "--email", "pi@site102.test",
        "investigator-102",
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    client = service.app(mail_server.url)
    client.tokens = {**client.tokens, "investigator-102": added.output.strip()}
    response = client.screen_and_randomize("102-NEW-1", user="coordinator-102", site="102")
    assert response.status_code == 201

    assert unblind(client, "102-NEW-1", "investigator-101").status_code == 404
    assert unblind(client, "102-NEW-1", "investigator-102").status_code == 200

    received = mail_server.inbox.wait_for(2)
    service.settle()
    time.sleep(0.2)
    assert sorted(r.rcpt_tos[0] for r in mail_server.inbox.received) == sorted(
        [SAFETY, "pi@site102.test"]
    )
    assert all("investigator-102 (investigator)" in r.message.get_content() for r in received)
    assert all("at site 102" in r.message["Subject"] for r in received)


# A dead or slow mail server never delays an unblinding -------------------------------------


@pytest.mark.requirement("R-UNB-2")
@pytest.mark.requirement("R-CLI")
def test_with_the_mail_server_down_the_unblinding_answers_and_the_mail_waits(service, dead_port):
    client = service.app(dead_port.url)
    assert client.screen_and_randomize("101-DOWN-1").status_code == 201

    started = time.monotonic()
    response = unblind(client, "101-DOWN-1")
    elapsed = time.monotonic() - started

    assert response.status_code == 200
    assert response.get_json()["arm"]["id"] in ARM_IDS
    assert elapsed < PROMPT
    service.settle()
    rows = service.outbox()
    assert sorted(r.recipient for r in rows) == sorted([SAFETY, INVESTIGATOR_101])
    for row in rows:
        assert (row.status, row.attempts, row.delivered_at) == ("pending", 1, None)
        assert "Connection refused" in row.last_error or "ConnectionRefused" in row.last_error
        # Backed off by a minute from the failure (which came within the send's timeout).
        waited = row.next_attempt_at - row.last_attempt_at
        assert FIRST_RETRY <= waited < FIRST_RETRY + timedelta(seconds=11), waited
        assert row.claimed_until is None  # the attempt is over: no round holds it
    assert service.entries("notification.sent") == []

    # The admin sees them: pending by default, with attempts and last error.
    listed = client.get("/notifications", "admin")
    assert listed.status_code == 200
    items = listed.get_json()
    assert [(i["id"], i["status"], i["attempts"]) for i in items] == [
        (r.id, "pending", 1) for r in rows
    ]
    assert all(i["last_error"] == r.last_error for i, r in zip(items, rows, strict=True))
    assert all(i["about"] == "101-DOWN-1" and i["topic"] == "participant.unblinded" for i in items)
    assert not names_an_arm(listed.get_data(as_text=True))
    assert client.get("/notifications?status=delivered", "admin").get_json() == []
    for user in ("sponsor", "medical-monitor", "statistician", "coordinator-101", "auditor"):
        assert client.get("/notifications", user).status_code == 403
    listing = service.cli("notifications", "list")
    assert listing.exit_code == 0, listing.output
    assert listing.output.count("\tpending\t1 attempts\t") == 2
    assert "last error:" in listing.output

    # The server comes back. Within the back-off a plain `send` (cron) leaves them alone...
    dead_port.start()
    waiting = service.cli("notifications", "send", smtp_url=dead_port.url)
    assert waiting.exit_code == 0, waiting.output
    assert "0 delivered, 0 failed" in waiting.output
    assert dead_port.inbox.received == []
    assert [r.attempts for r in service.outbox()] == [1, 1]
    # ... and `send --all` delivers them now, each delivery audited.
    sent = service.cli("notifications", "send", "--all", smtp_url=dead_port.url)
    assert sent.exit_code == 0, sent.output
    assert "2 delivered, 0 failed" in sent.output
    received = dead_port.inbox.wait_for(2)
    assert sorted(r.rcpt_tos[0] for r in received) == sorted([SAFETY, INVESTIGATOR_101])
    assert not any(names_an_arm(r.content.decode("ascii")) for r in received)
    rows = service.outbox()
    assert {(r.status, r.attempts, r.last_error) for r in rows} == {("delivered", 2, None)}
    entries = service.entries("notification.sent")
    assert sorted((e["data"]["recipient"], e["data"]["attempts"]) for e in entries) == sorted(
        [(SAFETY, 2), (INVESTIGATOR_101, 2)]
    )
    assert client.get("/notifications", "admin").get_json() == []
    delivered = client.get("/notifications?status=delivered", "admin").get_json()
    assert [i["id"] for i in delivered] == [r.id for r in rows]
    assert all(i["delivered_at"] is not None for i in delivered)
    assert len(client.get("/notifications?status=all", "admin").get_json()) == 2
    assert client.get("/notifications?status=lost", "admin").status_code == 422
    # Nothing left to send.
    again = service.cli("notifications", "send", "--all", smtp_url=dead_port.url)
    assert "0 delivered, 0 failed" in again.output
    assert len(dead_port.inbox.received) == 2


@pytest.mark.requirement("R-UNB-2")
def test_a_slow_mail_server_delays_no_unblinding(service, mail_server):
    """While the server sits on a message, further unblindings still answer at once."""
    client = service.app(mail_server.url)
    for n in range(3):
        assert client.screen_and_randomize(f"101-SLOW-{n}").status_code == 201
    mail_server.inbox.hold.clear()

    assert unblind(client, "101-SLOW-0").status_code == 200
    assert mail_server.inbox.waiting.wait(10), "the dispatcher never reached the server"
    timings = []
    for sn in ("101-SLOW-1", "101-SLOW-2"):
        started = time.monotonic()
        response = unblind(client, sn)
        timings.append(time.monotonic() - started)
        assert response.status_code == 200
    mail_server.inbox.hold.set()

    assert max(timings) < PROMPT, timings
    mail_server.inbox.wait_for(6)
    service.settle()
    assert {r.status for r in service.outbox()} == {"delivered"}


@pytest.mark.requirement("R-UNB-2")
def test_two_delivery_rounds_at_once_send_each_message_once(service, mail_server):
    """`notifications send --all` while the dispatcher is stuck on a slow server."""
    client = service.app(mail_server.url)
    assert client.screen_and_randomize("101-TWICE-1").status_code == 201
    mail_server.inbox.hold.clear()
    assert unblind(client, "101-TWICE-1").status_code == 200
    assert mail_server.inbox.waiting.wait(10), "the dispatcher never reached the server"

    results: list[Any] = []
    cron = threading.Thread(
        target=lambda: results.append(
            service.cli("notifications", "send", "--all", smtp_url=mail_server.url)
        )
    )
    cron.start()
    time.sleep(0.5)  # let the second round claim what it may
    mail_server.inbox.hold.set()
    cron.join(30)
    service.settle()

    [second_round] = results
    assert second_round.exit_code == 0, second_round.output
    received = mail_server.inbox.wait_for(2)
    time.sleep(0.2)
    assert sorted(r.rcpt_tos[0] for r in mail_server.inbox.received) == sorted(
        [SAFETY, INVESTIGATOR_101]
    )
    assert len(received) == 2
    assert {(r.status, r.attempts) for r in service.outbox()} == {("delivered", 1)}
    assert len(service.entries("notification.sent")) == 2


# Back-off (1, 2, 4 ... minutes) ---------------------------------------------------------------


@pytest.mark.requirement("R-UNB-2")
def test_without_a_mail_server_messages_wait_and_retries_back_off(service, dead_port):
    """The demo: no SEALROOM_SMTP_URL. The messages wait; delivery later respects back-off."""
    client = service.app(None)
    assert client.screen_and_randomize("101-WAIT-1").status_code == 201
    assert unblind(client, "101-WAIT-1").status_code == 200
    assert [(r.status, r.attempts) for r in service.outbox()] == [("pending", 0), ("pending", 0)]
    refused = service.cli("notifications", "send")
    assert refused.exit_code == 1
    assert "SEALROOM_SMTP_URL is not set" in refused.output

    clock = Clock()
    ctx = service.context(clock)
    transport = SmtpTransport(Settings.from_env({}, smtp_url=dead_port.url).smtp, SENDER, 5)

    first = deliver_pending(service.database, ctx, transport)
    assert len(first.failed) == 2 and first.delivered == []
    rows = service.outbox()
    assert {(r.attempts, r.next_attempt_at - r.last_attempt_at) for r in rows} == {
        (1, timedelta(minutes=1))
    }

    clock.advance(seconds=59)
    assert deliver_pending(service.database, ctx, transport).failed == []  # still backing off
    assert [r.attempts for r in service.outbox()] == [1, 1]

    clock.advance(seconds=2)
    assert len(deliver_pending(service.database, ctx, transport).failed) == 2
    rows = service.outbox()
    assert {(r.attempts, r.next_attempt_at - r.last_attempt_at) for r in rows} == {
        (2, timedelta(minutes=2))
    }

    dead_port.start()
    clock.advance(seconds=119)
    assert deliver_pending(service.database, ctx, transport).delivered == []
    assert dead_port.inbox.received == []
    clock.advance(seconds=2)
    done = deliver_pending(service.database, ctx, transport)
    assert sorted(done.delivered) == sorted(r.id for r in rows)
    assert len(dead_port.inbox.wait_for(2)) == 2
    assert {(r.status, r.attempts) for r in service.outbox()} == {("delivered", 3)}
    assert [e["data"]["attempts"] for e in service.entries("notification.sent")] == [3, 3]


# The stratum-exhausted alert -----------------------------------------------------------------


def exhaust(database: Database, key: str) -> None:
    with database.transaction() as session:
        session.execute(
            update(Stratum).where(Stratum.key == key).values(next_position=Stratum.size + 1)
        )


@pytest.mark.requirement("R-LIST")
@pytest.mark.requirement("R-UNB-2")
def test_the_statistician_is_mailed_once_when_a_stratum_runs_out(service, mail_server):
    with service.database.transaction() as session:
        ctx = load_trial_context(session, service.trial.settings.keys_dir)
        add_user(session, ctx, SYSTEM, "statistician-2", "statistician", None, email="s2@x.test")
        add_user(session, ctx, SYSTEM, "statistician-3", "statistician", None)  # no address
    client = service.app(mail_server.url)
    exhaust(service.database, NORTH_AMERICA_NO)
    for sn in ("101-FULL-1", "101-FULL-2"):
        assert client.screen(sn).status_code == 201

    refusals = [client.randomize(sn) for sn in ("101-FULL-1", "101-FULL-2", "101-FULL-1")]

    assert [r.status_code for r in refusals] == [409, 409, 409]
    assert {r.get_json()["type"] for r in refusals} == {"/problems/stratum-exhausted"}
    received = mail_server.inbox.wait_for(2)
    service.settle()
    time.sleep(0.2)
    assert sorted(r.rcpt_tos[0] for r in mail_server.inbox.received) == ["s2@x.test", STATISTICIAN]
    for message in received:
        assert NORTH_AMERICA_NO in message.message["Subject"]
        assert "RECLAIIM" in message.message["Subject"]
        assert not names_an_arm(message.content.decode("ascii"))
    rows = service.outbox()
    assert [(r.topic, r.about, r.status) for r in rows] == [
        ("stratum.exhausted", NORTH_AMERICA_NO, "delivered")
    ] * 2
    refused = service.entries("participant.randomization_refused")
    assert [e["data"]["reason"] for e in refused] == ["stratum-exhausted"] * 3
    # Another stratum running out alerts again, once.
    exhaust(service.database, "region=north_america|prior_ig=yes")
    assert client.screen("101-FULL-3", prior_ig="yes").status_code == 201
    assert client.randomize("101-FULL-3").status_code == 409
    assert client.randomize("101-FULL-3").status_code == 409
    mail_server.inbox.wait_for(4)
    service.settle()
    assert len(service.outbox()) == 4


@pytest.mark.requirement("R-LIST")
@pytest.mark.requirement("R-UNB-2")
def test_the_stratum_alert_is_written_once_with_the_refusal(api, db):
    """On the shared demo database (savepoint): the alert is an outbox row, written once."""
    exhaust(db, NORTH_AMERICA_NO)
    assert api.screen("101-ALERT-1").status_code == 201
    assert api.screen("101-ALERT-2").status_code == 201

    for sn in ("101-ALERT-1", "101-ALERT-1", "101-ALERT-2"):
        assert api.randomize(sn).status_code == 409

    with db.reading() as session:
        rows = list(session.scalars(select(OutboxMessage)))
        summary = [(r.topic, r.about, r.recipient, r.status, r.attempts) for r in rows]
    assert summary == [("stratum.exhausted", NORTH_AMERICA_NO, STATISTICIAN, "pending", 0)]


@pytest.mark.requirement("R-UNB-2")
def test_messages_written_before_a_server_was_configured_go_out_after_a_later_commit(
    service, mail_server
):
    quiet = service.app(None)
    assert quiet.screen_and_randomize("101-LATER-1").status_code == 201
    assert unblind(quiet, "101-LATER-1").status_code == 200
    assert {r.status for r in service.outbox()} == {"pending"}

    loud = service.app(mail_server.url)
    assert loud.screen_and_randomize("101-LATER-2").status_code == 201
    assert unblind(loud, "101-LATER-2").status_code == 200

    received = mail_server.inbox.wait_for(4)
    service.settle()
    assert {r.message["Subject"].split()[-4] for r in received} == {"101-LATER-1", "101-LATER-2"}
    assert {r.status for r in service.outbox()} == {"delivered"}
