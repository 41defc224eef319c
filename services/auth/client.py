"""The only module of the auth service that other services import."""

from __future__ import annotations

from services.kernel.client import ServiceClient


class AuthClient(ServiceClient):
    service = "auth"
