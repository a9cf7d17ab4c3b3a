"""The fault tests' load, and what a fault may never do to the record.

:class:`Load` randomises participants from client threads against a real server, as a
careful client would: each request with an Idempotency-Key of its own, sent again (same key)
after a 503 or a lost connection until it is acknowledged; it keeps every answer.

:func:`check_whole_and_once` then checks the database (R-NF-2, R-NF-6): every acknowledged
randomisation is there, exactly once, with the number and kits it was acknowledged with;
every participant is either randomised whole (its slot, its kits, its one audit entry) or
not at all; the slots used are each stratum's first ones; and ``sealroom audit verify``
passes.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from click.testing import CliRunner
from sqlalchemy import func, select

from randomizer.cli import main
from randomizer.db import Database
from randomizer.models import AuditEntry, Kit, Participant, Slot, Stratum
from tests.conftest import ELIGIBLE, TrialDatabase
from tests.randomizer.served import Answer, HttpClient

#: The answers a client may get while the database or a worker is failing.
UNAVAILABLE_TYPES = {"/problems/unavailable", "/problems/outcome-unknown"}


def screen_all(client: HttpClient, numbers: list[str], site: str = "101") -> None:
    """Screen ``numbers`` at ``site`` (alternating prior_ig: two strata)."""
    today = datetime.now(UTC).date().isoformat()
    for i, number in enumerate(numbers):
        status, body = client.post(
            "/participants",
            f"coordinator-{site}",
            {
                "screening_number": number,
                "site": site,
                "screened_on": today,
                "strata": {"prior_ig": ("yes", "no")[i % 2]},
            },
        )
        assert status == 201, body


def randomize_with_key(client: HttpClient, number: str) -> Answer:
    """Randomise ``number`` at site 101 with an Idempotency-Key of its own (OSError if the
    connection failed); the same call again is the careful client's retry."""
    return client.send(
        "POST",
        f"/api/v1/participants/{number}/randomize",
        "coordinator-101",
        {"weight_kg": 70, "eligibility": ELIGIBLE},
        {"Idempotency-Key": f"once-{number}"},
        timeout=60,
    )


@dataclass
class Load:
    """Randomise ``numbers`` from ``threads`` client threads until each is acknowledged.

    ``pause`` seconds between a thread's randomisations keep the load going long enough for
    a fault to land in its middle; ``deadline`` bounds the whole load.
    """

    client: HttpClient
    numbers: list[str]
    threads: int = 4
    pause: float = 0.1
    deadline: float = 90.0
    acknowledged: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: (status, content type, problem type, Retry-After) of every answer but a 201.
    refusals: list[tuple[int, str, str | None, str | None]] = field(default_factory=list)
    #: Requests whose connection failed (no answer at all).
    lost: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        ends = time.monotonic() + self.deadline
        shares = [self.numbers[i :: self.threads] for i in range(self.threads)]
        self._workers = [
            threading.Thread(target=self._run, args=(share, ends), daemon=True) for share in shares
        ]
        for worker in self._workers:
            worker.start()
        return self

    def _run(self, share: list[str], ends: float) -> None:
        for number in share:
            while time.monotonic() < ends:
                try:
                    answer = randomize_with_key(self.client, number)
                except OSError:
                    with self._lock:
                        self.lost += 1
                    time.sleep(0.2)
                    continue
                if answer.status == 201:
                    with self._lock:
                        self.acknowledged[number] = answer.json()
                    break
                body = answer.json() if answer.body else {}
                with self._lock:
                    self.refusals.append(
                        (
                            answer.status,
                            answer.headers.get_content_type(),
                            body.get("type"),
                            answer.headers.get("Retry-After"),
                        )
                    )
                if answer.status != 503:
                    break
                time.sleep(0.2)  # Retry-After says 5 s; a test cannot wait that long
            time.sleep(self.pause)

    def wait_for(self, count: int, timeout: float = 60) -> None:
        """Wait until ``count`` randomisations were acknowledged."""
        ends = time.monotonic() + timeout
        while len(self.acknowledged) < count:
            assert time.monotonic() < ends, f"only {len(self.acknowledged)} acknowledged"
            time.sleep(0.02)

    def join(self) -> None:
        """Wait for the load's end; check that only 503 problems were refused."""
        for worker in self._workers:
            worker.join()
        for status, content_type, type_, retry_after in self.refusals:
            assert (status, content_type) == (503, "application/problem+json"), type_
            assert type_ in UNAVAILABLE_TYPES, type_
            assert retry_after is not None and int(retry_after) > 0
        missing = sorted(set(self.numbers) - set(self.acknowledged))
        assert missing == [], f"never acknowledged: {missing}"


def check_whole_and_once(
    trial: TrialDatabase, acknowledged: Mapping[str, Mapping[str, Any]]
) -> int:
    """Check ``trial``'s record after a fault; return how many participants are randomised.

    ``acknowledged`` maps screening numbers to the answers (201 bodies) their clients got.
    """
    database = Database(trial.url)
    try:
        with database.reading() as session:
            query = select(Participant).where(Participant.status == "randomized")
            randomized = {p.screening_number: p for p in session.scalars(query)}
            for number, answer in acknowledged.items():
                assert number in randomized, f"{number} was acknowledged and is missing"
                participant = randomized[number]
                assert participant.randomization_number == answer["randomization_number"]
                kits = session.scalars(
                    select(Kit.kit_number).where(Kit.participant_id == participant.id)
                ).all()
                assert sorted(kits) == sorted(answer["kits"])
            entries = Counter(
                session.scalars(
                    select(AuditEntry.subject).where(AuditEntry.action == "participant.randomized")
                )
            )
            assert entries == Counter(list(randomized)), "one audit entry per randomisation"
            for participant in randomized.values():
                slot = session.scalars(
                    select(Slot).where(Slot.participant_id == participant.id)
                ).one()
                assert slot.randomization_number == participant.randomization_number
                assert session.scalar(
                    select(func.count()).where(Kit.participant_id == participant.id)
                ), participant.screening_number
            half = session.scalars(
                select(Participant.screening_number).where(
                    Participant.status != "randomized",
                    Participant.randomization_number.is_not(None)
                    | Participant.id.in_(select(Kit.participant_id))
                    | Participant.id.in_(select(Slot.participant_id)),
                )
            ).all()
            assert half == [], f"half-randomised participants: {half}"
            for stratum in session.scalars(select(Stratum)):
                positions = session.scalars(
                    select(Slot.position)
                    .where(Slot.stratum_number == stratum.number, Slot.participant_id.is_not(None))
                    .order_by(Slot.position)
                ).all()
                assert list(positions) == list(range(1, stratum.next_position))
    finally:
        database.dispose()
    assert_audit_verifies(trial)
    return len(randomized)


def assert_audit_verifies(trial: TrialDatabase) -> None:
    """``sealroom audit verify`` on ``trial``'s database exits 0."""
    environment = {
        "SEALROOM_DATABASE_URL": trial.url,
        "SEALROOM_KEYS_DIR": str(trial.settings.keys_dir),
    }
    result = CliRunner().invoke(main, ["audit", "verify"], env=environment)
    assert result.exit_code == 0, result.output
