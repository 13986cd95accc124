"""Access control against a running server and the real PostgreSQL: tokens,
containment, protected mode, forwarding headers and Host, anonymous patterns,
token expiry, the token command."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from multidict import CIMultiDict
from sse import envelope, open_stream
from support import (
    SECRET,
    StartServer,
    assert_problem,
    assert_raw_problem,
    b64url,
    client,
    count,
    handmade,
    publish,
    raw_request,
    request,
    signed,
    token,
)

from sse_stream.cli import main as cli


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Any]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    found: dict[str, Any] = {"rsa": rsa_key, "ec": ec_key}
    for name, key in (("rsa", rsa_key), ("ec", ec_key)):
        pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        path = tmp_path / f"{name}.pem"
        path.write_bytes(pem)
        found[f"{name}_path"] = str(path)
        found[f"{name}_pem"] = pem
    return found


# -- tokens -------------------------------------------------------------------


async def test_token_in_each_of_the_three_places(start_server: StartServer,
                                                 db: asyncpg.Connection, stream: str) -> None:
    server = await start_server(jwt_secret=SECRET)
    good = token([stream])
    ways: list[dict[str, Any]] = [
        {"headers": {"Authorization": f"Bearer {good}"}},
        {"query": f"?access_token={good}"},
        {"cookies": {"sse_stream_token": good}},
    ]
    for way in ways:
        async with client() as session:
            if "cookies" in way:
                session.cookie_jar.update_cookies(way["cookies"], server.make_url("/"))
            url = str(server.make_url(f"/streams/{stream}")) + way.get("query", "")
            async with open_stream(url, headers=way.get("headers"), session=session) as sse:
                await sse.until(lambda parser: parser.last_event_id != "")
                event_id = await publish(db, stream, "t", {"way": str(way)[:20]})
                assert envelope(await sse.next())["id"] == event_id
    # Pages take the token the same three ways.
    for way in ways:
        path = f"/streams/{stream}/events" + way.get("query", "")
        code, _, body = await request(server, "GET", path, headers=way.get("headers"),
                                      cookies=way.get("cookies"))
        assert code == 200 and len(body["events"]) == 3


async def test_the_header_wins_over_the_query_and_the_cookie(start_server: StartServer,
                                                             stream: str) -> None:
    server = await start_server(jwt_secret=SECRET, token_cookie="auth")
    good, bad = token([stream]), token([stream], key="another-secret-of-at-least-32-bytes")
    path = f"/streams/{stream}/events"
    assert_problem(await request(server, "GET", f"{path}?access_token={good}",
                                 headers={"Authorization": f"Bearer {bad}"}), 401, "Authorization")
    assert_problem(await request(server, "GET", f"{path}?access_token={bad}",
                                 cookies={"auth": good}), 401, "access_token")
    assert (await request(server, "GET", path, cookies={"auth": good}))[0] == 200
    # The default cookie name is not read when another is configured.
    assert_problem(await request(server, "GET", path, cookies={"sse_stream_token": good}),
                   401, "Authorization")


async def test_bad_tokens_are_refused_with_401(start_server: StartServer, stream: str) -> None:
    server = await start_server(jwt_secret=SECRET)
    path = f"/streams/{stream}"
    now = int(time.time())
    claims = {"exp": now + 300, "sse_stream": {"subscribe": [stream]}}
    cases = {
        "wrong secret": token([stream], key="not-the-secret-but-also-32-bytes-long"),
        "expired": token([stream], ttl=-60),  # beyond the 10 s leeway
        "not yet valid": token([stream], nbf=now + 120),
        "alg none": handmade({"alg": "none", "typ": "JWT"}, claims, None),
        "alg none, secret-signed": handmade({"alg": "none"}, claims, SECRET.encode()),
        "garbage": "not.a.token",
        "not a JWT at all": "x" * 40,
    }
    details = {}
    for name, value in cases.items():
        for where in ("header", "query"):
            if where == "header":
                result = await request(server, "GET", path,
                                       headers={"Authorization": f"Bearer {value}"})
                body = assert_problem(result, 401, "Authorization")
                assert result[1]["WWW-Authenticate"] == "Bearer"
            else:
                body = assert_problem(await request(server, "GET", f"{path}?access_token={value}"),
                                      401, "access_token")
            details[name] = body["detail"]
    assert "expired" in details["expired"]
    assert "nbf" in details["not yet valid"]
    # No token at all, and a header that is not a bearer token.
    assert_problem(await request(server, "GET", path), 401, "Authorization")
    assert_problem(await request(server, "GET", path, headers={"Authorization": "Basic eDp5"}),
                   401, "Authorization")


async def test_malformed_tokens_are_401_never_500(start_server: StartServer,
                                                  stream: str) -> None:
    server = await start_server(jwt_secret=SECRET)
    path = f"/streams/{stream}/events"
    exp = int(time.time()) + 300
    header = b'{"alg":"HS256","typ":"JWT"}'
    claims = b'{"exp":%d,"sse_stream":{"subscribe":["%s"]}}' % (exp, stream.encode())
    deep = b"[" * 2000 + b"]" * 2000  # deeper than Python's recursion limit, within a header

    def unsigned(head: bytes, body: bytes = claims) -> str:
        return f"{b64url(head)}.{b64url(body)}.{b64url(b'signature')}"

    cases = {
        "bad base64": "a!b.c$d.e%f",
        "one dot": "abc.def",
        "empty segments": "..",
        "header not JSON": unsigned(b"{not json"),
        "header not UTF-8": unsigned(b'{"alg":"\xff\xfe"}'),
        "header an array": unsigned(b"[1,2]"),
        "header a string": unsigned(b'"HS256"'),
        "header too deep": unsigned(b'{"alg":' + deep + b"}"),
        "alg a list": unsigned(b'{"alg":["HS256"]}'),
        "alg an object": unsigned(b'{"alg":{"HS256":1}}'),
        "alg null": unsigned(b'{"alg":null}'),
        "kid a number": unsigned(b'{"alg":"HS256","kid":5}'),
        "crit junk": unsigned(b'{"alg":"HS256","crit":[1]}'),
        # Signed with the right secret: only the claims are wrong.
        "claims not UTF-8": signed(header, b"\xff\xfe"),
        "claims not JSON": signed(header, b"{"),
        "claims an array": signed(header, b"[1]"),
        "claims too deep": signed(header, b'{"exp":%d,"x":%s}' % (exp, deep)),
        "exp a string": signed(header, b'{"exp":"tomorrow"}'),
        "exp Infinity": signed(header, b'{"exp":Infinity}'),
        "exp NaN": signed(header, b'{"exp":NaN}'),
        "sub a number": signed(header, b'{"exp":%d,"sub":5}' % exp),
        "claim a list": signed(header, b'{"exp":%d,"sse_stream":[1]}' % exp),
        "patterns a string": signed(header, b'{"exp":%d,"sse_stream":{"subscribe":"x"}}' % exp),
        "bad pattern": signed(header, b'{"exp":%d,"sse_stream":{"subscribe":["a.>.b"]}}' % exp),
    }
    for name, value in cases.items():
        for where in ("Authorization", "access_token"):
            if where == "Authorization":
                result = await request(server, "GET", path,
                                       headers={"Authorization": f"Bearer {value}"})
            else:
                result = await request(server, "GET", f"{path}?access_token={quote(value)}")
            assert result[0] == 401, (name, where, result)
            assert_problem(result, 401, where)
    # A signed exp beyond any date is a token that does not end: still no 500.
    endless = signed(header, b'{"exp":1%s,"sse_stream":{"subscribe":["%s"]}}'
                    % (b"0" * 400, stream.encode()))
    assert (await request(server, "GET", path,
                          headers={"Authorization": f"Bearer {endless}"}))[0] == 200


async def test_tokens_that_are_not_ascii_are_401(start_server: StartServer, stream: str) -> None:
    """Bytes that are not UTF-8 and characters that are not ASCII, in each place a token
    may come from, written on a raw socket (a client library would refuse to send them)."""
    server = await start_server(jwt_secret=SECRET)
    path = f"/streams/{stream}/events"
    good = token([stream]).encode()
    cases = [
        ([b"Authorization: Bearer \xff\xfe." + good], path, "Authorization"),
        ([b"Authorization: Bearer " + good + b"\xc3"], path, "Authorization"),
        ([b"Authorization: Bearer " + "\u00e9".encode() + good], path, "Authorization"),
        ([b"Authorization: B\xffarer " + good], path, "Authorization"),
        ([b"Cookie: sse_stream_token=\xff" + good], path, "sse_stream_token"),
        ([b"Cookie: sse_stream_token=" + "\u00e9".encode() + good], path, "sse_stream_token"),
        ([], f"{path}?access_token=%FF%FE{good.decode()}", "access_token"),
        ([], f"{path}?access_token=%C3%A9{good.decode()}", "access_token"),
    ]
    for lines, target, param in cases:
        assert_raw_problem(await raw_request(server, target, lines), 401, param)
    # The same request with the token intact is served.
    assert (await raw_request(server, path, [b"Authorization: Bearer " + good]))[0] == 200


async def test_exp_is_required_unless_allowed(start_server: StartServer, stream: str) -> None:
    path = f"/streams/{stream}/events"
    forever = {"Authorization": f"Bearer {token([stream], ttl=None)}"}
    strict = await start_server(jwt_secret=SECRET)
    body = assert_problem(await request(strict, "GET", path, headers=forever), 401,
                          "Authorization")
    assert "'exp'" in body["detail"]
    lenient = await start_server(jwt_secret=SECRET, allow_non_expiring_tokens=True)
    assert (await request(lenient, "GET", path, headers=forever))[0] == 200
    assert (await request(lenient, "GET", f"/streams/{stream}", headers=forever))[0] == 200
    # An exp that is present is still honoured.
    expired = {"Authorization": f"Bearer {token([stream], ttl=-60)}"}
    assert_problem(await request(lenient, "GET", path, headers=expired), 401, "Authorization")


async def test_audience_and_issuer_when_configured(start_server: StartServer,
                                                  stream: str) -> None:
    path = f"/streams/{stream}/events"
    aud, iss = "sse.example", "https://auth.example"
    server = await start_server(jwt_secret=SECRET, jwt_audience=aud, jwt_issuer=iss)

    def bearer(**claims: Any) -> dict[str, str]:
        # Signed by hand: PyJWT refuses to sign some of these claims.
        signed = handmade({"alg": "HS256", "typ": "JWT"},
                          {"exp": int(time.time()) + 300, "sse_stream": {"subscribe": [stream]},
                           **claims}, SECRET.encode())
        return {"Authorization": f"Bearer {signed}"}

    for good in ({"aud": aud, "iss": iss}, {"aud": ["other.example", aud], "iss": iss}):
        assert (await request(server, "GET", path, headers=bearer(**good)))[0] == 200
    refused = [({"iss": iss}, "aud"), ({"aud": "other.example", "iss": iss}, "aud"),
               ({"aud": 5, "iss": iss}, "aud"), ({"aud": aud}, "iss"),
               ({"aud": aud, "iss": "https://evil.example"}, "iss"),
               ({"aud": aud, "iss": ["https://auth.example"]}, "iss")]
    for claims, word in refused:
        body = assert_problem(await request(server, "GET", path, headers=bearer(**claims)), 401,
                              "Authorization")
        assert word in body["detail"], (claims, body)
    # Without the settings, iss is not checked, and a token made for some
    # audience is refused: this server is not it.
    plain = await start_server(jwt_secret=SECRET)
    assert (await request(plain, "GET", path, headers=bearer(iss="anyone")))[0] == 200
    assert_problem(await request(plain, "GET", path, headers=bearer(aud="other.example")), 401,
                   "Authorization")


def test_short_secrets_are_refused_at_start(dsn: str, tmp_path: Path) -> None:
    from sse_stream.core.settings import Settings
    from sse_stream.web.app import create_app

    for short in ("short", "x" * 31, "\u00e9" * 15):  # the last is 30 bytes of UTF-8
        with pytest.raises(ValueError, match="fewer than 32"):
            create_app(Settings(dsn=dsn, jwt_secret=short))
    create_app(Settings(dsn=dsn, jwt_secret="\u00e9" * 16))  # 32 bytes
    # serve says so in one line and exits 2 before it starts any database.
    data_dir = tmp_path / "pgdata"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SSE_STREAM_") and k != "DATABASE_URL"}
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-m", "sse_stream.cli", "serve", "--jwt-secret", "short",
         "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=60,
        env={**env, "PYTHONPATH": str(root)}, cwd=root)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "sse-stream serve: jwt_secret is 5 bytes, fewer than 32: use a random secret such as "
        "the output of 'openssl rand -hex 32'"]
    assert not data_dir.exists()


async def test_exp_within_the_leeway_is_still_accepted(start_server: StartServer,
                                                       stream: str) -> None:
    server = await start_server(jwt_secret=SECRET, jwt_leeway=30)
    headers = {"Authorization": f"Bearer {token([stream], ttl=-5)}"}
    assert (await request(server, "GET", f"/streams/{stream}/events", headers=headers))[0] == 200


async def test_rs256_and_es256_and_no_switching(start_server: StartServer, keys: dict[str, Any],
                                                stream: str) -> None:
    path = f"/streams/{stream}/events"
    rs = await start_server(jwt_public_key=keys["rsa_path"])
    rs_token = token([stream], key=keys["rsa"], algorithm="RS256")
    assert (await request(rs, "GET", path, headers={"Authorization": f"Bearer {rs_token}"}))[0] \
        == 200
    # HS/RS confusion: HS256 signed with the RSA public key (PEM) as the secret.
    claims = {"exp": int(time.time()) + 300, "sse_stream": {"subscribe": [stream]}}
    confused = handmade({"alg": "HS256", "typ": "JWT"}, claims, keys["rsa_pem"])
    assert_problem(await request(rs, "GET", path, headers={"Authorization": f"Bearer {confused}"}),
                   401, "Authorization")
    # An HS256 token with any secret, and an ES256 token, are refused when RS256 is configured.
    for other in (token([stream]), token([stream], key=keys["ec"], algorithm="ES256")):
        assert_problem(await request(rs, "GET", path, headers={"Authorization": f"Bearer {other}"}),
                       401, "Authorization")

    es = await start_server(jwt_public_key=keys["ec_path"], jwt_algorithm="ES256")
    es_token = token([stream], key=keys["ec"], algorithm="ES256")
    assert (await request(es, "GET", path, headers={"Authorization": f"Bearer {es_token}"}))[0] \
        == 200
    assert_problem(await request(es, "GET", path, headers={"Authorization": f"Bearer {rs_token}"}),
                   401, "Authorization")


def test_configuration_pins_one_algorithm(dsn: str, keys: dict[str, Any]) -> None:
    from sse_stream.core.settings import Settings
    from sse_stream.web.app import create_app

    for bad in ({"jwt_secret": SECRET, "jwt_public_key": keys["rsa_path"]},
                {"jwt_secret": SECRET, "jwt_algorithm": "RS256"},
                {"jwt_public_key": keys["rsa_path"], "jwt_algorithm": "HS256"},
                {"jwt_public_key": keys["rsa_path"], "jwt_algorithm": "none"}):
        with pytest.raises(ValueError):
            create_app(Settings(dsn=dsn, **bad))


# -- containment -----------------------------------------------------------------


async def test_subscribe_and_pages_need_every_pattern_contained(start_server: StartServer,
                                                                stream: str) -> None:
    server = await start_server(jwt_secret=SECRET)
    headers = {"Authorization": f"Bearer {token([f'{stream}.*', 'public'])}"}
    allowed = [f"{stream}.42", f"{stream}.*", f"public,{stream}.7", "public"]
    refused = [f"{stream}.>", ">", f"{stream}", f"{stream}.1.2", f"{stream}.1,other", "*",
               f"{stream}.*.x"]
    for streams in allowed:
        assert (await request(server, "GET", f"/streams/{streams}", headers=headers))[0] == 200
        assert (await request(server, "GET", f"/streams/{streams}/events",
                              headers=headers))[0] == 200
    for streams in refused:
        body = assert_problem(await request(server, "GET", f"/streams/{streams}", headers=headers),
                              403, "streams")
        assert "does not allow to subscribe" in body["detail"]
        assert_problem(await request(server, "GET", f"/streams/{streams}/events",
                                     headers=headers), 403, "streams")


async def test_publish_needs_a_publish_grant(start_server: StartServer, db: asyncpg.Connection,
                                             stream: str) -> None:
    server = await start_server(jwt_secret=SECRET)
    writer = {"Authorization": f"Bearer {token([], [f'{stream}.*'])}"}
    reader = {"Authorization": f"Bearer {token([f'{stream}.>'])}"}
    event = {"type": "t", "data": {"n": 1}}
    code, _, body = await request(server, "POST", f"/streams/{stream}.1/events", headers=writer,
                                  json=event)
    assert code == 201 and len(body["ids"]) == 1
    assert await count(db, f"{stream}.1") == 1
    for target, headers, status, param in ((f"{stream}.1.2", writer, 403, "stream"),
                                           (stream, writer, 403, "stream"),
                                           (f"{stream}.1", reader, 403, "stream"),
                                           (f"{stream}.1", {}, 401, "Authorization")):
        assert_problem(await request(server, "POST", f"/streams/{target}/events", headers=headers,
                                     json=event), status, param)
    assert await count(db, f"{stream}.1") == 1
    assert await count(db, f"{stream}.1.2") == 0 and await count(db, stream) == 0


async def test_a_cookie_does_not_authorize_publishing(start_server: StartServer,
                                                     db: asyncpg.Connection,
                                                     stream: str) -> None:
    server = await start_server(jwt_secret=SECRET)
    writer = token([stream], [stream])
    path = f"/streams/{stream}/events"
    event = {"type": "t", "data": 1}
    body = assert_problem(await request(server, "POST", path, cookies={"sse_stream_token": writer},
                                        json=event), 401, "sse_stream_token")
    assert "Authorization" in body["detail"]
    assert await count(db, stream) == 0
    # The cookie still reads; the same token in the header publishes.
    assert (await request(server, "GET", path, cookies={"sse_stream_token": writer}))[0] == 200
    assert (await request(server, "POST", path, headers={"Authorization": f"Bearer {writer}"},
                          cookies={"sse_stream_token": writer}, json=event))[0] == 201
    assert await count(db, stream) == 1


# -- protected mode and anonymous patterns ----------------------------------------------


async def test_protected_mode_loopback_vs_non_loopback(start_server: StartServer,
                                                       db: asyncpg.Connection,
                                                       stream: str) -> None:
    # The test client is on 127.0.0.1: declaring that address a trusted proxy
    # makes the server take the client's address from X-Forwarded-For, so one
    # loopback listener serves both a loopback and a non-loopback client
    # without contacting any other address.
    server = await start_server(trusted_proxies="127.0.0.1")
    outside = {"X-Forwarded-For": "203.0.113.9"}
    through_proxy = {"X-Forwarded-For": "203.0.113.9, 127.0.0.1"}  # the proxy chain's last hop
    inside = {"X-Forwarded-For": "::1"}
    event = {"type": "t", "data": 1}
    for headers in (outside, through_proxy):
        assert_problem(await request(server, "GET", f"/streams/{stream}", headers=headers),
                       403, "Authorization")
        assert_problem(await request(server, "GET", f"/streams/{stream}/events", headers=headers),
                       403, "Authorization")
        assert_problem(await request(server, "POST", f"/streams/{stream}/events", headers=headers,
                                     json=event), 403, "Authorization")
    assert await count(db, stream) == 0
    for headers in ({}, inside):
        assert (await request(server, "GET", f"/streams/{stream}", headers=headers))[0] == 200
        assert (await request(server, "POST", f"/streams/{stream}/events", headers=headers,
                              json=event))[0] == 201
    assert await count(db, stream) == 2
    assert_problem(await request(server, "GET", f"/streams/{stream}",
                                 headers={"X-Forwarded-For": "not-an-address"}),
                   400, "X-Forwarded-For")

    # Without the trusted-proxy setting the header is not believed, and protected
    # mode refuses it: it shows a proxy on this machine relaying other clients.
    plain = await start_server()
    assert_problem(await request(plain, "GET", f"/streams/{stream}/events", headers=outside),
                   403, "X-Forwarded-For")


async def test_protected_mode_refuses_forwarding_headers_from_untrusted_peers(
        start_server: StartServer, db: asyncpg.Connection, stream: str) -> None:
    server = await start_server(anonymous_subscribe=f"{stream}.public")
    event = {"type": "t", "data": 1}
    # Even headers that claim loopback: a tunnel or local proxy would send them.
    for name, value in (("X-Forwarded-For", "::1"), ("Forwarded", 'for="[::1]"'),
                        ("x-forwarded-for", "127.0.0.1, 127.0.0.1"), ("forwarded", "junk")):
        for method, path in (("GET", f"/streams/{stream}"), ("GET", f"/streams/{stream}/events"),
                             ("POST", f"/streams/{stream}/events")):
            body = assert_problem(await request(server, method, path, headers={name: value},
                                                json=event if method == "POST" else None),
                                  403, name.title())
            assert "trusted_proxies" in body["detail"]
        # Anonymous patterns and the operational routes are not protected-mode checks.
        assert (await request(server, "GET", f"/streams/{stream}.public",
                              headers={name: value}))[0] == 200
        assert (await request(server, "GET", "/healthz", headers={name: value}))[0] == 200
    assert await count(db, stream) == 0


async def test_every_forwarding_line_counts_and_forwarded_is_read(start_server: StartServer,
                                                                  db: asyncpg.Connection,
                                                                  stream: str) -> None:
    # As in the test above, 127.0.0.1 plays the trusted proxy.
    server = await start_server(trusted_proxies="127.0.0.1")
    path = f"/streams/{stream}/events"
    event = {"type": "t", "data": 1}
    XFF, FWD = "X-Forwarded-For", "Forwarded"
    loopback = [
        # A client may write anything on the left; the proxy's own line comes last.
        [(XFF, "203.0.113.9"), (XFF, "::1")],
        [(FWD, 'for="[::1]:4711";proto=https;by=127.0.0.1')],
        [(FWD, "for=203.0.113.9"), (FWD, 'For="[::1]"')],
        [(FWD, 'for=203.0.113.9, for="[::1]", for=127.0.0.1')],  # a trusted hop is skipped
        [(XFF, "::1"), (FWD, 'for="[0:0:0:0:0:0:0:1]"')],
    ]
    elsewhere = [
        # Reading only the first line took the client's own "::1" for the truth.
        [(XFF, "::1"), (XFF, "203.0.113.9")],
        [(XFF, "::1, 203.0.113.9:5000")],
        [(FWD, "for=203.0.113.9")],
        [(FWD, 'for="[::1]", for=203.0.113.9;proto=http')],
        [(FWD, 'for="[::1]"'), (FWD, 'for="[2001:db8::1]:443"')],
        # With both headers, both must name a loopback client.
        [(XFF, "::1"), (FWD, "for=203.0.113.9")],
        [(XFF, "203.0.113.9"), (FWD, 'for="[::1]"')],
    ]
    malformed = [[(FWD, "for")], [(FWD, "for=unknown")], [(FWD, 'for="[::1]", for=_hidden')],
                 [(FWD, "proto=https")], [(FWD, "for=1.2.3.4;for=::1")], [(FWD, 'for="[::1]')]]
    for lines in loopback:
        assert (await request(server, "GET", path, headers=CIMultiDict(lines)))[0] == 200, lines
        assert (await request(server, "POST", path, headers=CIMultiDict(lines),
                              json=event))[0] == 201, lines
    for lines in elsewhere:
        assert_problem(await request(server, "GET", path, headers=CIMultiDict(lines)),
                       403, "Authorization")
        assert_problem(await request(server, "POST", path, headers=CIMultiDict(lines),
                                     json=event), 403, "Authorization")
    for lines in malformed:
        assert_problem(await request(server, "GET", path, headers=CIMultiDict(lines)),
                       400, "Forwarded")
    assert await count(db, stream) == len(loopback)


async def test_protected_mode_needs_a_loopback_host(start_server: StartServer,
                                                   db: asyncpg.Connection, stream: str) -> None:
    """DNS rebinding: a page of evil.example, re-pointed at 127.0.0.1, reaches the
    server from the user's own browser, but its requests say Host: evil.example."""
    server = await start_server(anonymous_subscribe=f"{stream}.public")
    port = server.port
    path = f"/streams/{stream}/events"
    event = {"type": "t", "data": 1}
    for host in (f"evil.example:{port}", "evil.example", "localhost.evil.example",
                 f"192.0.2.1:{port}", "[2001:db8::1]", "0.0.0.0", "[::]"):
        for method, target in (("GET", f"/streams/{stream}"), ("GET", path), ("POST", path)):
            body = assert_problem(await request(server, method, target, headers={"Host": host},
                                                json=event if method == "POST" else None),
                                  403, "Host")
            assert "loopback" in body["detail"]
    assert_raw_problem(await raw_request(server, path, [], host=b""), 403, "Host")
    # An HTTP/1.0 request without Host names nothing to rebind (browsers always send one).
    assert (await raw_request(server, path, [], host=None))[0] == 200
    allowed = (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"app.localhost:{port}",
               "LOCALHOST", "127.1.2.3", f"[::1]:{port}")
    for host in allowed:
        assert (await request(server, "GET", path, headers={"Host": host}))[0] == 200, host
        assert (await request(server, "POST", path, headers={"Host": host},
                              json=event))[0] == 201, host
    assert await count(db, stream) == len(allowed)
    # Anonymous patterns, the operational routes and a server with a token key
    # do not look at Host.
    evil = {"Host": "evil.example"}
    assert (await request(server, "GET", f"/streams/{stream}.public", headers=evil))[0] == 200
    assert (await request(server, "GET", "/healthz", headers=evil))[0] == 200
    keyed = await start_server(jwt_secret=SECRET)
    assert (await request(keyed, "GET", path, headers={
        **evil, "Authorization": f"Bearer {token([stream])}"}))[0] == 200


