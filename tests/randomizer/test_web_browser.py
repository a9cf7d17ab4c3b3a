"""The web pages in a real headless Chromium (issue 13: R-WEB-1, R-WEB-3).

A real ``sealroom serve`` (gunicorn, two workers) in a subprocess; Playwright for Python
drives Debian's ``chromium`` (no browser is downloaded). Each page a role works on is
checked with axe-core (axe-playwright-python): a serious or critical violation fails. The
randomisation and unblinding pages' screenshots go to ``docs/screenshots/`` (README.md shows
them); the others to the test's own directory.

Without Chromium these tests skip with the reason outside CI and fail in CI (``.ci/run``
installs it with apt-get).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ELIGIBLE, IN_CI, make_trial_database
from tests.randomizer.served import Server

CHROMIUM = "/usr/bin/chromium"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.requirement("R-WEB-1"),
    pytest.mark.requirement("R-WEB-3"),
]


def _browser_missing() -> str | None:
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} is missing (apt-get install -y chromium; .ci/run does it)"
    try:
        import axe_playwright_python  # noqa: F401
        import playwright  # noqa: F401
    except ImportError as error:
        return f"playwright or axe-playwright-python is not installed ({error})"
    return None


@pytest.fixture(scope="module")
def served(scratch: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    missing = _browser_missing()
    if missing:
        if IN_CI:
            pytest.fail(f"CI needs the browser tests: {missing}")
        pytest.skip(missing)
    directory = tmp_path_factory.mktemp("web-browser")
    trial = make_trial_database(scratch, "sqlite", directory)
    passwords = {
        entry["user"]: entry["password"]
        for entry in json.loads((directory / "tokens.json").read_text())
    }
    server = Server(trial, directory, workers=2).start()
    try:
        yield server, passwords, directory
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser(served: Any) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


def expect(locator: Any) -> Any:
    """Playwright's retrying assertions (imported here: without Playwright the tests skip)."""
    from playwright.sync_api import expect as retried

    return retried(locator)


class Visit:
    """One signed-in browser context, with the page checks every test makes."""

    def __init__(self, browser: Any, served: Any, user: str) -> None:
        self.server, passwords, self.directory = served
        # Axe's script is evaluated through the DevTools protocol; the pages' CSP allows no
        # script, which is the point, so the check bypasses it.
        self.context = browser.new_context(bypass_csp=True, java_script_enabled=True)
        self.page = self.context.new_page()
        self.base = self.server.client.base
        self.page.goto(f"{self.base}/")
        self.page.fill("#username", user)
        self.page.fill("#password", passwords[user])
        self.page.click("button[type=submit]")
        assert self.page.locator("#user").inner_text() == user

    def go(self, path: str) -> None:
        self.page.goto(f"{self.base}{path}")

    def check(self, name: str, docs: bool = False) -> None:
        """No serious or critical axe-core violation; a screenshot saved."""
        from axe_playwright_python.sync_playwright import Axe

        results = Axe().run(self.page)
        bad = [
            (violation["id"], violation["help"])
            for violation in results.response["violations"]
            if violation.get("impact") in ("serious", "critical")
        ]
        assert bad == [], f"{name}: {bad}"
        target = DOCS if docs else self.directory
        target.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(target / f"{name}.png"), full_page=True)

    def close(self) -> None:
        self.context.close()


def answer_checklist(page: Any, weight: str = "72") -> None:
    for name, value in ELIGIBLE.items():
        field = f"eligibility.{name}"
        if isinstance(value, bool):
            page.check(f"input[name='{field}'][value='{'yes' if value else 'no'}']")
        else:
            page.fill(f"input[name='{field}']", str(value))
    page.fill("#weight_kg", weight)
    page.check("input[name=confirm_stratum]")


def test_coordinator_screens_randomises_and_reads_the_kit_numbers(browser, served):
    visit = Visit(browser, served, "coordinator-101")
    visit.check("home-coordinator")
    visit.go("/participants/new")
    visit.page.fill("#screening_number", "101-0101")
    visit.page.check("input[name='strata.prior_ig'][value='no']")
    visit.check("screen")
    visit.page.click("main button[type=submit]")
    assert visit.page.locator("#screening-number").inner_text() == "101-0101"
    visit.page.click("text=Randomise this participant")
    answer_checklist(visit.page)
    visit.check("randomise", docs=True)
    visit.page.click("main button[type=submit]")
    number = visit.page.locator("#randomization-number").inner_text()
    kits = visit.page.locator("#kits").inner_text()
    assert number and kits.startswith("K")
    visit.check("randomised", docs=True)
    visit.close()


def randomised_by_the_coordinator(browser: Any, served: Any, number: str, prior_ig: str) -> str:
    """``number`` screened and randomised through the pages by coordinator-101 (the test
    above checks each page); the first of its kits' numbers."""
    coordinator = Visit(browser, served, "coordinator-101")
    coordinator.go("/participants/new")
    coordinator.page.fill("#screening_number", number)
    coordinator.page.check(f"input[name='strata.prior_ig'][value='{prior_ig}']")
    coordinator.page.click("main button[type=submit]")
    coordinator.page.click("text=Randomise this participant")
    answer_checklist(coordinator.page)
    coordinator.page.click("main button[type=submit]")
    kit = coordinator.page.locator("#kits").inner_text().split(",")[0].strip()
    coordinator.close()
    return kit


