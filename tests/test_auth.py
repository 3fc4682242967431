"""Authentication and authorisation: modes, tokens, JWTs, 401/403, admin, CORS, rate limit, redaction."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from typer.testing import CliRunner

from memory_server.api.app import create_app
from memory_server.api.security import RateLimiter
from memory_server.auth import redact
from memory_server.cli import app as cli_app
from memory_server.config import Settings, load_settings
from memory_server.errors import ConfigurationError
from memory_server.logging_setup import RedactCredentials
from memory_server.runtime import Runtime
from memory_server.services.tokens import TokenService, parse_duration
from memory_server.storage.database import Database, make_engine, migrate
from memory_server.storage.models import utcnow
from tests.fakes.server import serve_in_thread

SECRET = "s" * 64


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite here; the token service also runs on PostgreSQL in test_tokens_on_postgres."""
    return f"sqlite:///{tmp_path / 'auth.db'}"


def auth_settings(settings: Settings, **extra: Any) -> Settings:
    return load_settings(
        data_dir=settings.data_dir,
        database_url=settings.database_url,
        embedding_model_dir=settings.embedding_model_dir,
        **extra,
    )


@pytest.fixture
async def api(runtime: Runtime, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(auth_settings(settings, auth_mode="token"), runtime)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ------------------------------------------------------------------ settings and start-up


def test_auth_mode_defaults_follow_the_bind_address() -> None:
    assert load_settings().auth_mode_resolved == "none"
    assert load_settings().rate_limit_resolved == 0
    public = load_settings(host="0.0.0.0")
    assert public.auth_mode_resolved == "token" and public.rate_limit_resolved > 0
    assert load_settings(host="::1").auth_mode_resolved == "none"
    assert (
        load_settings(host="0.0.0.0", auth_mode="NONE", allow_unauthenticated=True).auth_mode_resolved
        == "none"
    )


def test_unsafe_or_incomplete_auth_is_refused_with_advice() -> None:
    with pytest.raises(ConfigurationError, match="ALLOW_UNAUTHENTICATED=true"):
        load_settings(host="0.0.0.0", auth_mode="none").check_auth()
    load_settings(host="0.0.0.0", auth_mode="none", allow_unauthenticated=True).check_auth()
    with pytest.raises(ConfigurationError, match="JWT_SECRET"):
        load_settings(auth_mode="jwt").check_auth()
    with pytest.raises(ConfigurationError, match="too short"):
        load_settings(auth_mode="jwt", jwt_secret="short").check_auth()
    # the secret never appears in the settings' text
    assert SECRET not in repr(load_settings(auth_mode="jwt", jwt_secret=SECRET))


def test_serve_refuses_a_public_bind_without_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTH_MODE", "none")
    result = CliRunner().invoke(cli_app, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "ALLOW_UNAUTHENTICATED" in result.output


# ------------------------------------------------------------------ tokens


def test_token_lifecycle(runtime: Runtime) -> None:
    now = [utcnow()]
    tokens = TokenService(runtime.db, clock=lambda: now[0])
    info, token = tokens.create("alice", expires_in=parse_duration("1h"), name="laptop")
    assert token.startswith("ms_") and len(token) > 40 and info.prefix == token[:11]
    assert token not in json.dumps(info.model_dump(mode="json"))
    principal = tokens.authenticate(token)
    assert principal is not None and (principal.user_id, principal.app, principal.is_admin) == (
        "alice",
        None,
        False,
    )
    assert tokens.authenticate(token + "x") is None and tokens.authenticate("nonsense") is None
    [listed] = tokens.list_tokens()
    assert (listed.status, listed.user_id, listed.name) == ("active", "alice", "laptop")
    assert listed.last_used_at is not None

    now[0] += timedelta(hours=2)
    expired = TokenService(runtime.db, clock=lambda: now[0])  # no cache: sees the expiry at once
    assert expired.authenticate(token) is None
    assert expired.list_tokens()[0].status == "expired"

    _, second = tokens.create("alice", app="cursor")
    assert tokens.authenticate(second) is not None
    revoked = tokens.revoke(second[:11])
    assert revoked.status == "revoked"
    assert tokens.authenticate(second) is None  # this process: at once
    with pytest.raises(Exception, match="no token"):
        tokens.revoke("ms_missing")
    with pytest.raises(Exception, match="invalid duration"):
        parse_duration("soon")


def test_tokens_on_postgres(postgres_url: str) -> None:
    db = Database(make_engine(postgres_url))
    try:
        migrate(db.engine)
        tokens = TokenService(db)
        info, token = tokens.create("bob@example.com", app="cursor", is_admin=True)
        principal = tokens.authenticate(token)
        assert principal is not None and (principal.user_id, principal.app, principal.is_admin) == (
            "bob@example.com",
            "cursor",
            True,
        )
        tokens.revoke(info.id)
        assert tokens.authenticate(token) is None and tokens.list_tokens()[0].status == "revoked"
    finally:
        db.dispose()


def test_token_cli_create_list_revoke(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", str(settings.database_url))
    monkeypatch.setenv("MEMORY_DATA_DIR", str(settings.data_dir))
    runner = CliRunner()
    created = runner.invoke(
        cli_app, ["token", "create", "--user", "alice", "--app", "cursor", "--expires-in", "30d"]
    )
    assert created.exit_code == 0, created.output
    token = created.stdout.strip().splitlines()[0]
    assert token.startswith("ms_")
    listed = runner.invoke(cli_app, ["token", "list"])
    assert listed.exit_code == 0 and token[:11] in listed.stdout and token not in listed.stdout
    assert "cursor" in listed.stdout and "active" in listed.stdout
    assert runner.invoke(cli_app, ["token", "revoke", token[:11]]).exit_code == 0
    assert "revoked" in runner.invoke(cli_app, ["token", "list"]).stdout
    assert runner.invoke(cli_app, ["token", "revoke", "ms_nothing"]).exit_code == 2


# ------------------------------------------------------------------ REST with tokens


async def test_rest_needs_a_valid_credential(api: httpx.AsyncClient, runtime: Runtime) -> None:
    _, token = runtime.tokens.create("alice")
    assert (await api.get("/health")).status_code in (200, 503)
    for headers in ({}, bearer("ms_wrong"), {"Authorization": f"Basic {token}"}):
        response = await api.get("/api/v1/memories", headers=headers)
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert token not in response.text
    ok = await api.post("/api/v1/memories", json={"text": "Alice likes green tea"}, headers=bearer(token))
    assert ok.status_code == 200, ok.text
    assert (await api.get("/api/v1/memories", params={"token": token})).json()["total"] == 1


async def test_x_user_id_cannot_switch_user(api: httpx.AsyncClient, runtime: Runtime) -> None:
    _, token = runtime.tokens.create("alice")
    same = await api.get("/api/v1/memories", headers={**bearer(token), "X-User-Id": "alice"})
    assert same.status_code == 200
    other = await api.get("/api/v1/memories", headers={**bearer(token), "X-User-Id": "bob"})
    assert other.status_code == 403 and other.json()["error"]["code"] == "forbidden"


async def test_revoked_token_is_refused_at_once(api: httpx.AsyncClient, runtime: Runtime) -> None:
    info, token = runtime.tokens.create("alice")
    assert (await api.get("/api/v1/stats", headers=bearer(token))).status_code == 200
    runtime.tokens.revoke(info.id)
    assert (await api.get("/api/v1/stats", headers=bearer(token))).status_code == 401


async def test_app_scoped_token(api: httpx.AsyncClient, runtime: Runtime) -> None:
    _, token = runtime.tokens.create("alice", app="cursor")
    added = await api.post("/api/v1/memories", json={"text": "Alice uses vim keys"}, headers=bearer(token))
    assert added.status_code == 200 and added.json()["results"][0]["app"] == "cursor"
    other_app = await api.post(
        "/api/v1/memories", json={"text": "x y z", "app": "claude"}, headers=bearer(token)
    )
    assert other_app.status_code == 403
    app_id = (await api.get("/api/v1/apps", headers=bearer(token))).json()[0]["id"]
    paused = await api.put(f"/api/v1/apps/{app_id}", json={"is_active": False}, headers=bearer(token))
    assert paused.status_code == 403
    # MCP: only its own client name, only its own user
    assert (await api.post("/mcp/claude/http/alice", json={}, headers=bearer(token))).status_code == 403
    assert (await api.post("/mcp/cursor/http/bob", json={}, headers=bearer(token))).status_code == 403
    assert (await api.post("/mcp/cursor/http/alice", json={})).status_code == 401


async def test_admin_routes(api: httpx.AsyncClient, runtime: Runtime) -> None:
    _, alice = runtime.tokens.create("alice")
    _, admin = runtime.tokens.create("root", is_admin=True)
    mid = (
        await api.post("/api/v1/memories", json={"text": "Alice's PIN is 1234"}, headers=bearer(alice))
    ).json()["results"][0]["id"]
    for path in ("/api/v1/admin/users", "/api/v1/admin/users/alice/memories"):
        assert (await api.get(path, headers=bearer(alice))).status_code == 403
    users = (await api.get("/api/v1/admin/users", headers=bearer(admin))).json()
    assert {k: v for k, v in users[0].items() if k in ("user_id", "memories")} == {
        "user_id": "alice",
        "memories": 1,
    }
    page = (await api.get("/api/v1/admin/users/alice/memories", headers=bearer(admin))).json()
    assert [m["id"] for m in page["items"]] == [mid]
    found = await api.post(
        "/api/v1/admin/users/alice/memories/search", json={"query": "PIN"}, headers=bearer(admin)
    )
    assert [r["id"] for r in found.json()["results"]] == [mid]
    assert (await api.get("/api/v1/admin/users/nobody/memories", headers=bearer(admin))).status_code == 404
    gone = await api.request(
        "DELETE", "/api/v1/admin/users/alice/memories", json={"memory_ids": [mid]}, headers=bearer(admin)
    )
    assert gone.json()["deleted"] == [mid]
    # the admin token is no key to other users' own routes or MCP paths
    assert (
        await api.get("/api/v1/memories", headers={**bearer(admin), "X-User-Id": "alice"})
    ).status_code == 403
    assert (await api.post("/mcp/x/http/alice", json={}, headers=bearer(admin))).status_code == 403


async def test_admin_routes_are_closed_without_auth(runtime: Runtime, settings: Settings) -> None:
    app = create_app(settings, runtime)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        assert (await client.get("/api/v1/admin/users")).status_code == 403


# ------------------------------------------------------------------ CORS and rate limit


async def test_cors_allow_list(runtime: Runtime, settings: Settings) -> None:
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    app = create_app(auth_settings(settings, cors_origins="https://app.example"), runtime)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        allowed = await client.options("/api/v1/memories", headers=preflight)
        assert allowed.headers.get("access-control-allow-origin") == "https://app.example"
        denied = await client.options(
            "/api/v1/memories", headers={**preflight, "Origin": "https://evil.example"}
        )
        assert "access-control-allow-origin" not in denied.headers
    default = create_app(settings, runtime)  # no CORS_ORIGINS: no cross-origin access at all
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=default), base_url="http://test"
    ) as client:
        response = await client.get("/api/v1/stats", headers={"Origin": "https://app.example"})
        assert "access-control-allow-origin" not in response.headers


async def test_rate_limit_answers_429_with_retry_after(runtime: Runtime, settings: Settings) -> None:
    app = create_app(auth_settings(settings, auth_mode="token", rate_limit_per_minute=3), runtime)
    _, alice = runtime.tokens.create("alice")
    _, bob = runtime.tokens.create("bob")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        statuses = [(await client.get("/api/v1/stats", headers=bearer(alice))).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        limited = await client.get("/api/v1/stats", headers=bearer(alice))
        assert limited.json()["error"]["code"] == "rate_limited" and int(limited.headers["retry-after"]) >= 1
        assert (await client.get("/api/v1/stats", headers=bearer(bob))).status_code == 200  # per credential
        assert (await client.get("/health")).status_code in (200, 503)  # probes are not limited


def test_token_bucket_refills() -> None:
    now = [0.0]
    limiter = RateLimiter(60, clock=lambda: now[0])
    assert all(limiter.take("k") == 0 for _ in range(60))
    assert limiter.take("k") == 1
    now[0] += 1.0
    assert limiter.take("k") == 0 and limiter.take("other") == 0


# ------------------------------------------------------------------ JWT


async def jwt_client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "alice", "exp": int(time.time()) + 600, **extra}


async def test_jwt_hs256(runtime: Runtime, settings: Settings) -> None:
    app = create_app(auth_settings(settings, auth_mode="jwt", jwt_secret=SECRET, jwt_audience="mem"), runtime)
    good = jwt.encode(claims(aud="mem"), SECRET, algorithm="HS256")
    admin = jwt.encode(claims(aud="mem", sub="root", roles=["memory-admin"]), SECRET, algorithm="HS256")
    async with await jwt_client(app) as client:
        assert (await client.get("/api/v1/stats", headers=bearer(good))).status_code == 200
        assert (await client.get("/api/v1/admin/users", headers=bearer(good))).status_code == 403
        assert (await client.get("/api/v1/admin/users", headers=bearer(admin))).status_code == 200
        bad = [
            jwt.encode(claims(aud="mem"), "x" * 64, algorithm="HS256"),  # wrong key
            jwt.encode(claims(aud="other"), SECRET, algorithm="HS256"),  # wrong audience
            jwt.encode(claims(aud="mem", exp=int(time.time()) - 60), SECRET, algorithm="HS256"),  # expired
            jwt.encode({"sub": "alice", "aud": "mem"}, SECRET, algorithm="HS256"),  # no expiry
            jwt.encode(claims(aud="mem", sub="no spaces allowed"), SECRET, algorithm="HS256"),
            jwt.encode(claims(aud="mem"), SECRET, algorithm="HS512"),  # algorithm not allowed
        ]
        for token in bad:
            response = await client.get("/api/v1/stats", headers=bearer(token))
            assert response.status_code == 401, response.text
            assert token not in response.text


@pytest.fixture
def jwks() -> Iterator[tuple[rsa.RSAPrivateKey, str]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    public.update(kid="k1", use="sig", alg="RS256")

    async def keys(_request: Any) -> JSONResponse:
        return JSONResponse({"keys": [public]})

    with serve_in_thread(Starlette(routes=[Route("/jwks.json", keys)])) as url:
        yield key, f"{url}/jwks.json"


async def test_jwt_rs256_from_jwks(runtime: Runtime, settings: Settings, jwks: tuple[Any, str]) -> None:
    key, url = jwks
    app = create_app(
        auth_settings(settings, auth_mode="jwt", jwt_jwks_url=url, jwt_issuer="https://idp.example"), runtime
    )
    token = jwt.encode(claims(iss="https://idp.example"), key, algorithm="RS256", headers={"kid": "k1"})
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(
        claims(iss="https://idp.example"), other_key, algorithm="RS256", headers={"kid": "k1"}
    )
    wrong_issuer = jwt.encode(
        claims(iss="https://evil.example"), key, algorithm="RS256", headers={"kid": "k1"}
    )
    async with await jwt_client(app) as client:
        assert (await client.get("/api/v1/stats", headers=bearer(token))).status_code == 200
        assert (
            await client.get("/api/v1/stats", headers={**bearer(token), "X-User-Id": "bob"})
        ).status_code == 403
        assert (await client.get("/api/v1/stats", headers=bearer(forged))).status_code == 401
        assert (await client.get("/api/v1/stats", headers=bearer(wrong_issuer))).status_code == 401


# ------------------------------------------------------------------ what is logged


def test_credentials_are_redacted_from_access_log_records(tmp_path: Path) -> None:
    secret = "ms_" + "A" * 43
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", f"/mcp/c/sse/alice?token={secret}&x=1", "1.1", 200),
        None,
    )
    assert RedactCredentials().filter(record)
    assert secret not in record.getMessage() and "token=[redacted]&x=1" in record.getMessage()
    assert redact(f"Authorization: Bearer {secret}") == "Authorization: Bearer [redacted]"
    assert secret not in redact(f"oops {secret} leaked")
