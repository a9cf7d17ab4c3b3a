"""``sealroom simulate``: drive a running service over HTTP as the demo users (issue 14).

For demos, for load and for tests: N participants are screened across the demo sites by
their coordinators, with answers drawn from a seeded random source (some ineligible, some
screened too long ago to be randomised), and the eligible are randomised. It is a client
like any other: it knows the service only by its URL and the demo users' tokens, and it
sees what they see (never an arm).

Dispensing visits fall weeks after randomisation: the simulation cannot wait for them, so
it dispenses nothing (a service whose clock is moved, as the README's ``faketime`` recipe
does, can be dispensed to by hand).
"""

from __future__ import annotations

import json
import random
import secrets
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

#: Eligible answers for RECLAIIM (URS §2), the one set the simulation, the benchmarks and the
#: tests start from; the simulation spoils some of them on purpose.
ELIGIBLE: dict[str, Any] = {
    "age_years": 54,
    "eular_acr_dm": True,
    "prednisolone_mg_per_day": 10,
    "pga_vas_cm": 4.5,
    "mmt8": 120,
    "cdasi_activity": 20,
    "malignancy_within_5_years": False,
    "cancer_associated_myositis": False,
    "pgd_vas_cm": 1.0,
    "improved_since_screening": False,
}
#: One way to fail each rule, as a site would type it.
INELIGIBLE: dict[str, dict[str, Any]] = {
    "I1": {"age_years": 17},
    "I2": {"eular_acr_dm": False},
    "I3": {"prednisolone_mg_per_day": 25},
    "I4": {"pga_vas_cm": 1.5},
    "I5": {"mmt8": 145, "cdasi_activity": 10},
    "E1": {"malignancy_within_5_years": True},
    "E2": {"cancer_associated_myositis": True},
    "E3": {"pgd_vas_cm": 4.0},
    "E4": {"improved_since_screening": True},
}


class SimulationError(RuntimeError):
    """The service could not be driven (unreachable, a token refused, an unexpected answer)."""


@dataclass
class SimulationResult:
    """What happened, counted by outcome (``randomized``, ``ineligible``, ...)."""

    outcomes: Counter[str] = field(default_factory=Counter)
    randomized: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = ", ".join(f"{n} {name}" for name, n in sorted(self.outcomes.items()))
        return f"{sum(self.outcomes.values())} participants screened: {parts}"


class Service:
    """The API under ``url`` (the service root, as for ``monitor``), with bearer tokens."""

    def __init__(self, url: str, timeout: float = 30) -> None:
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise SimulationError(f"--url must be an http(s) URL, not {url!r}")
        base = url.rstrip("/")
        self.base = base if base.endswith("/api/v1") else base + "/api/v1"
        self.timeout = timeout

    def call(
        self, method: str, path: str, token: str, body: Any = None, key: str | None = None
    ) -> tuple[int, Any]:
        """One request: its status and decoded JSON answer (problem details included)."""
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if key is not None:
            headers["Idempotency-Key"] = key
        # The scheme was checked in __init__: only http(s), never file: or a custom one.
        request = urllib.request.Request(  # noqa: S310
            self.base + path, data=data, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            payload = error.read()
            try:
                return error.code, json.loads(payload or b"null")
            except ValueError:
                return error.code, None
        except (urllib.error.URLError, OSError) as error:
            raise SimulationError(f"{method} {path}: {error}") from None


def coordinators(tokens_file: Path) -> dict[str, str]:
    """Each demo site's coordinator token, from ``tokens.json`` (``sealroom init-demo``)."""
    try:
        tokens = json.loads(tokens_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise SimulationError(f"cannot read the tokens in {tokens_file}: {error}") from None
    sites = {
        item["site"]: item["token"]
        for item in tokens
        if item.get("role") == "coordinator" and item.get("site")
    }
    if not sites:
        raise SimulationError(f"{tokens_file} holds no coordinator's token")
    return dict(sorted(sites.items()))


@dataclass(frozen=True)
class Plan:
    """One simulated participant: where, which screening answers, and what the site answers."""

    site: str
    prior_ig: str
    screened_on: date
    weight_kg: float
    eligibility: dict[str, Any]


def plans(n: int, sites: Iterable[str], rng: random.Random, today: date) -> Iterator[Plan]:
    """``n`` participants: about 1 in 8 fails one rule, about 1 in 20 was screened longer
    ago than the window allows (RECLAIIM's 21 days), the rest are eligible."""
    site_ids = list(sites)
    for _ in range(n):
        answers = {**ELIGIBLE, "age_years": rng.randint(18, 80)}
        draw = rng.random()
        screened_on = today - timedelta(days=rng.randint(0, 14))
        if draw < 0.125:
            answers.update(INELIGIBLE[rng.choice(sorted(INELIGIBLE))])
        elif draw < 0.175:
            screened_on = today - timedelta(days=rng.randint(30, 60))
        yield Plan(
            site=rng.choice(site_ids),
            prior_ig=rng.choice(("yes", "no")),
            screened_on=screened_on,
            weight_kg=round(rng.uniform(45, 120), 1),
            eligibility=answers,
        )


def simulate(
    service: Service,
    tokens: dict[str, str],
    participants: int,
    seed: int | None = None,
    progress: Callable[[int], None] | None = None,
    today: date | None = None,
) -> SimulationResult:
    """Screen ``participants`` and randomise the eligible; ``progress(1)`` after each one.

    A randomisation refused for a reason the plan did not intend (a site out of stock, a
    stratum used up) is counted by its problem type; a refused screening or an answer that
    is not JSON ends the simulation.
    """
    # Demo answers, not secrets: a seeded generator makes a run repeatable.
    rng = random.Random(seed)  # noqa: S311
    result = SimulationResult()
    run = secrets.token_hex(6)  # idempotency keys unique to this run, whatever the seed
    today = today or datetime.now(UTC).date()
    for index, plan in enumerate(plans(participants, tokens, rng, today)):
        token = tokens[plan.site]
        body = {
            "site": plan.site,
            "screened_on": plan.screened_on.isoformat(),
            "strata": {"prior_ig": plan.prior_ig},
        }
        status, screened = service.call(
            "POST", "/participants", token, body, key=f"sim-{run}-{index}-screen"
        )
        if status != 201:
            raise SimulationError(f"screening refused: HTTP {status} {screened}")
        number = screened["screening_number"]
        status, answer = service.call(
            "POST",
            f"/participants/{number}/randomize",
            token,
            {"weight_kg": plan.weight_kg, "eligibility": plan.eligibility},
            key=f"sim-{run}-{index}-randomize",
        )
        if status == 201:
            result.outcomes["randomized"] += 1
            result.randomized.append(number)
        else:
            kind = (answer or {}).get("type", f"HTTP {status}") if isinstance(answer, dict) else ""
            result.outcomes[kind.removeprefix("/problems/") or f"HTTP {status}"] += 1
        if progress is not None:
            progress(1)
    return result
