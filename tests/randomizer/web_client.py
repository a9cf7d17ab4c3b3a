"""A Flask test client that signs in to the web pages as a demo user, with CSRF tokens."""

from __future__ import annotations

import re
from typing import Any

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
FORM_KEY = re.compile(r'name="form_key" value="([^"]+)"')


class WebClient:
    """One browser: its cookies, the CSRF token of the last page, the demo passwords."""

    def __init__(self, client: Any, passwords: dict[str, str]) -> None:
        self.client = client
        self.passwords = passwords
        self.page = ""

    def get(self, path: str, **kwargs: Any) -> Any:
        response = self.client.get(path, **kwargs)
        self.page = response.get_data(as_text=True)
        return response

    def csrf(self) -> str:
        match = CSRF.search(self.page)
        assert match, "the page holds no CSRF token"
        return match.group(1)

    def form_key(self) -> str | None:
        match = FORM_KEY.search(self.page)
        return match.group(1) if match else None

    def post(self, path: str, data: dict[str, Any], *, csrf: bool = True, **kwargs: Any) -> Any:
        """POST a form with the last page's CSRF token (and its one-time key, if any)."""
        fields = dict(data)
        if csrf:
            fields.setdefault("csrf_token", self.csrf())
        key = self.form_key()
        if key is not None:
            fields.setdefault("form_key", key)
        response = self.client.post(path, data=fields, **kwargs)
        self.page = response.get_data(as_text=True)
        return response

    def sign_in(self, user: str, password: str | None = None) -> Any:
        self.get("/sign-in")
        return self.post(
            "/sign-in", {"username": user, "password": password or self.passwords[user]}
        )
