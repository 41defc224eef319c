"""Access tokens: every forgery and misuse is refused, by the verifier alone and by the
router and the auth service over HTTP with the service's real signing key."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

import httpx
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization

from services.auth.client import InvalidToken, TokenVerifier, UnknownKid
from services.auth.signing import generate
from services.kernel.config import JwtConfig
from tests.auth.conftest import PASSWORD, Stack

ISSUER, AUDIENCE = "llm-gateway", "llm-gateway"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user_1",
        "role": "member",
        "team": None,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not ...}


def unsigned(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    head = b64(orjson.dumps(header)) + "." + b64(orjson.dumps(payload))
    return head + "." + b64(signature)


def hs256(header: dict[str, Any], payload: dict[str, Any], secret: bytes) -> str:
    head = b64(orjson.dumps(header)) + "." + b64(orjson.dumps(payload))
    return head + "." + b64(hmac.new(secret, head.encode(), hashlib.sha256).digest())


def tamper(token: str, **changes: Any) -> str:
    """The same signature on a changed payload."""
    head, payload, signature = token.split(".")
    data = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data.update(changes)
    return f"{head}.{b64(orjson.dumps(data))}.{signature}"


def public_secrets(private: Any, jwk: dict[str, Any]) -> list[bytes]:
    """Everything an attacker might use as an HMAC secret: the public key in each form."""
    public = private.public_key()
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return [pem, der, orjson.dumps(jwk), (jwk.get("x") or jwk.get("n", "")).encode()]


def attacks(kid: str, private: Any, jwk: dict[str, Any], algorithm: str) -> dict[str, str]:
    """Name → a token that must be refused."""
    good = jwt.encode(claims(), private, algorithm=algorithm, headers={"kid": kid})
    stranger_kid, stranger, _ = generate(algorithm)
    out = {
        "tampered role": tamper(good, role="admin"),
        "tampered subject": tamper(good, sub="user_2"),
        "expired": jwt.encode(
            claims(exp=int(time.time()) - 3600), private, algorithm=algorithm, headers={"kid": kid}
        ),
        "not yet valid": jwt.encode(
            claims(nbf=int(time.time()) + 3600), private, algorithm=algorithm, headers={"kid": kid}
        ),
        "wrong issuer": jwt.encode(
            claims(iss="someone-else"), private, algorithm=algorithm, headers={"kid": kid}
        ),
        "wrong audience": jwt.encode(
            claims(aud="another-api"), private, algorithm=algorithm, headers={"kid": kid}
        ),
        "no expiry": jwt.encode(claims(exp=...), private, algorithm=algorithm, headers={"kid": kid}),
        "alg none": unsigned({"alg": "none", "typ": "JWT", "kid": kid}, claims()),
        "alg None": unsigned({"alg": "None", "kid": kid}, claims()),
        "signed by another key with the same kid": jwt.encode(
            claims(), stranger, algorithm=algorithm, headers={"kid": kid}
        ),
        "unknown kid": jwt.encode(claims(), stranger, algorithm=algorithm, headers={"kid": stranger_kid}),
        "no kid": jwt.encode(claims(), private, algorithm=algorithm),
        "bad role": jwt.encode(claims(role="root"), private, algorithm=algorithm, headers={"kid": kid}),
        "garbage": "eyJhbGciOiJFZERTQSJ9.not-base64!.x",
    }
    for i, secret in enumerate(public_secrets(private, jwk)):
        out[f"HS256 with the public key ({i})"] = hs256(
            {"alg": "HS256", "typ": "JWT", "kid": kid}, claims(), secret
        )
    return out


@pytest.mark.parametrize("algorithm", ["EdDSA", "RS256"])
def test_the_verifier_refuses_every_forgery(algorithm):
    kid, private, jwk = generate(algorithm)
    verifier = TokenVerifier(JwtConfig(algorithm=algorithm, clock_skew_s=30))
    # A symmetric key slipped into the set is never loaded.
    verifier.load({"keys": [jwk, {"kty": "oct", "kid": "sym", "k": b64(b"secret"), "alg": "HS256"}]})
    assert set(verifier.keys) == {kid}
    good = jwt.encode(claims(), private, algorithm=algorithm, headers={"kid": kid})
    assert verifier.verify(good)["sub"] == "user_1"
    refused = {}
    for name, token in attacks(kid, private, jwk, algorithm).items():
        with pytest.raises(InvalidToken) as err:
            verifier.verify(token)
        refused[name] = str(err.value)
        assert token not in str(err.value)
    assert refused["expired"] == "token expired"
    assert refused["not yet valid"] == "token not yet valid"
    assert refused["wrong issuer"] == "token issuer not accepted"
    assert refused["wrong audience"] == "token audience not accepted"
    assert refused["alg none"] == "token algorithm not accepted"
    assert refused["HS256 with the public key (0)"] == "token algorithm not accepted"
    with pytest.raises(UnknownKid):
        verifier.verify(attacks(kid, private, jwk, algorithm)["unknown kid"])


def test_a_token_of_the_other_asymmetric_algorithm_is_refused():
    kid, private, jwk = generate("RS256")
    verifier = TokenVerifier(JwtConfig(algorithm="EdDSA"))
    verifier.load({"keys": [jwk]})
    assert verifier.keys == {}  # an RSA key is not loaded when EdDSA is pinned
    token = jwt.encode(claims(), private, algorithm="RS256", headers={"kid": kid})
    with pytest.raises(InvalidToken, match="algorithm"):
        verifier.verify(token)


def test_the_clock_skew_is_tolerated_and_no_more():
    kid, private, jwk = generate("EdDSA")
    verifier = TokenVerifier(JwtConfig(clock_skew_s=30))
    verifier.load({"keys": [jwk]})
    now = int(time.time())
    within = jwt.encode(claims(exp=now - 10, nbf=now + 10), private, algorithm="EdDSA", headers={"kid": kid})
    assert verifier.verify(within)
    beyond = jwt.encode(claims(exp=now - 60), private, algorithm="EdDSA", headers={"kid": kid})
    with pytest.raises(InvalidToken, match="expired"):
        verifier.verify(beyond)


async def chat(http: httpx.AsyncClient, token: str, model: str = "mock-small") -> httpx.Response:
    return await http.post(
        "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        headers={"authorization": f"Bearer {token}"},
    )


async def test_the_router_and_the_auth_service_refuse_every_forgery(stack: Stack):
    team = await stack.api.team()
    user = await stack.api.user("member", team["id"], password=PASSWORD)
    token = await stack.api.login(user["email"])
    signer = stack.auth_app.state.admin.signer
    kid, private = await signer.current()
    # The JWKS also lists keys still valid from before a rotation (other runs on this database).
    [jwk] = [k for k in orjson.loads(await signer.jwks())["keys"] if k["kid"] == kid]
    async with httpx.AsyncClient(base_url=stack.router_url, timeout=10) as router:
        response = await chat(router, token)
        assert response.status_code == 200, response.text
        good = jwt.encode(
            claims(sub=user["id"], team=team["id"]), private, algorithm="EdDSA", headers={"kid": kid}
        )
        assert (await chat(router, good)).status_code == 200
        for name, forged in attacks(kid, private, jwk, "EdDSA").items():
            for base, path in ((router, None), (stack.api.http, "/v1/auth/me")):
                if path is None:
                    response = await chat(base, forged)
                else:
                    response = await base.get(path, headers={"authorization": f"Bearer {forged}"})
                assert response.status_code == 401, (name, response.text)
                error = response.json()["error"]
                assert error["code"] in ("invalid_token", "invalid_api_key"), (name, error)
                assert forged not in response.text
        # A token whose role no longer matches the user's is refused too.
        stale = jwt.encode(
            claims(sub=user["id"], team=team["id"], role="admin"),
            private,
            algorithm="EdDSA",
            headers={"kid": kid},
        )
        response = await chat(router, stale)
        assert response.status_code == 401
        assert "log in again" in response.json()["error"]["message"]


async def test_a_new_signing_key_is_fetched_once_and_a_disabled_user_is_refused(stack: Stack):
    team = await stack.api.team()
    user = await stack.api.user("member", team["id"], password=PASSWORD)
    async with httpx.AsyncClient(base_url=stack.router_url, timeout=10) as router:
        assert (await chat(router, await stack.api.login(user["email"]))).status_code == 200
        rotated = await stack.api.ok("POST", "/v1/signing-keys/rotate")
        token = await stack.api.login(user["email"])
        assert jwt.get_unverified_header(token)["kid"] == rotated["kid"]
        # The router holds the set from before the rotation: the unknown kid refreshes it.
        response = await chat(router, token)
        assert response.status_code == 200, response.text
        metrics = (await router.get("/metrics")).text
        assert 'gateway_auth_jwks_refreshes_total{outcome="ok"}' in metrics
        await stack.api.ok("PATCH", f"/v1/users/{user['id']}", json={"disabled": True})
        deadline = time.monotonic() + 5
        while (response := await chat(router, token)).status_code == 200 and time.monotonic() < deadline:
            pass
        assert response.status_code == 401
        assert "disabled" in response.json()["error"]["message"]
