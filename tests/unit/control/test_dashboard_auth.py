"""The dashboard needs the admin token from every client: bearer header or the HttpOnly
cookie the login form sets; no query-string token, no loopback bypass, 403 with no token."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from starlette.applications import Starlette

from tidal.control.dashboard import COOKIE, dashboard_routes, session_value

TOKEN = "dashboard-token-0123456789"


class _Feed:
    def data(self) -> dict[str, Any]:
        return {"stages": [], "title": "t"}


def _run(fn: Any, token: str | None = TOKEN, client: tuple[str, int] = ("127.0.0.1", 5)) -> Any:
    app = Starlette(routes=dashboard_routes(_Feed(), token=token))  # type: ignore[arg-type]

    async def main() -> Any:
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await fn(c)

    return asyncio.run(main())


def test_loopback_without_token_is_refused() -> None:
    async def fn(c: httpx.AsyncClient) -> None:
        r = await c.get("/dashboard/data.json")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        r = await c.get("/dashboard")
        assert r.status_code == 303 and r.headers["location"] == "/dashboard/login"
        r = await c.get("/dashboard/data.json", params={"token": TOKEN})  # query: not accepted
        assert r.status_code == 401

    _run(fn)


def test_bearer_header_works_from_any_client() -> None:
    async def fn(c: httpx.AsyncClient) -> None:
        ok = {"authorization": f"Bearer {TOKEN}"}
        assert (await c.get("/dashboard/data.json", headers=ok)).json()["title"] == "t"
        assert (await c.get("/dashboard", headers=ok)).status_code == 200
        bad = {"authorization": f"Bearer {TOKEN[:-1]}"}
        assert (await c.get("/dashboard/data.json", headers=bad)).status_code == 401

    _run(fn, client=("203.0.113.9", 4000))


def test_login_form_sets_an_httponly_cookie() -> None:
    async def fn(c: httpx.AsyncClient) -> None:
        form = await c.get("/dashboard/login")
        assert form.status_code == 200 and 'name="token"' in form.text
        r = await c.post("/dashboard/login", data={"token": "wrong-wrong-wrong-wrong"})
        assert r.status_code == 401 and COOKIE not in r.headers.get("set-cookie", "")
        r = await c.post("/dashboard/login", data={"token": TOKEN})
        assert r.status_code == 303 and r.headers["location"] == "/dashboard"
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie and TOKEN not in cookie
        assert f"{COOKIE}={session_value(TOKEN)}" in cookie
        c.cookies.set(COOKIE, session_value(TOKEN))
        assert (await c.get("/dashboard/data.json")).status_code == 200
        c.cookies.set(COOKIE, session_value("another-token-0123456"))
        assert (await c.get("/dashboard/data.json")).status_code == 401

    _run(fn)


def test_no_token_configured_means_closed_to_everyone() -> None:
    async def fn(c: httpx.AsyncClient) -> None:
        for path in ("/dashboard", "/dashboard/data.json", "/dashboard/login"):
            r = await c.get(path)
            assert r.status_code == 403 and "no admin token" in r.json()["error"], path

    _run(fn, token=None)
