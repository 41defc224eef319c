import pytest

from services.kernel.config import Price
from services.kernel.pricing import cost_of


def test_unknown_price_is_unknown_not_free():
    assert cost_of(None, 1000, 1000) is None


def test_cost_per_million_tokens():
    price = Price(input=2.5, output=10.0)
    assert cost_of(price, 1_000_000, 0) == pytest.approx(2.5)
    assert cost_of(price, 200, 100) == pytest.approx((200 * 2.5 + 100 * 10.0) / 1e6)


def test_cached_prompt_tokens_use_the_cached_price():
    price = Price(input=2.0, output=8.0, cached_input=0.5)
    assert cost_of(price, 1000, 0, cached_tokens=400) == pytest.approx((600 * 2.0 + 400 * 0.5) / 1e6)
    # more cached than prompt tokens (a provider's rounding) never makes a negative charge
    assert cost_of(price, 10, 0, cached_tokens=50) == pytest.approx(10 * 0.5 / 1e6)
