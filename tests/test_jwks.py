"""JWKS (`--jwks-url`, SPEC §7) against a local key server on 127.0.0.1 that
rotates its keys while streams stay open: new kids are found with no restart,
unknown kids cost the key server at most one request per interval, a key
server that goes down leaves the last keys working and /readyz says so, and
streams opened before a rotation run on until their own `exp`."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sse import envelope, open_stream
from support import (
    SECRET,
    StartServer,
    assert_problem,
    bearer,
    eventually,
    handmade,
    publish,
    request,
)

from sse_stream.access.jwks import KeySet
from sse_stream.cli import main as cli
from sse_stream.core.settings import Settings
from sse_stream.web.app import create_app


@dataclass
class SigningKey:
    kid: str
    private: Any
    algorithm: str

    def jwk(self, **extra: Any) -> dict[str, Any]:
        public = self.private.public_key()
        found: dict[str, Any] = jwt.get_algorithm_by_name(self.algorithm).to_jwk(public,
                                                                                  as_dict=True)
        return {**found, "kid": self.kid, "use": "sig", **extra}

    def sign(self, subscribe: list[str], ttl: float = 300, kid: str | None = None) -> str:
        claims = {"exp": int(time.time() + ttl), "sse_stream": {"subscribe": subscribe}}
        return jwt.encode(claims, self.private, algorithm=self.algorithm,
                          headers={"kid": self.kid if kid is None else kid})


def rsa_key(kid: str) -> SigningKey:
    return SigningKey(kid, rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")


def ec_key(kid: str) -> SigningKey:
    return SigningKey(kid, ec.generate_private_key(ec.SECP256R1()), "ES256")


@dataclass
class KeyServer:
    """A JWKS endpoint: serves `keys`, counts its requests; `status` other than
    200 makes it fail, `body` replaces the document, `hang` holds requests."""

    keys: list[dict[str, Any]]
    status: int = 200
    body: bytes | None = None
    hang: asyncio.Event | None = None
    requests: int = 0
    server: TestServer | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/.well-known/jwks.json"

    async def handle(self, _request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if self.hang is not None:
            await self.hang.wait()
        if self.status != 200:
            return web.Response(status=self.status)
        if self.body is not None:
            return web.Response(body=self.body, content_type="application/json")
        return web.json_response({"keys": self.keys})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/.well-known/jwks.json", self.handle)
        self.server = TestServer(app, host="127.0.0.1", port=self.port or None)
        await self.server.start_server()
        self.port = self.server.port

    async def stop(self) -> None:
        """Down: the port refuses connections."""
        assert self.server is not None
        await self.server.close()


@pytest.fixture
async def key_server() -> AsyncIterator[KeyServer]:
    server = KeyServer([])
    await server.start()
    try:
        yield server
    finally:
        if server.server is not None:
            await server.server.close()


async def readyz(server: TestServer) -> tuple[int, dict[str, Any]]:
    code, _, body = await request(server, "GET", "/readyz")
    return code, body


async def test_rotation_is_picked_up_while_old_streams_run_to_their_exp(
        start_server: StartServer, key_server: KeyServer, db: asyncpg.Connection,
        stream: str) -> None:
    old, new = rsa_key("old-" + uuid.uuid4().hex[:6]), ec_key("new-" + uuid.uuid4().hex[:6])
    key_server.keys = [old.jwk()]
    server = await start_server(jwks_url=key_server.url, jwks_min_refresh=0, heartbeat=0.2,
                                jwt_leeway=0, token_expiry_margin=0.5)
    await eventually(lambda: _ready(server))
    url = str(server.make_url(f"/streams/{stream}"))
    ttl = 5.0
    short = old.sign([stream], ttl=ttl)
    expires_at = jwt.decode(short, options={"verify_signature": False})["exp"]
    async with open_stream(url, headers=bearer(short)) as before:
        await before.until(lambda parser: parser.last_event_id != "")
        first = await publish(db, stream, "t", {"n": 1})
        assert envelope(await before.next())["id"] == first

        # Rotation at the issuer: a new kid, the old one removed.
        key_server.keys = [new.jwk()]
        fetched = key_server.requests
        # A token of the new key is accepted with no restart: its unknown
        # kid fetches the set once.
        async with open_stream(url, headers=bearer(new.sign([stream]))) as after:
            await after.until(lambda parser: parser.last_event_id != "")
            assert key_server.requests == fetched + 1
            # Tokens of the removed key are refused from now on...
            body = assert_problem(await request(server, "GET", f"/streams/{stream}/events",
                                                headers=bearer(old.sign([stream]))),
                                  401, "Authorization")
            assert old.kid in body["detail"]
            # ...but the stream opened with one runs on until its own exp.
            second = await publish(db, stream, "t", {"n": 2})
            assert envelope(await after.next())["id"] == second
            assert envelope(await before.next())["id"] == second
            rest = await before.rest(timeout=ttl + 2)
            ended = time.time()
            assert [m.event for m in rest] == ["sse.token-expiring"]
            assert expires_at - 0.5 <= ended <= expires_at + 1.5
            # The new stream is not ended by the old one's exp.
            third = await publish(db, stream, "t", {"n": 3})
            assert envelope(await after.next())["id"] == third
    # Pages and publishing take JWKS tokens too; ES256 and RS256 side by side.
    both = rsa_key("both-rsa")
    key_server.keys = [new.jwk(), both.jwk()]
    for signer in (new, both):
        code, _, page = await request(server, "GET", f"/streams/{stream}/events",
                                      headers=bearer(signer.sign([stream])))
        assert code == 200 and len(page["events"]) == 3, page


async def _ready(server: TestServer) -> bool:
    return (await readyz(server))[0] == 200


async def test_unknown_kids_cost_one_fetch_per_interval(start_server: StartServer,
                                                        key_server: KeyServer,
                                                        stream: str) -> None:
    current, rotated = rsa_key("k1"), rsa_key("k2")
    key_server.keys = [current.jwk()]
    interval = 2.0
    server = await start_server(jwks_url=key_server.url, jwks_min_refresh=interval)
    await eventually(lambda: _ready(server))
    assert key_server.requests == 1
    path = f"/streams/{stream}/events"
    # Within the interval of the first fetch, an unknown kid fetches nothing.
    assert_problem(await request(server, "GET", path,
                                 headers=bearer(current.sign([stream], kid="nope"))),
                   401, "Authorization")
    assert key_server.requests == 1
    # Once the interval has passed (the rate limit is time itself), a burst of
    # 30 unknown kids, and a token of a key rotated in meanwhile, cost one fetch
    # between them. The key server answers slowly, so the burst overlaps it.
    key_server.keys = [current.jwk(), rotated.jwk()]
    await asyncio.sleep(interval)
    key_server.hang = asyncio.Event()
    forged = [request(server, "GET", path,
                      headers=bearer(current.sign([stream], kid=f"unknown-{n}")))
              for n in range(30)]
    burst = [asyncio.ensure_future(r) for r in forged]
    valid = asyncio.ensure_future(request(server, "GET", path,
                                          headers=bearer(rotated.sign([stream]))))
    await eventually(lambda: key_server.requests == 2)
    key_server.hang.set()
    for result in await asyncio.gather(*burst):
        assert_problem(result, 401, "Authorization")
    assert (await valid)[0] == 200
    assert key_server.requests == 2
    # And after the burst, within the interval: still nothing.
    key_server.hang = None
    for n in range(10):
        assert_problem(await request(server, "GET", path,
                                     headers=bearer(current.sign([stream], kid=f"x{n}"))),
                       401, "Authorization")
    assert key_server.requests == 2


async def test_a_key_server_that_goes_down_leaves_the_last_keys_working(
        start_server: StartServer, key_server: KeyServer, db: asyncpg.Connection,
        stream: str) -> None:
    key = ec_key("ec-1")
    key_server.keys = [key.jwk()]
    server = await start_server(jwks_url=key_server.url, jwks_refresh=0.2, jwks_min_refresh=0.2)
    await eventually(lambda: _ready(server))
    code, body = await readyz(server)
    assert body["jwks"]["keys"] == 1 and body["jwks"]["stale"] is False
    path = f"/streams/{stream}/events"
    headers = bearer(key.sign([stream]))
    await publish(db, stream, "t", 1)

    async def stale() -> bool:
        code, body = await readyz(server)
        return code == 200 and body["jwks"]["stale"] is True

    # Each way a fetch can fail: an error status, a body too large or not a
    # key set, the server gone (connection refused).
    failures = [("status", lambda: setattr(key_server, "status", 503), "HTTP 503"),
                ("size", lambda: setattr(key_server, "body", b"[" + b" " * (1 << 20) + b"]"),
                 "bytes"),
                ("junk", lambda: setattr(key_server, "body", b'{"keys": 5}'), "Key Set"),
                ("no signing key", lambda: setattr(key_server, "body",
                                                   b'{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}'),
                 "no RS256/ES256 signing key")]
    for name, fail, error in failures:
        fail()
        await eventually(stale)
        code, body = await readyz(server)
        assert body["status"] == "ready" and body["jwks"]["keys"] == 1, name
        assert body["jwks"]["fetched_at"] <= body["jwks"]["failing_since"]
        assert error in body["jwks"]["error"], (name, body)
        # The last good key still verifies.
        code, _, page = await request(server, "GET", path, headers=headers)
        assert code == 200 and len(page["events"]) == 1, name
        key_server.status, key_server.body = 200, None
        await eventually(lambda: _not_stale(server))
    await key_server.stop()

    async def refused() -> bool:
        code, body = await readyz(server)
        return code == 200 and "ClientConnectorError" in (body["jwks"]["error"] or "")

    await eventually(refused)
    assert (await request(server, "GET", path, headers=headers))[0] == 200
    # Back again, with a rotated key: found by the periodic refresh.
    rotated = rsa_key("rsa-2")
    key_server.keys = [rotated.jwk()]
    await key_server.start()
    await eventually(lambda: _not_stale(server))
    assert (await request(server, "GET", path, headers=bearer(rotated.sign([stream]))))[0] == 200


async def _not_stale(server: TestServer) -> bool:
    code, body = await readyz(server)
    return code == 200 and body["jwks"]["stale"] is False


async def test_no_keys_yet_is_not_ready(start_server: StartServer, key_server: KeyServer,
                                        stream: str) -> None:
    key = rsa_key("late")
    key_server.keys = [key.jwk()]
    key_server.status = 500
    server = await start_server(jwks_url=key_server.url, jwks_min_refresh=0)

    async def failed() -> bool:
        return (await readyz(server))[1]["jwks"]["error"] is not None

    await eventually(failed)
    code, _, body = await request(server, "GET", "/readyz")
    assert code == 503 and "JWKS" in body["detail"] and body["jwks"]["keys"] == 0
    assert body["jwks"]["fetched_at"] is None and body["jwks"]["error"] == "HTTP 500"
    body = assert_problem(await request(server, "GET", f"/streams/{stream}/events",
                                        headers=bearer(key.sign([stream]))), 401, "Authorization")
    assert "not been fetched" in body["detail"]
    # The key server recovers: the next token's refresh finds the key.
    key_server.status = 200
    assert (await request(server, "GET", f"/streams/{stream}/events",
                          headers=bearer(key.sign([stream]))))[0] == 200
    assert (await readyz(server))[0] == 200


async def test_only_the_keys_algorithm_verifies(start_server: StartServer,
                                                key_server: KeyServer, stream: str) -> None:
    rs, es = rsa_key("rs"), ec_key("es")
    secret = b"a-shared-secret-of-at-least-32-bytes!!"
    oct_jwk = {"kty": "oct", "kid": "sym", "k": jwt.utils.base64url_encode(secret).decode()}
    encryption = rsa_key("enc")
    key_server.keys = [rs.jwk(), es.jwk(), oct_jwk, encryption.jwk(use="enc"),
                       {"kty": "RSA", "kid": "broken", "n": "x"}]
    server = await start_server(jwks_url=key_server.url, jwks_min_refresh=3600)
    await eventually(lambda: _ready(server))
    assert (await readyz(server))[1]["jwks"]["keys"] == 2
    path = f"/streams/{stream}/events"
    claims = {"exp": int(time.time()) + 300, "sse_stream": {"subscribe": [stream]}}
    refused = {
        # An HS256 token signed with the oct key of the set, or with the RSA
        # public key's PEM as the secret: no symmetric key is ever used.
        "hs256 oct": jwt.encode(claims, secret, algorithm="HS256", headers={"kid": "sym"}),
        "alg none": handmade({"alg": "none", "kid": "rs"}, claims, None),
        "hs256 as rs": handmade({"alg": "HS256", "kid": "rs"}, claims, SECRET.encode()),
        # The kid of an ES256 key, signed RS256: the key's algorithm counts.
        "rs256 with es kid": rs.sign([stream], kid="es"),
        "encryption key": encryption.sign([stream]),
        "kid not a string": handmade({"alg": "RS256", "kid": 5}, claims, None),
        "no kid, several keys": jwt.encode(claims, rs.private, algorithm="RS256"),
        "garbage": "not.a.token",
    }
    for name, value in refused.items():
        body = assert_problem(await request(server, "GET", path, headers=bearer(value)), 401,
                              "Authorization")
        assert "token" in body["detail"], (name, body)
    for signer in (rs, es):
        assert (await request(server, "GET", path,
                              headers=bearer(signer.sign([stream]))))[0] == 200
    # With jwt_algorithm the set's keys of the other algorithm are left out.
    only_es = await start_server(jwks_url=key_server.url, jwt_algorithm="ES256")
    await eventually(lambda: _ready(only_es))
    assert (await request(only_es, "GET", path, headers=bearer(es.sign([stream]))))[0] == 200
    assert_problem(await request(only_es, "GET", path, headers=bearer(rs.sign([stream]))), 401,
                   "Authorization")
    # A set of one key verifies tokens without a kid.
    key_server.keys = [rs.jwk()]
    single = await start_server(jwks_url=key_server.url)
    await eventually(lambda: _ready(single))
    assert (await request(single, "GET", path,
                          headers=bearer(jwt.encode(claims, rs.private, algorithm="RS256"))))[0] \
        == 200


async def test_a_fetch_is_bounded_in_time_and_never_blocks_the_loop(
        key_server: KeyServer) -> None:
    key = rsa_key("slow")
    key_server.keys = [key.jwk()]
    key_server.hang = asyncio.Event()
    keys = KeySet(key_server.url, ("RS256",), refresh=3600, min_refresh=0, timeout=0.5)
    await keys.start()
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        # Meanwhile the loop runs: this task ticks while the fetch waits.
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticking = asyncio.ensure_future(ticker())
        assert await keys.find("slow") is None
        assert loop.time() - started < 2.0
        assert ticks > 10
        ticking.cancel()
        assert keys.status()["error"] == "timed out" and not keys.ready
        key_server.hang.set()
        key_server.hang = None
        assert await keys.find("slow") is not None
        assert keys.ready and keys.status()["stale"] is False
    finally:
        await keys.stop()


@pytest.mark.parametrize("settings", [
    {"jwks_url": "https://issuer.example/jwks", "jwt_secret": SECRET},
    {"jwks_url": "https://issuer.example/jwks", "jwt_public_key": "/nonexistent.pem"},
    {"jwks_url": "https://issuer.example/jwks", "jwt_algorithm": "HS256"},
    {"jwks_url": "https://issuer.example/jwks", "jwt_algorithm": "none"},
    {"jwks_url": "file:///etc/jwks.json"},
    {"jwks_url": "https://issuer.example/jwks", "jwks_refresh": 0},
])
def test_conflicting_configuration_is_refused_at_start(dsn: str,
                                                       settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        create_app(Settings(dsn=dsn, **settings))


def test_serve_refuses_a_jwks_url_with_a_secret(capsys: pytest.CaptureFixture[str]) -> None:
    # Before any database starts: no --dsn, and no embedded PostgreSQL either.
    assert cli.main(["serve", "--jwks-url", "https://issuer.example/jwks",
                     "--jwt-secret", SECRET]) == 2
    assert capsys.readouterr().err.strip() == (
        "sse-stream serve: configure one of jwt_secret (HS256), jwt_public_key or jwks_url "
        "(RS256/ES256), not jwt_secret and jwks_url")
