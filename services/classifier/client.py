"""The only module of the classifier service that other services import."""

from __future__ import annotations

from services.kernel.client import ServiceClient


class ClassifierClient(ServiceClient):
    service = "classifier"