async def test_anonymous_patterns_open_reading_only(start_server: StartServer,
                                                    db: asyncpg.Connection, stream: str) -> None:
    outside = {"X-Forwarded-For": "198.51.100.7"}
    event = {"type": "t", "data": 1}
    # Protected mode: anonymous patterns are open to non-loopback clients too.
    protected = await start_server(trusted_proxies="127.0.0.1",
                                   anonymous_subscribe=f"{stream}.public.*, news")
    for path in (f"/streams/{stream}.public.1", f"/streams/{stream}.public.*,news/events"):
        assert (await request(protected, "GET", path, headers=outside))[0] == 200
    for path in (f"/streams/{stream}.public.>", f"/streams/{stream}.public.1,{stream}/events"):
        assert_problem(await request(protected, "GET", path, headers=outside), 403,
                       "Authorization")
    assert_problem(await request(protected, "POST", f"/streams/{stream}.public.1/events",
                                 headers=outside, json=event), 403, "Authorization")

    # With tokens: no token needed for anonymous patterns; a token adds to them.
    server = await start_server(jwt_secret=SECRET, anonymous_subscribe=f"{stream}.public.*")
    assert (await request(server, "GET", f"/streams/{stream}.public.1"))[0] == 200
    assert_problem(await request(server, "GET", f"/streams/{stream}.private"), 401,
                   "Authorization")
    mixed = {"Authorization": f"Bearer {token([f'{stream}.private'])}"}
    assert (await request(server, "GET", f"/streams/{stream}.private,{stream}.public.2",
                          headers=mixed))[0] == 200
    assert_problem(await request(server, "POST", f"/streams/{stream}.public.1/events",
                                 json=event), 401, "Authorization")
    assert await count(db, f"{stream}.public.1") == 0


