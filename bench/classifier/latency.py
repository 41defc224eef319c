"""Classifier latency and memory: `python -m bench.classifier.latency`.

- rule stage: p50 / p99 per prompt over the prompt set (held-out split, the hand-written
  set and MMLU questions), each prompt classified `--rounds` times;
- ML stage (embedding + heads, `method: model`) per prompt at concurrency 1 and 32, on
  one core (the process is pinned to CPU 0 and the encoder uses one thread): latency
  percentiles and throughput; at 32 the encoder's micro-batches serve many callers per
  forward pass. `--backends onnx,onnx-int8` compares encoder backends in one run, taking
  turns;
- memory: resident set size of the classifier service process once its model is loaded
  (`python -m services classifier`), for the int8, the float ONNX and the torch backend.

Nothing here is a test: the figures go to docs/classifier.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from services.classifier import corpus
from services.classifier.cascade import Cascade
from services.classifier.heads import Heads
from services.classifier.prompt import of_text
from services.classifier.rules import RuleClassifier
from services.kernel.encoder import Encoder, classifier_backend

ROOT = Path(__file__).resolve().parents[2]


def prompt_set(limit: int, seed: int = 0) -> list[str]:
    _, held_out = corpus.split(corpus.examples())
    texts = [e.text for e in held_out] + [e.text for e in corpus.holdout()]
    mmlu = [o.text for o in corpus.outcomes()]
    texts += random.Random(seed).sample(mmlu, min(len(mmlu), 500))
    random.Random(seed).shuffle(texts)
    return texts[:limit]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rule_stage(texts: list[str], rounds: int) -> None:
    rules = RuleClassifier.load()
    prompts = [of_text(t) for t in texts]
    for p in prompts[:200]:
        rules.classify(p)  # warm up
    times, cpu = [], []
    for _ in range(rounds):
        for p in prompts:
            started, started_cpu = time.perf_counter(), time.thread_time()
            rules.classify(p)
            cpu.append(time.thread_time() - started_cpu)
            times.append(time.perf_counter() - started)
    confident = sum(rules.classify(p).confidence >= rules.confidence for p in prompts) / len(prompts)
    # Each prompt's fastest round: what the rules cost it, without the other processes of a
    # shared machine (which inflate even CPU time: caches, the core's other thread).
    n = len(prompts)
    fastest = [min(cpu[i + r * n] for r in range(rounds)) for i in range(n)]
    print(
        f"rule stage: {len(times)} classifications; wall p50 {percentile(times, 0.5) * 1e3:.3f} ms, "
        f"p99 {percentile(times, 0.99) * 1e3:.3f} ms; CPU p50 {percentile(cpu, 0.5) * 1e3:.3f} ms, "
        f"p99 {percentile(cpu, 0.99) * 1e3:.3f} ms (each prompt's fastest of {rounds} rounds: "
        f"p50 {percentile(fastest, 0.5) * 1e3:.3f} ms, p99 {percentile(fastest, 0.99) * 1e3:.3f} ms); "
        f"rules decided {confident:.0%} of the prompts"
    )


def reference() -> None:
    """CPU time of a fixed loop, to compare this machine's speed with another's."""
    runs = []
    for _ in range(50):
        started = time.thread_time()
        sum(range(100_000))
        runs.append(time.thread_time() - started)
    print(f"reference: sum(range(100000)) takes {min(runs) * 1e3:.2f} ms CPU (min of 50)")


@dataclasses.dataclass
class Run:
    """One backend's figures in an interleaved ML-stage run."""

    backend: str
    cascade: Cascade
    encoder: Encoder
    latencies: list[float] = dataclasses.field(default_factory=list)
    short: list[float] = dataclasses.field(default_factory=list)  # ≤ 200 characters (~32 tokens)
    short_cpu: list[float] = dataclasses.field(default_factory=list)  # meaningful at concurrency 1
    elapsed: float = 0.0
    cpu: float = 0.0
    batches: int = 0


