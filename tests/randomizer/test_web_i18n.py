"""The web pages in French and English, chosen per user (issue 13: R-WEB-1).

The coordinator's and pharmacist's pages are checked in both languages, the choice is kept
with the account (a new session keeps it), no French page names an arm, and the French
catalogue covers every text of the pages and its compiled .mo matches it.
"""

from __future__ import annotations

import html
import io
import json
from pathlib import Path
from typing import Any

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from sqlalchemy import select

from randomizer.models import AuditEntry, User
from tests.randomizer.test_web import ARM_WORDS, body_without_trial_title, randomise, screen
from tests.randomizer.web_client import WebClient

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "randomizer" / "web"
FRENCH = WEB / "translations" / "fr" / "LC_MESSAGES"


@pytest.fixture
def web(app: Any, trial_db: Any) -> WebClient:
    return WebClient(app.test_client(), trial_db.passwords)


def choose(web: WebClient, language: str) -> Any:
    web.get("/language")
    return web.post("/language", {"language": language})


def no_arm(page: str) -> bool:
    return not any(word in body_without_trial_title(page) for word in ARM_WORDS)


def audited(db: Any, action: str) -> list[dict[str, Any]]:
    with db.reading() as session:
        rows = session.scalars(
            select(AuditEntry.canonical).where(AuditEntry.action == action).order_by(AuditEntry.seq)
        )
        return [json.loads(row) for row in rows]


@pytest.mark.requirement("R-WEB-1")
def test_a_user_chooses_french_it_is_audited_and_kept_in_a_new_session(web, app, trial_db, db):
    web.sign_in("coordinator-101")
    assert 'lang="en"' in web.get("/").get_data(as_text=True)
    assert "Your site's participants" in web.page
    assert choose(web, "fr").status_code == 303
    home = web.get("/").get_data(as_text=True)
    assert '<html lang="fr">' in home
    for text in ("Participants de votre centre", "Sélectionner un participant", "Déconnexion"):
        assert text in home
    [entry] = audited(db, "user.language_set")
    assert entry["data"] == {"user": "coordinator-101", "language": "fr", "previous": "en"}
    with db.reading() as session:
        user = session.scalars(select(User).where(User.name == "coordinator-101")).one()
        assert user.language == "fr"

    # Another browser, another session, an English browser: the account's choice wins.
    later = WebClient(app.test_client(), trial_db.passwords)
    later.sign_in("coordinator-101")
    page = later.get("/", headers={"Accept-Language": "en-GB,en"}).get_data(as_text=True)
    assert "Participants de votre centre" in page
    assert choose(later, "en").status_code == 303
    assert "Your site's participants" in later.get("/").get_data(as_text=True)


@pytest.mark.requirement("R-WEB-2")
def test_the_choice_needs_the_csrf_token_and_a_known_language(web, db):
    web.sign_in("pharmacist-101")
    web.get("/language")
    assert web.post("/language", {"language": "fr"}, csrf=False).status_code == 400
    web.get("/language")
    assert web.post("/language", {"language": "de"}).status_code == 422
    assert 'id="language-error"' in web.page
    assert audited(db, "user.language_set") == []
    assert "Your site's inventory" in web.get("/").get_data(as_text=True)


@pytest.mark.requirement("R-WEB-1")
def test_without_a_choice_the_browser_language_then_english_is_used(web):
    assert "Connexion" in web.get("/sign-in", headers={"Accept-Language": "fr-CA,fr"}).get_data(
        as_text=True
    )
    assert ">Sign in<" in web.get("/sign-in", headers={"Accept-Language": "de"}).get_data(
        as_text=True
    )
    wrong = web.post(
        "/sign-in",
        {"username": "coordinator-101", "password": "not the password at all"},
        headers={"Accept-Language": "fr"},
    )
    assert wrong.status_code == 401
    assert "Le nom d'utilisateur ou le mot de passe est erroné" in html.unescape(web.page)


