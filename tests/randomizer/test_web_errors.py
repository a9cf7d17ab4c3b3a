"""Errors on the web pages' paths are HTML pages; under /api/ they stay problem details
(issue 13: R-WEB-1, R-WEB-2; R-API for the API's side).

An unknown address, a wrong method, a failure of the server's own or a busy database on a
page's path answers the layout (the trial id, translated, every page's security headers)
with the page's own words; the same error under ``/api/`` is ``application/problem+json``
exactly as before.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from tests.randomizer.web_client import WebClient


@pytest.fixture
def web(app: Any, trial_db: Any) -> WebClient:
    return WebClient(app.test_client(), trial_db.passwords)


def assert_page(answer: Any, status: int) -> str:
    assert answer.status_code == status
    assert answer.mimetype == "text/html"
    page = answer.get_data(as_text=True)
    assert "<strong>RECLAIIM</strong>" in page
    csp = answer.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp
    assert answer.headers["X-Frame-Options"] == "DENY"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["Cache-Control"] == "no-store"
    assert "<script" not in page
    return page


def assert_problem(answer: Any, status: int, type_uri: str) -> dict[str, Any]:
    assert answer.status_code == status
    assert answer.mimetype == "application/problem+json"
    problem = answer.get_json()
    assert problem["type"] == type_uri and problem["status"] == status
    return problem


@pytest.mark.requirement("R-WEB-1")
@pytest.mark.parametrize("path", ["/no-such-page", "/participants/101-0001/nothing", "/admin/x"])
def test_an_unknown_page_is_an_html_page_in_the_layout(web, path):
    page = assert_page(web.get(path), 404)
    assert "Page not found" in page and 'href="/"' in page


@pytest.mark.requirement("R-WEB-1")
def test_the_error_page_is_in_the_browsers_language(web):
    page = assert_page(web.get("/no-such-page", headers={"Accept-Language": "fr"}), 404)
    assert '<html lang="fr">' in page and "Page introuvable" in page


@pytest.mark.requirement("R-WEB-2")
def test_a_wrong_method_on_a_page_is_an_html_405_naming_the_allowed_ones(web):
    answer = web.get("/sign-out")  # a POST only: no GET changes anything
    page = assert_page(answer, 405)
    assert "Not allowed here" in page
    assert set(answer.headers["Allow"].split(", ")) - {"OPTIONS"} == {"POST"}
    web.sign_in("coordinator-101")
    assert_page(web.client.put("/participants"), 405)


@pytest.mark.requirement("R-WEB-1")
def test_a_failure_on_a_page_says_nothing_of_it_and_a_busy_database_asks_to_wait(app, web):
    def broken() -> str:
        raise RuntimeError("secret internals")

    def busy() -> str:
        raise OperationalError("SELECT 1", {}, Exception("database is locked"))

    app.add_url_rule("/broken-page", "broken_page", broken)
    app.add_url_rule("/busy-page", "busy_page", busy)
    app.add_url_rule("/api/v1/broken", "broken_api", broken)
    page = assert_page(web.get("/broken-page"), 500)
    assert "Something went wrong" in page and "secret internals" not in page
    answer = web.get("/busy-page")
    assert "Service unavailable" in assert_page(answer, 503)
    assert answer.headers["Retry-After"] == "5"
    problem = assert_problem(web.get("/api/v1/broken"), 500, "about:blank")
    assert "secret internals" not in str(problem)


@pytest.mark.requirement("R-WEB-1")
def test_a_refusal_inside_a_page_is_shown_in_the_layout_for_the_signed_in_user(web):
    web.sign_in("coordinator-101")
    page = assert_page(web.get("/admin/users"), 403)
    assert '<strong id="user">coordinator-101</strong>' in page
    assert "The coordinator role may not manage users." in page


@pytest.mark.requirement("R-API")
def test_the_api_keeps_its_problem_details(web, api):
    assert_problem(api.get("/no-such-resource"), 404, "/problems/not-found")
    answer = api.request("DELETE", "/trial", "coordinator-101")
    assert_problem(answer, 405, "/problems/method-not-allowed")
    assert "Content-Security-Policy" not in answer.headers
    assert_problem(api.get("/participants/101-0001", "coordinator-101"), 404, "/problems/not-found")
    assert_problem(api.get("/trial"), 401, "/problems/unauthorized")
