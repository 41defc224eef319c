"""The classifier's static int8 encoder: built by `make venv`, loaded offline, its vectors
close to those of the float model it quantises (the first 4 layers) and independent of
the texts batched with them."""

import os

import numpy as np
import pytest

from services.classifier import corpus
from services.classifier.prompt import of_text
from services.kernel import encoder_int8
from services.kernel.encoder import Encoder, classifier_backend, load_backend
from tests.conftest import MOCK_ONLY, make_settings

HELD_OUT = [of_text(e.text).text for e in corpus.split(corpus.examples())[1][::10]]


@pytest.fixture(scope="module")
def models():
    """The int8 model and its float reference (sentence-transformers on the same layers)."""
    _, int8 = load_backend("onnx-int8")
    return int8, encoder_int8.float_reference()


def test_make_venv_built_it_and_the_classifier_takes_it_by_default():
    assert encoder_int8.default_path().exists(), "make venv quantises the encoder"
    assert classifier_backend("auto") == "onnx-int8"
    assert classifier_backend("onnx") == "onnx"  # an explicit choice is kept


def test_it_loads_offline_without_torch(models):
    int8, _ = models
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    assert int8.embed(["warm up"]).shape == (1, 384)


def test_vectors_are_unit_and_close_to_the_float_model(models):
    int8, float32 = models
    quantised, reference = int8.embed(HELD_OUT), float32.embed(HELD_OUT)
    assert quantised.dtype == np.float32
    assert np.allclose(np.linalg.norm(quantised, axis=1), 1.0, atol=1e-5)
    cosines = (quantised * reference).sum(axis=1)
    assert cosines.min() > 0.97, cosines.min()
    assert cosines.mean() > 0.985, cosines.mean()
    # Not the float vectors under another name.
    assert cosines.mean() < 0.9999
    # Nor the six-layer model's: a shallower one, whose vectors differ.
    _, six_layers = load_backend("onnx")
    assert (quantised * six_layers.embed(HELD_OUT)).sum(axis=1).mean() < 0.95


def test_a_vector_does_not_depend_on_its_batch(models):
    int8, _ = models
    long = "a much longer sentence that pads every other text in the batch and widens its ranges " * 6
    texts = ["short", long, "routing", *HELD_OUT[:29]]
    together = int8.embed(texts)
    alone = np.vstack([int8.embed([t]) for t in texts])
    assert (together * alone).sum(axis=1).min() > 0.99999
    shuffled = list(reversed(texts))
    assert np.allclose(int8.embed(shuffled)[::-1], together, atol=1e-5)


def test_a_missing_int8_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="make venv"):
        load_backend("onnx-int8", onnx_path=tmp_path / "missing.onnx")


def test_the_embedded_gateway_gives_the_cache_the_float_model(tmp_path):
    from services.gateway import encoders

    classifier, cache = encoders(make_settings(tmp_path))
    assert classifier is not cache
    assert classifier.requested_backend == "onnx-int8"
    assert cache.requested_backend == "auto"  # the float model (onnx, else torch)
    float_only = make_settings(tmp_path, MOCK_ONLY + "classifier:\n  encoder_backend: onnx\n")
    one, other = encoders(float_only)
    assert one is other


async def test_the_classifier_service_embeds_with_it():
    encoder = Encoder(backend=classifier_backend())
    await encoder.start()
    try:
        await encoder.wait_ready()
        assert encoder.backend == f"onnx:{encoder_int8.FILE_NAME}"
    finally:
        await encoder.aclose()
