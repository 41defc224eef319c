"""A cross-encoder as the cache verifier's second check: the experiment, evaluated and rejected.

    PYTHONPATH=. python bench/cache/cross_encoder.py train [--subset 3000 --epochs 1 ...]
    PYTHONPATH=. python bench/cache/cross_encoder.py latency

The packaged all-MiniLM-L6-v2 reads both prompts as one input (`[CLS] a [SEP] b [SEP]`) and
a linear head over the mean of its last hidden states gives P(same question). No pretrained
cross-encoder weights are available offline, so it is fine-tuned here from the sentence
encoder's weights, torch on the CPU, the embeddings and lower layers frozen
(`--train-layers` top layers and the head change: ~11 MB in float16 for 3 layers).

`train` learns from STS-B train + MRPC train (exclude.json rows skipped) less a fixed 20%
slice of them, chooses the cosine floor and the threshold on that slice as
services/cache/calibrate.py chooses the other modes' (the lowest threshold whose false-hit
rates stay within 75% of the targets), then reports hit / false / close-false on the slice,
MRPC dev and bench/cache/questions.jsonl (neither trained on nor used to choose) for plain
cosine, today's default and the cross-encoder, plus each score's ROC AUC.

`latency` exports the model to ONNX (base weights: the cost does not depend on what was
learned) and times `Verifier.check` per candidate on one core, one thread, against the
learned check. The figures and the decision are in docs/cache.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from services.cache.calibrate import FLOORS, Scored, embed, lowest_safe, rates, score
from services.cache.evaluate import QUESTIONS
from services.cache.pairs import Pair, PairsMissing, data_dir, dev_pairs, load_file, training_pairs
from services.cache.verifier import WEIGHTS, Model, build, parse
from services.kernel.encoder import model_path

LAYERS = 6
HOLDOUT = 0.2
SPLIT_SEED = 13


def split(
    pairs: list[Pair], holdout: float = HOLDOUT, seed: int = SPLIT_SEED
) -> tuple[list[Pair], list[Pair]]:
    """(training part, held-out slice): a fixed draw, stratified by label."""
    rng = np.random.default_rng(seed)
    train: list[Pair] = []
    held: list[Pair] = []
    for label in (True, False):
        group = [p for p in pairs if p.same == label]
        order = rng.permutation(len(group))
        cut = round(len(group) * holdout)
        held += [group[i] for i in order[:cut]]
        train += [group[i] for i in order[cut:]]
    return train, held


def tokenizer(max_tokens: int) -> Any:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(model_path()) / "tokenizer.json"))
    tok.enable_truncation(max_tokens, strategy="longest_first")
    tok.no_padding()
    return tok


def batch_arrays(tok: Any, pairs: Sequence[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input ids, attention mask, token types), padded to the longest pair of the batch."""
    encoded = tok.encode_batch(list(pairs))
    width = max(len(e.ids) for e in encoded)
    ids = np.zeros((len(encoded), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    types = np.zeros_like(ids)
    for row, e in enumerate(encoded):
        ids[row, : len(e.ids)] = e.ids
        mask[row, : len(e.ids)] = 1
        types[row, : len(e.ids)] = e.type_ids
    return ids, mask, types


def build_model() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModel

    class PairClassifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = AutoModel.from_pretrained(model_path(), add_pooling_layer=False)
            self.dropout = torch.nn.Dropout(0.1)
            self.head = torch.nn.Linear(384, 1)
            torch.nn.init.zeros_(self.head.weight)
            torch.nn.init.zeros_(self.head.bias)

        def forward(self, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
            hidden = self.bert(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            out: torch.Tensor = self.head(self.dropout(mean)).squeeze(-1)
            return out

    return PairClassifier()


def batches(pairs: list[Pair], size: int, rng: random.Random) -> list[list[Pair]]:
    """Shuffled batches of pairs of similar length (less padding), each pair's order drawn at random."""
    order = pairs[:]
    rng.shuffle(order)
    out: list[list[Pair]] = []
    for start in range(0, len(order), size * 32):
        part = sorted(order[start : start + size * 32], key=lambda p: len(p.a) + len(p.b))
        out += [part[i : i + size] for i in range(0, len(part), size)]
    rng.shuffle(out)
    return [[Pair(p.b, p.a, p.same, p.source) if rng.random() < 0.5 else p for p in b] for b in out]


def train(pairs: list[Pair], args: argparse.Namespace) -> Any:
    import torch

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    model = build_model()
    trainable = (*(f"bert.encoder.layer.{i}." for i in range(LAYERS - args.train_layers, LAYERS)), "head.")
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name.startswith(trainable)
    groups = [
        {"params": [p for n, p in model.named_parameters() if n.startswith("bert.") and p.requires_grad]},
        {"params": list(model.head.parameters()), "lr": args.lr * 20},
    ]
    optimizer = torch.optim.AdamW(groups, lr=args.lr, weight_decay=0.01)
    tok = tokenizer(args.max_tokens)
    steps = args.epochs * math.ceil(len(pairs) / args.batch)
    warmup = max(1, steps // 16)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / (steps - warmup)))
    )
    loss_fn = torch.nn.BCEWithLogitsLoss()
    started, step, running = time.perf_counter(), 0, 0.0
    model.train()
    for epoch in range(args.epochs):
        for batch in batches(pairs, args.batch, rng):
            ids, mask, types = batch_arrays(tok, [(p.a, p.b) for p in batch])
            logits = model(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(types))
            loss = loss_fn(logits, torch.tensor([float(p.same) for p in batch]))
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
            optimizer.step()
            schedule.step()
            step += 1
            value = loss.item()
            running = 0.98 * running + 0.02 * value if step > 1 else value
            if step % 50 == 0 or step == steps:
                elapsed = time.perf_counter() - started
                print(f"epoch {epoch + 1} step {step}/{steps} loss {running:.4f} ({elapsed:.0f} s)")
    return model.eval()


def probabilities(model: Any, pairs: list[Pair], max_tokens: int) -> np.ndarray:
    import torch

    tok = tokenizer(max_tokens)
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i].a) + len(pairs[i].b))
    out = np.empty(len(pairs))
    with torch.inference_mode():
        for start in range(0, len(order), 64):
            run = order[start : start + 64]
            ids, mask, types = batch_arrays(tok, [(pairs[i].a, pairs[i].b) for i in run])
            logits = model(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(types))
            out[run] = torch.sigmoid(logits).numpy()
    return out


def auc(p: np.ndarray, same: np.ndarray) -> float:
    pos, neg = p[same], p[~same]
    return float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())


