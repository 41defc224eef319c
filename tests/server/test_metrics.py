"""Where /metrics is served, who may read it, and that rendering it leaves the event loop free."""

import contextlib
import gc
import threading
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from services.kernel.config import ServerConfig
from services.kernel.service import ServiceApp, build_app
from tests.server.harness import serving, small_app

KEY = "sk-metrics-test-key"


@contextlib.asynccontextmanager
async def nothing(app: Starlette) -> AsyncIterator[None]:
    yield


def app_with_mounted_helper() -> ServiceApp:
    """Like the embedded gateway: a service app with another mounted under a prefix."""
    app = small_app()
    helper = build_app("helper", routes=[], lifespan=nothing, process_metrics=False)
    app.mount("/helper", helper)
    return app


def test_with_a_metrics_port_the_public_port_has_no_metrics():
    with serving(app_with_mounted_helper(), metrics_port=True) as running:
        public = f"http://127.0.0.1:{running.port}"
        for path in ("/metrics", "/helper/metrics", "/%6detrics"):
            response = httpx.get(public + path, headers={"authorization": f"Bearer {KEY}"})
            assert response.status_code == 404, path
            assert response.json()["error"]["code"] == "not_found"
        assert httpx.get(f"{public}/hello").status_code == 200
        page = httpx.get(f"http://127.0.0.1:{running.metrics_port}/metrics")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/plain")
        assert "process_resident_memory_bytes" in page.text
        assert "gateway_server_connections " in page.text
        assert httpx.get(f"http://127.0.0.1:{running.metrics_port}/hello").status_code == 404


def test_without_a_metrics_port_the_public_metrics_need_the_key():
    with serving(app_with_mounted_helper(), metrics_key=KEY) as running:
        base = f"http://127.0.0.1:{running.port}"
        for path in ("/metrics", "/helper/metrics"):
            assert httpx.get(base + path).status_code == 401
            wrong = httpx.get(base + path, headers={"authorization": "Bearer sk-wrong-key-value"})
            assert wrong.status_code == 401
            assert wrong.json()["error"]["type"] == "invalid_request_error"
            good = httpx.get(base + path, headers={"authorization": f"Bearer {KEY}"})
            assert good.status_code == 200
            assert "gateway_server_timeouts_total" in good.text
        posted = httpx.post(f"{base}/metrics", headers={"authorization": f"Bearer {KEY}"})
        assert posted.status_code == 405


class Blocking(Collector):
    """A collector that holds its scrape until released, and notes the thread it ran on."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.thread: int | None = None
        self.gc_enabled: bool | None = None

    def collect(self):
        self.thread = threading.get_ident()
        self.gc_enabled = gc.isenabled()
        self.entered.set()
        assert self.release.wait(timeout=60)
        yield GaugeMetricFamily("test_blocking", "A slow page", 1)


@pytest.mark.parametrize("on_metrics_port", [True, False])
def test_rendering_the_page_does_not_hold_the_event_loop(on_metrics_port):
    blocking = Blocking()
    loop_thread: list[int] = []

    async def hello(request: Request) -> Response:
        loop_thread.append(threading.get_ident())
        return PlainTextResponse("hello")

    registry = CollectorRegistry()
    registry.register(blocking)
    app = build_app("test", routes=[Route("/hello", hello)], lifespan=nothing, registry=registry)
    with serving(app, ServerConfig(), metrics_port=on_metrics_port, metrics_key=KEY) as running:
        port = running.metrics_port if on_metrics_port else running.port
        scrape_status: list[int] = []

        def scrape() -> None:
            response = httpx.get(
                f"http://127.0.0.1:{port}/metrics", headers={"authorization": f"Bearer {KEY}"}, timeout=60
            )
            scrape_status.append(response.status_code)

        scraper = threading.Thread(target=scrape)
        scraper.start()
        try:
            assert blocking.entered.wait(timeout=30)
            # The page is half rendered; requests are still answered meanwhile.
            assert httpx.get(f"http://127.0.0.1:{running.port}/hello", timeout=30).status_code == 200
        finally:
            blocking.release.set()
            scraper.join(timeout=60)
        assert scrape_status == [200]
        assert blocking.thread != loop_thread[0]
        # Full collections stop every thread: none is set off while the page is built.
        assert blocking.gc_enabled is False
        assert gc.isenabled()
