"""The OpenAPI document against the real app: the same routes and methods, and the
answers the service really gives validate against the schemas it declares."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from starlette.routing import Route

from services.auth.api import document
from services.auth.app import create_app
from tests.auth.conftest import PASSWORD, Api, unique_name
from tests.conftest import MASTER_KEY, make_settings


def served_routes(tmp_path) -> set[tuple[str, str]]:
    app = create_app(make_settings(tmp_path), process_metrics=False)
    out = set()
    for route in app.routes:
        assert isinstance(route, Route)
        for method in route.methods or ():
            if method != "HEAD":
                out.add((method.lower(), route.path))
    return out


def test_the_document_lists_exactly_the_routes_the_app_serves(tmp_path):
    doc = document()
    documented = {(method, path) for path, item in doc["paths"].items() for method in item}
    assert documented == served_routes(tmp_path)
    assert doc["openapi"].startswith("3.1")
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))


class Checker:
    """Validates an answer against the schema the document declares for it."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        resource = Resource.from_contents(
            {"components": doc["components"]}, default_specification=DRAFT202012
        )
        self.registry = Registry().with_resource("urn:doc", resource)
        self.checked: set[tuple[str, str]] = set()

    def check(self, method: str, template: str, status: int, body: Any) -> None:
        operation = self.doc["paths"][template][method.lower()]
        key = str(status) if str(status) in operation["responses"] else f"{str(status)[0]}XX"
        schema = operation["responses"][key]["content"]["application/json"]["schema"]
        schema = _rebase(schema)
        jsonschema.Draft202012Validator(schema, registry=self.registry).validate(body)
        self.checked.add((method.lower(), template))


def _rebase(schema: Any) -> Any:
    """Point `#/components/...` references at the registered document."""
    if isinstance(schema, dict):
        return {
            k: ("urn:doc" + v if k == "$ref" and v.startswith("#/") else _rebase(v))
            for k, v in schema.items()
        }
    if isinstance(schema, list):
        return [_rebase(v) for v in schema]
    return schema


async def test_real_answers_match_the_declared_schemas(auth_api: Api):
    api = auth_api
    doc = (await api.call("GET", "/openapi.json", token=None)).json()
    checker = Checker(doc)

    async def call(method: str, template: str, path: str, json: Any = None, token: str | None = None) -> Any:
        kwargs = {} if token is None else {"token": token}
        response = await api.call(method, path, json=json, **kwargs)
        assert response.status_code < 500, response.text
        checker.check(method, template, response.status_code, response.json())
        return response.json()

    team = await call(
        "POST",
        "/v1/teams",
        "/v1/teams",
        {"name": unique_name("t"), "budget": {"amount": 5}, "regions": ["eu-west"]},
    )
    await call("GET", "/v1/teams", "/v1/teams")
    await call("GET", "/v1/teams/{team_id}", f"/v1/teams/{team['id']}")
    await call("PATCH", "/v1/teams/{team_id}", f"/v1/teams/{team['id']}", {"models": ["small"], "tpm": 1000})
    body = {"email": f"{unique_name('u')}@example.test", "team_id": team["id"], "password": PASSWORD}
    user = await call("POST", "/v1/users", "/v1/users", body)
    await call("GET", "/v1/users", "/v1/users")
    await call("GET", "/v1/users/{user_id}", f"/v1/users/{user['id']}")
    await call("PATCH", "/v1/users/{user_id}", f"/v1/users/{user['id']}", {"name": "N"})
    token = (
        await call("POST", "/v1/auth/login", "/v1/auth/login", {"email": user["email"], "password": PASSWORD})
    )["access_token"]
    await call("GET", "/v1/auth/me", "/v1/auth/me", token=token)
    key = await call(
        "POST", "/v1/keys", "/v1/keys", {"user_id": user["id"], "budget": {"amount": 1, "period": "day"}}
    )
    await call("GET", "/v1/keys", "/v1/keys")
    await call("GET", "/v1/keys/{key_id}", f"/v1/keys/{key['id']}")
    await call(
        "PATCH",
        "/v1/keys/{key_id}",
        f"/v1/keys/{key['id']}",
        {"rpm": 3, "expires_at": 4102444800, "regions": ["eu-west", "us-east"]},
    )
    await call("POST", "/v1/keys/{key_id}/rotate", f"/v1/keys/{key['id']}/rotate", {"overlap_s": 5})
    await call("POST", "/v1/keys/{key_id}/revoke", f"/v1/keys/{key['id']}/revoke")
    await call("GET", "/v1/signing-keys", "/v1/signing-keys")
    await call("POST", "/v1/signing-keys/rotate", "/v1/signing-keys/rotate")
    await call("GET", "/v1/audit", "/v1/audit?limit=3")
    await call("DELETE", "/v1/users/{user_id}", f"/v1/users/{user['id']}")
    await call("POST", "/v1/internal/introspect", "/v1/internal/introspect", {"entry": f"u:{user['id']}"})
    await call("GET", "/.well-known/jwks.json", "/.well-known/jwks.json")
    await call("GET", "/openapi.json", "/openapi.json")
    # Errors have the declared error shape too.
    await call("POST", "/v1/teams", "/v1/teams", {"name": "x", "colour": "blue"})
    await call("GET", "/v1/keys/{key_id}", "/v1/keys/key_missing")
    documented = {
        (m, p) for p, item in doc["paths"].items() for m in item if not p.endswith("z") and p != "/metrics"
    }
    assert documented <= checker.checked


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/teams", {"name": "x", "colour": "blue"}, "colour"),
        ("/v1/teams", {"name": ""}, "name"),
        ("/v1/teams", {"name": "x", "rpm": 0}, "rpm"),
        ("/v1/teams", {"name": "x", "budget": {"amount": -1}}, "budget.amount"),
        ("/v1/teams", {"name": "x", "budget": {"amount": 1, "period": "fortnight"}}, "budget.period"),
        ("/v1/teams", {"name": "x", "models": ["no-such-model"]}, "models[0]"),
        ("/v1/teams", {"name": "x", "metadata": {"k": "v" * 20_000}}, "metadata"),
        ("/v1/users", {"email": "not-an-email"}, "email"),
        ("/v1/users", {"email": "a@b.test", "role": "root"}, "role"),
        ("/v1/users", {"email": "a@b.test", "password": "short"}, "password"),
        ("/v1/users", {"email": "a@b.test", "role": "team_admin"}, "team_id"),
        ("/v1/keys", {"expires_at": -5}, "expires_at"),
        ("/v1/keys", {"regions": []}, "regions"),
        ("/v1/keys", {"regions": ["EU West"]}, "regions.0"),
        ("/v1/keys", {"user_id": "user_missing"}, "user_id"),
    ],
)
async def test_bad_bodies_get_a_400_naming_the_field(auth_api: Api, path, body, param):
    response = await auth_api.call("POST", path, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


async def test_bodies_are_bounded_and_must_be_objects(auth_api: Api):
    big = b'{"name": "' + b"x" * 70_000 + b'"}'
    response = await auth_api.http.post("/v1/teams", content=big, headers=_master())
    assert response.status_code == 413
    for raw in (b"[1]", b"{", b"null"):
        response = await auth_api.http.post("/v1/teams", content=raw, headers=_master())
        assert response.status_code == 400, raw


def _master() -> dict[str, str]:
    return {"authorization": f"Bearer {MASTER_KEY}"}
