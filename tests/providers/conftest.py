"""The provider mocks, started once for the folder."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.providers.mocks import ProviderMocks, run_mocks


@pytest.fixture(scope="session")
def mocks() -> Iterator[ProviderMocks]:
    with run_mocks() as server:
        yield server


@pytest.fixture(scope="session")
def gateway(tmp_path_factory, mocks):
    from tests.providers.gateway import start

    yield from start(tmp_path_factory.mktemp("providers-gateway"), mocks)