# -- token expiry ----------------------------------------------------------------------


async def test_expiring_token_warns_then_ends_and_a_fresh_token_resumes_without_gap(
        start_server: StartServer, db: asyncpg.Connection, stream: str) -> None:
    server = await start_server(jwt_secret=SECRET, heartbeat=0.2, token_expiry_margin=1.5,
                                jwt_leeway=0)
    ttl = 3.0
    short = token([stream], ttl=ttl)
    expires_at = jwt.decode(short, options={"verify_signature": False})["exp"]
    url = str(server.make_url(f"/streams/{stream}"))
    before: list[int] = []
    async with open_stream(url, headers={"Authorization": f"Bearer {short}"}) as sse:
        await sse.until(lambda parser: parser.last_event_id != "")
        before = [await publish(db, stream, "t", {"n": n}) for n in range(3)]
        received = await sse.take(3)
        warning = await sse.next(timeout=ttl + 2)
        assert time.time() >= expires_at - 1.5 - 0.5
        assert warning.event == "sse.token-expiring"
        data = orjson.loads(warning.data)
        # The warning names the last position delivered: the third event's.
        assert data["last_event_id"] == received[-1].last_event_id == sse.last_event_id
        assert data["expires_at"].endswith("Z")
        # Published between the warning and exp: still delivered on this stream.
        between = [await publish(db, stream, "t", {"n": n}) for n in range(3, 5)]
        rest = await sse.rest(timeout=ttl + 2)
        ended_at = time.time()
        last_id = sse.last_event_id
    assert expires_at - 0.1 <= ended_at <= expires_at + 1.5
    assert [envelope(m)["id"] for m in received] == before
    assert [envelope(m)["id"] for m in rest if m.data] == between
    after = [await publish(db, stream, "t", {"n": n}) for n in range(5, 8)]

    # Reconnect with a fresh token and the position: nothing missed, nothing twice.
    fresh = {"Authorization": f"Bearer {token([stream])}", "Last-Event-ID": last_id}
    async with open_stream(url, headers=fresh) as sse:
        resumed = await sse.take(3)
    assert [envelope(m)["id"] for m in resumed] == after

    # The browser pattern: reconnect at the warning with its last_event_id.
    browser = {"Authorization": f"Bearer {token([stream])}"}
    async with open_stream(f"{url}?last_event_id={data['last_event_id']}",
                           headers=browser) as sse:
        replay = await sse.take(5)
    assert [envelope(m)["id"] for m in replay] == between + after


