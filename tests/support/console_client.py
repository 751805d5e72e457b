"""An HTTPS client of the web console, as one browser: its own cookie jar (which accepts the
Secure cookie of https://127.0.0.1), the pages it got, and the CSRF token a page carries."""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from html import unescape
from typing import Any

import aiohttp

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
_LOGIN = re.compile(r'name="login_token" value="([^"]+)"')


@dataclass
class Page:
    status: int
    headers: Mapping[str, str]
    text: str
    url: str

    @property
    def csrf(self) -> str:
        found = _CSRF.search(self.text)
        assert found, "the page has no CSRF token"
        return unescape(found.group(1))


class ConsoleClient:
    def __init__(self, url: str, context: ssl.SSLContext) -> None:
        self.url = url.rstrip("/")
        self.ssl = context
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def __aenter__(self) -> ConsoleClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()

    async def get(self, path: str, *, follow: bool = True) -> Page:
        async with self.session.get(
            self.url + path, ssl=self.ssl, allow_redirects=follow
        ) as answer:
            return Page(answer.status, dict(answer.headers), await answer.text(), str(answer.url))

    async def post(self, path: str, data: Any, *, follow: bool = False) -> Page:
        async with self.session.post(
            self.url + path, data=data, ssl=self.ssl, allow_redirects=follow
        ) as answer:
            return Page(answer.status, dict(answer.headers), await answer.text(), str(answer.url))

    async def login(self, name: str, password: str) -> Page:
        """The login form, as a browser fills it (with the form's login token)."""
        form = await self.get("/login")
        found = _LOGIN.search(form.text)
        assert found, "the login page has no login token"
        return await self.post(
            "/login", {"name": name, "password": password, "login_token": found.group(1)}
        )