async def ml_stage(
    texts: list[str], concurrency: int, total: int, backends: list[str], heads: list[Path | None]
) -> None:
    """`total` prompts per backend at `concurrency`; the backends take turns by rounds of
    64 prompts, so a change of the machine's load falls on all of them alike. Each backend
    with its heads (`heads[i]`; None: the shipped ones), trained on its vectors."""
    runs = []
    rules = RuleClassifier.load()
    for backend, path in zip(backends, heads, strict=True):
        encoder = Encoder(threads=1, backend=classifier_backend(backend))  # type: ignore[arg-type]
        await encoder.start()
        await encoder.wait_ready()
        runs.append(Run(backend, Cascade(rules, Heads.load(path), encoder), encoder))
    prompts = [of_text(t) for t in texts]
    for run in runs:
        for p in prompts[:20]:
            await run.cascade.classify(p, "model")

    async def worker(run: Run, queue: list[int]) -> None:
        while queue:
            prompt = prompts[queue.pop() % len(prompts)]
            started, started_cpu = time.perf_counter(), time.process_time()
            await run.cascade.classify(prompt, "model")
            run.latencies.append(time.perf_counter() - started)
            if len(prompt.text) <= 200:
                run.short.append(run.latencies[-1])
                run.short_cpu.append(time.process_time() - started_cpu)

    for first in range(0, total, 64):
        for run in runs if (first // 64) % 2 == 0 else runs[::-1]:
            queue = list(range(first, min(total, first + 64)))[::-1]
            batches_before = run.encoder.batches
            started, started_cpu = time.perf_counter(), time.process_time()
            await asyncio.gather(*(worker(run, queue) for _ in range(concurrency)))
            run.elapsed += time.perf_counter() - started
            run.cpu += time.process_time() - started_cpu
            run.batches += run.encoder.batches - batches_before
    for run in runs:
        # On a shared machine the wall-clock figures include waiting for the core; CPU time
        # (the process's, all threads) is the work itself.
        cpu_note = f"CPU {run.cpu / total * 1e3:.2f} ms per prompt"
        if concurrency == 1:
            cpu_note += (
                f" (short ones: p50 {percentile(run.short_cpu, 0.5) * 1e3:.2f} ms, "
                f"p99 {percentile(run.short_cpu, 0.99) * 1e3:.2f} ms)"
            )
        print(
            f"ML stage, concurrency {concurrency:>2}: {total} prompts, {total / run.elapsed:7.1f} prompts/s, "
            f"latency p50 {percentile(run.latencies, 0.5) * 1e3:6.2f} ms, "
            f"p99 {percentile(run.latencies, 0.99) * 1e3:6.2f} ms, "
            f"{total / max(1, run.batches):.1f} prompts per micro-batch (backend {run.encoder.backend}); "
            f"the {len(run.short)} short ones (≤ 200 characters): "
            f"p50 {percentile(run.short, 0.5) * 1e3:.2f} ms, "
            f"p99 {percentile(run.short, 0.99) * 1e3:.2f} ms; {cpu_note}"
        )
    for run in runs:
        await run.encoder.aclose()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def service_memory(backend: str, heads: Path | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        env = dict(os.environ) | {
            "GATEWAY_CONFIG": str(ROOT / "gateway.yaml"),
            "GATEWAY_MASTER_KEY": "sk-bench-classifier",
            "GATEWAY_DATA_DIR": tmp,
            "GATEWAY__CLASSIFIER__ENCODER_BACKEND": backend,
        }
        if heads is not None:  # heads trained on this backend's vectors, else it is never ready
            env["GATEWAY__CLASSIFIER__HEADS_FILE"] = str(heads.resolve())
        proc = subprocess.Popen(
            [sys.executable, "-m", "services", "classifier", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            started = time.monotonic()
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
                ok = False
                while not ok and time.monotonic() - started < 60:
                    with contextlib.suppress(httpx.TransportError):
                        ok = http.get("/readyz").status_code == 200
                    time.sleep(0 if ok else 0.1)
                ready = f"ready in {time.monotonic() - started:.1f} s" if ok else "never ready (see /readyz)"
                for _ in range(50):
                    http.post(
                        "/v1/classify",
                        json={"messages": [{"role": "user", "content": "Why?"}], "method": "model"},
                    )
            print(f"classifier service, {backend} backend: {ready}, RSS {rss_kib(proc.pid) / 1024:.0f} MiB")
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ml-prompts", type=int, default=640)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument(
        "--backends",
        default="auto",
        help="encoder backends of the ML stage, comma-separated, interleaved (e.g. onnx,onnx-int8; "
        "default: the classifier's)",
    )
    parser.add_argument(
        "--heads",
        default="",
        help="heads files for --backends, comma-separated (empty: the shipped ones), e.g. the float "
        "model's before the int8 encoder: git show a5406e6:services/classifier/heads.npz > heads-float.npz",
    )
    parser.add_argument("--skip-rules", action="store_true", help="the ML stage only")
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})  # one core, as the target says
    texts = prompt_set(args.prompts)
    reference()
    if not args.skip_rules:
        rule_stage(texts, args.rounds)
    backends = args.backends.split(",")
    heads = [Path(h) if h else None for h in args.heads.split(",")] if args.heads else [None] * len(backends)
    for concurrency in (1, 32):
        asyncio.run(ml_stage(texts, concurrency, args.ml_prompts, backends, heads))
    if not args.no_memory:
        given = dict(zip(backends, heads, strict=True))
        for backend in ("onnx-int8", "onnx", "torch"):
            # torch computes the float ONNX model's vectors: the same heads fit both.
            service_memory(backend, given.get(backend, given.get("onnx") if backend == "torch" else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