def choose(s: Scored, p: np.ndarray) -> tuple[float, float]:
    """(cosine floor, threshold) with the most hits within the targets on `s` (rules first)."""
    best = (0.0, 1.0, -1.0)
    for floor in (0.0, *FLOORS):
        gate = s.rules_ok & (s.cosine >= floor)
        t = lowest_safe(p, gate, s)
        hit = rates(gate & (p >= t), s)[0]
        print(f"  floor {floor:.2f}: threshold {t:.4f}, hit {hit:.1%}")
        if hit > best[2]:
            best = (floor, t, hit)
    return best[0], best[1]


def run_train(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)
    try:
        root = data_dir(args.data)
        everything, dev = training_pairs(root), dev_pairs(root)
    except PairsMissing as exc:
        print(exc, file=sys.stderr)
        return 2
    part, held = split(everything)
    if args.subset:
        part = [part[i] for i in np.random.default_rng(args.seed).permutation(len(part))[: args.subset]]
    print(f"training on {len(part)} pairs, choosing on {len(held)}", flush=True)
    started = time.perf_counter()
    model = train(part, args)
    print(f"trained in {time.perf_counter() - started:.0f} s")
    sets = {"held-out slice": held, "MRPC dev": dev, "questions": load_file(QUESTIONS, "jsonl", "questions")}
    vectors = embed([t for pairs in sets.values() for p in pairs for t in (p.a, p.b)], args.embeddings)
    scored = {name: score(pairs, vectors) for name, pairs in sets.items()}
    p = {name: probabilities(model, pairs, args.max_tokens) for name, pairs in sets.items()}
    floor, t = choose(scored["held-out slice"], p["held-out slice"])
    print(f"chosen on the slice: cosine floor {floor:.2f}, threshold {t:.4f}")
    weights = json.loads(WEIGHTS.read_text(encoding="utf-8"))
    learned = Model.from_json(weights)
    for name, s in scored.items():
        q = learned.probability(s.rows)
        stages = {
            "cosine alone": s.cosine >= weights["cosine_threshold"],
            "default (rules + learned check)": s.rules_ok
            & (s.cosine >= learned.floor)
            & (q >= learned.threshold),
            "rules + cross-encoder": s.rules_ok & (s.cosine >= floor) & (p[name] >= t),
            "cross-encoder alone": (s.cosine >= floor) & (p[name] >= t),
        }
        print(f"{name}: {len(s.pairs)} pairs, {int(s.same.sum())} paraphrases, {int(s.close.sum())} close")
        for stage, accept in stages.items():
            hit, false, close = rates(accept, s)
            print(f"  {stage:<34} hit {hit:6.1%}   false {false:6.2%}   close {close:6.2%}")
        print(
            f"  ROC AUC: cosine {auc(s.cosine, s.same):.3f}, learned check {auc(q, s.same):.3f}, "
            f"cross-encoder {auc(p[name], s.same):.3f}"
        )
    return 0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class OnnxScorer:
    def __init__(self, path: Path, max_tokens: int) -> None:
        import onnxruntime as ort

        self.tok = tokenizer(max_tokens)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def probability(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        ids, mask, types = batch_arrays(self.tok, pairs)
        (logits,) = self.session.run(None, {"ids": ids, "mask": mask, "types": types})
        out: np.ndarray = 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))
        return out


