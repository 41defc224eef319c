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
    assert np.allclose(alone, results[5], atol=1e-5)  # a vector does not depend on its batch


@pytest.mark.asyncio(loop_scope="module")
async def test_the_onnx_backend_is_used_and_a_vector_does_not_depend_on_its_batch(encoder):
    assert encoder.backend is not None
    assert encoder.backend.startswith("onnx:"), "make venv exports the ONNX model; the encoder takes it"
    texts = ["short", "a much longer sentence that pads every other text in the batch " * 4, "routing"]
    together = await encoder.encode(texts)
    for i, text in enumerate(texts):
        alone = await encoder.encode([text])
        assert float(alone[0] @ together[i]) > 0.99999


def test_the_onnx_vectors_match_the_float_model():
    """The ONNX model against sentence-transformers on the same weights (loads torch once)."""
    from services.kernel.encoder import load_backend

    texts = ["How do I reset my password?", "Write a haiku about the sea.", "Solve 3x + 5 = 20."]
    _, onnx_model = load_backend("onnx")
    _, torch_model = load_backend("torch", threads=1)
    cosines = (onnx_model.embed(texts) * torch_model.embed(texts)).sum(axis=1)
    assert cosines.min() > 0.9999


def test_asking_for_onnx_without_the_exported_file_is_a_clear_error(tmp_path):
    from services.kernel.encoder import load_backend

    with pytest.raises(FileNotFoundError, match="make venv"):
        load_backend("onnx", onnx_path=tmp_path / "missing.onnx")


async def test_a_shared_encoder_stays_open_until_its_last_user_closes():
    enc = Encoder()
    await enc.start()
    await enc.start()  # a second service sharing it
    await enc.wait_ready()
    await enc.aclose()
    vectors = await enc.encode(["still usable by the other user"])
    assert vectors.shape == (1, DIMENSIONS)
    await enc.aclose()
    with pytest.raises(RuntimeError):
        await enc.encode(["closed now"])
