"""The provider mocks, started once for the folder."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.providers.mocks import ProviderMocks, run_mocks


@pytest.fixture(scope="session")
def mocks() -> Iterator[ProviderMocks]:
    with run_mocks() as server:
        yield server