def test_pharmacist_dispenses_and_marks_a_kit_damaged(browser, served):
    kit = randomised_by_the_coordinator(browser, served, "101-0102", prior_ig="yes")

    visit = Visit(browser, served, "pharmacist-101")
    visit.go("/inventory")
    visit.check("inventory")
    visit.go(f"/kits/{kit}")
    visit.page.check("input[name=status][value=damaged]")
    visit.page.fill("#reason", "Vial cracked")
    visit.check("kit")
    visit.page.click("main button[type=submit]")
    expect(visit.page.locator("#kit-status")).to_have_text("damaged")
    assert visit.page.locator("#replacement").inner_text().startswith("K")
    visit.go("/participants/101-0102")
    visit.check("participant-pharmacist")
    visit.close()


def test_investigator_unblinds_with_a_signature_and_sees_the_arm_once(browser, served):
    randomised_by_the_coordinator(browser, served, "101-0103", prior_ig="no")

    visit = Visit(browser, served, "investigator-101")
    visit.go("/participants/101-0103/unblind")
    visit.page.select_option("#reason", "serious_adverse_event")
    visit.page.fill("#event_reference", "SAE-2026-0042")
    visit.page.check("input[name=confirm]")
    visit.page.fill("#password", served[1]["investigator-101"])
    visit.check("unblind", docs=True)
    visit.page.click("main button[type=submit]")
    assert visit.page.locator("#arm").inner_text() in ("IgPro20", "Placebo")
    visit.check("unblinded", docs=True)
    visit.close()


@pytest.mark.requirement("R-FIX")
def test_admin_finds_a_participant_and_corrects_its_stratum_with_a_signature(browser, served):
    randomised_by_the_coordinator(browser, served, "101-0104", prior_ig="no")

    visit = Visit(browser, served, "admin")
    visit.go("/corrections?screening_number=101-0104")
    visit.check("corrections")
    visit.page.click("#correct-stratum")
    visit.page.check("input[name='strata.prior_ig'][value='yes']")
    visit.page.fill("#reason", "Prior IVIG found in the hospital record")
    visit.page.check("input[name=confirm]")
    visit.page.fill("#password", served[1]["admin"])
    visit.check("correct-stratum")
    visit.page.click("main form.narrow button[type=submit]")
    expect(visit.page.locator("#done")).to_be_visible()
    assert visit.page.locator("#corrected-stratum").inner_text() not in ("", "\N{EN DASH}")
    visit.check("corrected")
    visit.go("/no-such-page")
    assert visit.page.locator("h1").inner_text() == "Page not found"
    visit.check("not-found")
    visit.close()


def test_auditor_pages_through_entries(browser, served):
    visit = Visit(browser, served, "auditor")
    visit.go("/audit")
    visit.check("audit")
    first = visit.page.locator("table.entries tbody tr td").first.inner_text()
    visit.page.click("#next-page")
    expect(visit.page.locator("table.entries tbody tr td").first).not_to_have_text(first)
    visit.close()


@pytest.mark.requirement("R-SHIP")
def test_admin_sends_a_shipment_and_the_pharmacist_receives_it_with_one_kit_damaged(
    browser, served
):
    import subprocess
    import sys
    from datetime import date, timedelta

    server = served[0]
    expiry = (date.today() + timedelta(days=400)).isoformat()
    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "randomizer.cli",
            "kits",
            "generate",
            "--lot",
            "L-BROWSER",
            "--count",
            "4",
            "--expiry",
            expiry,
        ],
        env={
            **os.environ,
            "SEALROOM_DATABASE_URL": server.trial.url,
            "SEALROOM_INSTANCE_DIR": str(server.directory),
            "SEALROOM_KEYS_DIR": str(server.trial.settings.keys_dir),
        },
        capture_output=True,
        text=True,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    admin = Visit(browser, served, "admin")
    admin.go("/shipments")
    admin.page.fill("#site", "101")
    admin.page.fill("#lot", "L-BROWSER")
    admin.check("shipments-admin")
    admin.page.click("main form.narrow button[type=submit]")
    created = admin.page.locator("#created a").inner_text()
    admin.close()

    visit = Visit(browser, served, "pharmacist-101")
    visit.go("/shipments")
    visit.check("shipments-pharmacist")
    visit.page.click(f"a[href='/shipments/{created}']")
    radios = visit.page.locator("input[type=radio][value=available]")
    # Retried until the page has loaded: count() alone reads whatever the DOM holds now.
    expect(radios).to_have_count(4)
    for index in range(4):
        radios.nth(index).check()
    visit.page.locator("input[type=radio][value=damaged]").first.check()
    visit.check("receive")
    visit.page.click("main button[type=submit]")
    expect(visit.page.locator("#shipment-status")).to_have_text("received")
    expect(visit.page.locator("#received")).to_contain_text("1 damaged")
    visit.check("received")
    visit.close()


@pytest.mark.requirement("R-REP-4")
def test_the_enrollment_report_shows_its_pictures_under_the_pages_policy(browser, served):
    visit = Visit(browser, served, "sponsor")
    visit.go("/reports/enrollment")
    visit.check("report-enrollment")
    visit.close()
    # A context that keeps the pages' policy (the axe check bypasses it): the pictures load.
    server, passwords, _ = served
    context = browser.new_context(java_script_enabled=False)
    try:
        page = context.new_page()
        page.goto(f"{server.client.base}/sign-in")
        page.fill("#username", "sponsor")
        page.fill("#password", passwords["sponsor"])
        page.click("button[type=submit]")
        page.goto(f"{server.client.base}/reports/enrollment")
        images = page.locator("main img")
        expect(images).to_have_count(2)
        for index in range(2):
            width = images.nth(index).evaluate("image => image.complete && image.naturalWidth")
            assert width and width > 0
    finally:
        context.close()
