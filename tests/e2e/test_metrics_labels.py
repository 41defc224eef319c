"""No client input creates a metric series."""

from __future__ import annotations

import uuid

from tests.e2e.conftest import user


def series(text: str) -> set[str]:
    return {line.rsplit(" ", 1)[0] for line in text.splitlines() if line and not line.startswith("#")}


async def test_unknown_model_names_do_not_become_label_values(http):
    names = [f"no-such-model-{uuid.uuid4().hex}" for _ in range(200)]
    names += ["x" * 256, "ünïcödé-model", 'quote"model', "new\\nline"]
    # Warm the fixed series the 404s are counted under, then measure what more requests add.
    await http.post("/v1/chat/completions", json={"model": "warm-up-unknown", "messages": user("hi")})
    await http.post("/v1/embeddings", json={"model": "warm-up-unknown", "input": "hi"})
    await http.get("/metrics")  # a scrape is counted under route="/metrics" once it is answered
    before = series((await http.get("/metrics")).text)
    for i, name in enumerate(names):
        path, body = (
            ("/v1/chat/completions", {"model": name, "messages": user("hi")})
            if i % 2
            else ("/v1/embeddings", {"model": name, "input": "hi"})
        )
        response = await http.post(path, json=body)
        assert response.status_code == 404
    page = (await http.get("/metrics")).text
    after = series(page)
    assert not any(name[:40] in page for name in names)
    # Request counters and latency histograms move; no series appears.
    new = {s for s in after - before if not s.startswith(("process_", "python_"))}
    assert new == set(), sorted(new)[:10]
