"""Where `auto` sends a prompt set, and what it costs: `python -m bench.classifier.cost_share`.

Replays prompts through the real path of the resolve stage — the classifier service
in-process (rules, then the model) and the router's `AutoResolver` with the routing
table of a gateway.yaml — and prints the share of requests per model and the estimated
cost against sending everything to the most expensive model of the table, from the
configured prices (input tokens ≈ characters / 4, `--output-tokens` per answer).

On the MMLU part of the set it also prints the accuracy of the routed mix, from the
recorded answers of the cheap (Mixtral-8x7B) and strong (GPT-4) models, with the first
model of the cheapest band standing for "cheap" and any other for "strong". The shipped
difficulty head was trained on these subjects, so that accuracy is in-sample: the
cross-validated figure is APGR in docs/classifier.md.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
from collections import Counter
from pathlib import Path

from prometheus_client import CollectorRegistry

from services.classifier import app as classifier_app
from services.classifier import corpus
from services.classifier.client import ClassifierClient, RuleClassifier
from services.kernel.config import build_catalog, load_config
from services.kernel.encoder import Encoder, classifier_backend
from services.kernel.pricing import cost_of
from services.kernel.settings import Settings
from services.router.autoroute import AutoResolver
from services.router.exchange import Exchange
from services.router.metrics import RouterMetrics
from services.router.routing import CatalogResolver

ROOT = Path(__file__).resolve().parents[2]


async def replay(config_path: Path, alias: str, texts: list[str]) -> list[str]:
    config = load_config(config_path)
    assert config.routing is not None, "the configuration has no routing section"
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            config=config, catalog=build_catalog(config, {}), master_key="sk-bench-cost", data_dir=Path(tmp)
        )
        encoder = Encoder(backend=classifier_backend())
        app = classifier_app.create_app(settings, process_metrics=False, encoder=encoder)
        async with app.router.lifespan_context(app):
            await encoder.wait_ready()
            client = ClassifierClient.in_process(app, timeout=30)
            registry = CollectorRegistry()
            auto = AutoResolver(
                CatalogResolver(settings.catalog),
                config.routing.model_copy(update={"classifier_timeout_ms": 10_000}),
                RuleClassifier.load(),
                classifier=client,  # type: ignore[arg-type]
                metrics=RouterMetrics(registry),
                registry=registry,
            )
            chosen = []
            for text in texts:
                ex = Exchange("bench", "chat.completions")
                ex.body = {"messages": [{"role": "user", "content": text}]}
                chosen.append((await auto.resolve(ex, alias)).model)
            await client.aclose()
        return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "gateway.yaml")
    parser.add_argument("--aliases", nargs="+", default=["auto-cheap", "auto", "auto-best"])
    parser.add_argument("--mmlu", type=int, default=1000, help="MMLU questions in the set")
    parser.add_argument("--output-tokens", type=int, default=300)
    args = parser.parse_args(argv)

    _, held_out = corpus.split(corpus.examples())
    mixed = [e.text for e in held_out] + [e.text for e in corpus.holdout()]
    rows = random.Random(0).sample(corpus.outcomes(), args.mmlu)
    texts = mixed + [r.text for r in rows]
    config = load_config(args.config)
    catalog = build_catalog(config, {})
    assert config.routing is not None
    prices = {name: deps[0].config.price for name, deps in catalog.models.items()}
    targets = [n for n in config.routing.targets() if prices.get(n) is not None]
    strongest = max(targets, key=lambda n: prices[n].input + prices[n].output)  # type: ignore[union-attr]
    cheapest = min(targets, key=lambda n: prices[n].input + prices[n].output)  # type: ignore[union-attr]

    def cost(model: str, text: str) -> float:
        return cost_of(prices[model], max(1, len(text) // 4), args.output_tokens, 0) or 0.0

    baseline = sum(cost(strongest, t) for t in texts)
    print(
        f"{len(texts)} prompts ({len(mixed)} of every category, {len(rows)} MMLU); "
        f"all to {strongest}: {baseline:.4f} (price units)"
    )
    weak = sum(r.weak_correct for r in rows) / len(rows)
    strong = sum(r.strong_correct for r in rows) / len(rows)
    print(f"MMLU accuracy: all cheap {weak:.3f}, all strong {strong:.3f}")
    for alias in args.aliases:
        chosen = asyncio.run(replay(args.config, alias, texts))
        shares = Counter(chosen)
        spent = sum(cost(m, t) for m, t in zip(chosen, texts, strict=True))
        mmlu_choice = chosen[len(mixed) :]
        accuracy = sum(
            (r.weak_correct if m == cheapest else r.strong_correct)
            for m, r in zip(mmlu_choice, rows, strict=True)
        ) / len(rows)
        strong_share = sum(m != cheapest for m in mmlu_choice) / len(rows)
        share_text = ", ".join(f"{m} {n / len(chosen):.0%}" for m, n in shares.most_common())
        print(
            f"{alias:<11} {share_text}; cost {spent:.4f} = {spent / baseline:.0%} of all-{strongest} "
            f"(saves {1 - spent / baseline:.0%}); MMLU: {strong_share:.0%} strong, accuracy {accuracy:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