@pytest.mark.requirement("R-WEB-1")
def test_a_french_coordinator_screens_and_randomises_in_french_without_an_arm(web, clock, api):
    web.sign_in("coordinator-101")
    choose(web, "fr")
    assert "Le numéro de sélection commence par" in web.get("/participants").get_data(as_text=True)
    assert "Numéro de sélection" in web.get("/participants/new").get_data(as_text=True)
    assert screen(web, "101-0401", clock.today().isoformat()).status_code == 201
    assert "Participant sélectionné" in web.page and "Randomiser ce participant" in web.page
    web.get("/participants/101-0401/randomise")
    assert "Éligibilité : répondez à chaque question" in web.page
    assert "Je confirme que cette strate est exacte pour ce participant." in web.page
    # The rules stay in the protocol's words (the trial definition's, not translated).
    rules = api.get("/trial", "coordinator-101").get_json()
    for rule in rules.get("eligibility", {}).get("rules", []):
        assert rule["text"] in html.unescape(web.page)
    assert no_arm(web.page)
    result = randomise(web, "101-0401")
    assert result.status_code == 201, web.page
    for text in ("Numéro de randomisation", "Kits à dispenser maintenant", "Reçu"):
        assert text in web.page
    assert no_arm(web.page)
    participant = web.get("/participants/101-0401").get_data(as_text=True)
    assert "Dispenser une visite" in participant and "Poids du jour (kg)" in participant
    assert no_arm(participant)
    assert no_arm(web.get("/participants").get_data(as_text=True))


@pytest.mark.requirement("R-WEB-1")
def test_a_french_pharmacist_reads_inventory_kits_and_shipments_in_french_without_an_arm(web, api):
    kit = api.screen_and_randomize("101-0402").get_json()["kits"][0]
    web.sign_in("pharmacist-101")
    choose(web, "fr")
    inventory = web.get("/inventory").get_data(as_text=True)
    for text in ("Inventaire", "Kits par statut", "péremption la plus proche en premier"):
        assert text in inventory
    assert no_arm(inventory)
    web.get(f"/kits/{kit}")
    assert "Changer son statut" in web.page and "Péremption" in web.page
    changed = web.post(f"/kits/{kit}", {"status": "damaged", "reason": "flacon fêlé"})
    assert changed.status_code == 200, web.page
    assert "Kit de remplacement" in web.page
    assert no_arm(web.page)
    shipments = web.get("/shipments").get_data(as_text=True)
    assert "Expéditions" in shipments and "En transit" in shipments
    assert no_arm(shipments)


@pytest.mark.requirement("R-WEB-1")
def test_an_english_pharmacist_sees_english_even_from_a_french_browser(web, api):
    web.sign_in("pharmacist-101")
    choose(web, "en")
    page = web.get("/inventory", headers={"Accept-Language": "fr"}).get_data(as_text=True)
    assert "Kits by status" in page and "Kits par statut" not in page


def page_messages() -> set[str]:
    """Every text the pages mark for translation, as ``make translations`` extracts them."""
    with open(ROOT / "babel.cfg", encoding="utf-8") as config:
        method_map, options_map = parse_mapping_cfg(config)
    return {
        message
        for _file, _line, message, _comments, _context in extract_from_dir(
            str(WEB), method_map, options_map, keywords={"_": None, "gettext": None, "N_": None}
        )
        if isinstance(message, str)
    }


def test_every_text_of_the_pages_has_a_french_translation():
    with open(FRENCH / "messages.po", "rb") as po:
        catalogue = read_po(po, locale="fr")
    translated = {m.id: m.string for m in catalogue if m.id and m.string and not m.fuzzy}
    assert page_messages() - set(translated) == set()
    assert "Sign in" in translated and translated["Sign in"] == "Connexion"


def test_the_compiled_catalogue_is_up_to_date_with_the_po_file():
    with open(FRENCH / "messages.po", "rb") as po:
        catalogue = read_po(po, locale="fr")
    compiled = io.BytesIO()
    write_mo(compiled, catalogue)
    assert (FRENCH / "messages.mo").read_bytes() == compiled.getvalue(), "run make translations"
