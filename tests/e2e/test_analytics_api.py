"""The analytics API (mounted under /analytics in embedded mode) refuses bad input cleanly."""

import pytest

from tests.e2e.conftest import assert_openai_error


async def test_usage_api_needs_the_key(http):
    response = await http.get("/analytics/v1/usage/summary", headers={"authorization": ""})
    assert_openai_error(response, 401)
    response = await http.get(
        "/analytics/v1/usage/events", params={"request_id": "x"}, headers={"authorization": "Bearer wrong"}
    )
    assert_openai_error(response, 401)


@pytest.mark.parametrize("since", ["yesterday", "nan", "inf", "-1", ""])
async def test_summary_rejects_a_bad_since(http, since):
    response = await http.get("/analytics/v1/usage/summary", params={"since": since})
    assert_openai_error(response, 400, param="since")


async def test_summary_accepts_since_and_key_filters(http):
    response = await http.get("/analytics/v1/usage/summary", params={"since": "0", "key_id": "nobody"})
    assert response.status_code == 200
    assert response.json() == {"object": "list", "data": []}


@pytest.mark.parametrize("params", [{}, {"request_id": ""}, {"request_id": "r" * 129}])
async def test_events_needs_a_sane_request_id(http, params):
    response = await http.get("/analytics/v1/usage/events", params=params)
    assert_openai_error(response, 400, param="request_id")


async def test_usage_api_methods(http):
    assert_openai_error(await http.post("/analytics/v1/usage/summary"), 405)
