"""The shared encoder loads the packaged model offline and micro-batches concurrent callers."""

import asyncio

import numpy as np
import pytest
import pytest_asyncio

from services.kernel.encoder import DIMENSIONS, Encoder


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def encoder():
    enc = Encoder()
    await enc.start()
    await enc.wait_ready()
    yield enc
    await enc.aclose()


@pytest.mark.asyncio(loop_scope="module")
async def test_embeddings_are_unit_vectors_and_paraphrases_are_close(encoder):
    vectors = await encoder.encode(
        ["How do I reset my password?", "What is the way to change my password?", "The cat sat on the mat."]
    )
    assert vectors.shape == (3, DIMENSIONS)
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similar, different = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert similar > 0.6 > different


@pytest.mark.asyncio(loop_scope="module")
async def test_concurrent_callers_share_forward_passes(encoder):
    before = encoder.batches
    texts = [f"question number {i} about gateways" for i in range(32)]
    results = await asyncio.gather(*(encoder.encode([t]) for t in texts))
    assert [r.shape for r in results] == [(1, DIMENSIONS)] * 32
    assert encoder.batches - before < 32  # at least some callers were served together
    alone = await encoder.encode([texts[5]])
    assert np.allclose(alone, results[5], atol=1e-5)