async def test_a_stream_without_token_expiry_is_not_ended(start_server: StartServer,
                                                          stream: str) -> None:
    server = await start_server(heartbeat=0.1, token_expiry_margin=1000)
    async with open_stream(str(server.make_url(f"/streams/{stream}"))) as sse:
        await sse.until(lambda parser: parser.last_event_id != "")
        # Several heartbeat ticks: only keepalives, no control event, no end.
        with pytest.raises(TimeoutError):
            await sse.next(timeout=0.6)
        assert not sse.ended


# -- the token command -------------------------------------------------------------------


async def test_token_command_mints_a_working_token(start_server: StartServer,
                                                   db: asyncpg.Connection, stream: str,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SSE_STREAM_JWT_SECRET", SECRET)
    assert cli.main(["token", "--subscribe", f"users.{stream}", "--publish",
                     f"users.{stream},other", "--ttl", "15m", "--sub", stream]) == 0
    minted = capsys.readouterr().out.strip()
    claims = jwt.decode(minted, SECRET, algorithms=["HS256"])
    assert claims["sub"] == stream
    assert claims["sse_stream"] == {"subscribe": [f"users.{stream}"],
                                    "publish": [f"users.{stream}", "other"]}
    assert 899 <= claims["exp"] - time.time() <= 901
    server = await start_server(jwt_secret=SECRET)
    headers = {"Authorization": f"Bearer {minted}"}
    assert (await request(server, "POST", f"/streams/users.{stream}/events", headers=headers,
                          json={"type": "t", "data": 1}))[0] == 201
    code, _, body = await request(server, "GET", f"/streams/users.{stream}/events?access_token="
                                  f"{minted}")
    assert code == 200 and len(body["events"]) == 1
    assert_problem(await request(server, "GET", "/streams/users.someone-else/events",
                                 headers=headers), 403, "streams")
    # Audience and issuer: from the options, else from the server's own settings.
    audience = await start_server(jwt_secret=SECRET, jwt_audience="sse.example",
                                  jwt_issuer="https://auth.example")
    monkeypatch.setenv("SSE_STREAM_JWT_ISSUER", "https://auth.example")
    assert cli.main(["token", "--subscribe", stream, "--aud", "sse.example"]) == 0
    scoped = capsys.readouterr().out.strip()
    claims = jwt.decode(scoped, SECRET, algorithms=["HS256"], audience="sse.example")
    assert (claims["aud"], claims["iss"]) == ("sse.example", "https://auth.example")
    assert (await request(audience, "GET", f"/streams/{stream}/events",
                          headers={"Authorization": f"Bearer {scoped}"}))[0] == 200
    assert_problem(await request(audience, "GET", f"/streams/{stream}/events", headers=headers),
                   401, "Authorization")
    monkeypatch.delenv("SSE_STREAM_JWT_SECRET")
    assert cli.main(["token", "--subscribe", "x"]) == 2
    assert "needs the HS256 secret" in capsys.readouterr().err
    assert cli.main(["token", "--jwt-secret", SECRET, "--subscribe", "a.>.b"]) == 2
    assert cli.main(["token", "--jwt-secret", SECRET, "--ttl", "soon"]) == 2
    assert cli.main(["token", "--jwt-secret", "short", "--subscribe", "x"]) == 2
    assert "fewer than 32" in capsys.readouterr().err


def test_serve_says_which_mode_it_runs_in(dsn: str) -> None:
    from sse_stream.access.policy import AccessPolicy
    from sse_stream.core.settings import Settings

    assert AccessPolicy.from_settings(Settings(dsn=dsn)).describe().startswith("PROTECTED MODE")
    described = AccessPolicy.from_settings(Settings(dsn=dsn, jwt_secret=SECRET,
                                                    anonymous_subscribe="news.*")).describe()
    assert "PROTECTED" not in described and "HS256" in described and "news.*" in described