def run_latency(args: argparse.Namespace) -> int:
    import torch

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cross.onnx"
        sample = torch.ones(2, 8, dtype=torch.long)
        torch.onnx.export(
            build_model().eval(),
            (sample, sample, torch.zeros(2, 8, dtype=torch.long)),
            str(path),
            input_names=["ids", "mask", "types"],
            output_names=["logit"],
            dynamic_axes={"ids": {0: "b", 1: "t"}, "mask": {0: "b", 1: "t"}, "types": {0: "b", 1: "t"}},
            opset_version=17,
            dynamo=False,
        )
        scorer = OnnxScorer(path, args.max_tokens)
        sets = {"questions": [(p.a, p.b) for p in load_file(QUESTIONS, "jsonl", "questions")]}
        try:
            sets["MRPC dev"] = [(p.a, p.b) for p in dev_pairs(data_dir(args.data))][:200]
        except PairsMissing as exc:
            print(f"note: {exc}")
        learned = build("model", threshold=None, floor=0.0)
        learned.rules = False  # time the check itself, not a rule's early exit
        for name, pairs in sets.items():
            for a, b in pairs[:20]:
                scorer.probability([(a, b)])
            for label, check in (
                ("learned check", lambda a, b: learned.check(a, b, 0.9)),
                ("cross-encoder", lambda a, b: scorer.probability([(a, b)])),
            ):
                times = []
                for _ in range(args.rounds):
                    for a, b in pairs:
                        parse.cache_clear()  # each prompt parsed anew, as in a new lookup
                        started = time.perf_counter()
                        check(a, b)
                        times.append((time.perf_counter() - started) * 1000)
                print(
                    f"{name:<10} {label:<14} {len(times):5d} checks  p50 {percentile(times, 0.5):6.2f} ms  "
                    f"p99 {percentile(times, 0.99):6.2f} ms"
                )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=("train", "latency"))
    parser.add_argument("--data", help="folder of the labelled pairs (default: see services/cache/pairs.py)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--train-layers", type=int, default=3, choices=range(1, 7))
    parser.add_argument("--subset", type=int, default=3000, help="train on this many pairs (0: all 5,934)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--rounds", type=int, default=5, help="latency: passes over each set")
    parser.add_argument("--embeddings", type=Path, help="an .npz file keeping embeddings between runs")
    args = parser.parse_args(argv)
    return run_train(args) if args.what == "train" else run_latency(args)


if __name__ == "__main__":
    sys.exit(main())
