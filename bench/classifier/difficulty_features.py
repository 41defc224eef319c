"""Difficulty-head variants side by side: `python -m bench.classifier.difficulty_features`.

Every variant is scored as `evaluate.py` scores the shipped head: leave one MMLU subject
out (29 folds: each subject's questions are scored by a model fitted on the other 28),
APGR pooled over all questions (one threshold), APGR mean by subject and weighted by each
subject's recoverable gap, over the 26 subjects where GPT-4 is at least 5 % more accurate,
and CPT(50 %) pooled. Next to each, the difference from today's head with a 90 % interval
from a paired bootstrap (questions resampled for the pooled figure, subjects for the mean).

The variants (what docs/classifier.md lists as tried):
- `today`: the shipped recipe (`training.fit_difficulty`): logistic regression on the
  embedding + 16 structure features, target "the cheap model fails", C = 0.3;
- targets: "cheap fails and strong succeeds" (what APGR rewards), and the expected gain of
  an escalation, strong - weak in {-1, 0, 1}, by ridge regression;
- `+mmlu`: 20 more features parsed from the question and its lettered options (numbers and
  formulas among the options, their length spread and word overlap with each other and with
  the question, "NOT/EXCEPT", roman-numeral and "Statement" combinations, "all/none of the
  above", a passage before the question, blanks, quotes);
- `+options`: each option embedded on its own by the same encoder (4 more forward passes a
  prompt): the options' mean and max pairwise cosine (close options = harder) and the
  question-to-options cosine;
- `knn`: the outcomes of the k nearest training questions (cosine of the embeddings) of
  other subjects, averaged; and its rank-average with `today`;
- `hgb`: scikit-learn's HistGradientBoosting on the structure features (+ the 16 leading
  principal components of the embedding, fitted on the training folds only).

Hyperparameters are fixed below, not tuned on the folds, except `knn` k and the blend
weight, which `--nested` chooses by an inner leave-one-subject-out over the 28 training
subjects of each outer fold (slow: ~30 x the plain run for those variants).

Embeddings are those of the classifier's encoder (`--backend`, as train.py), cached in
`--cache`. Nothing here is a test: the figures go to docs/classifier.md.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from services.classifier import corpus
from services.classifier.evaluate import MIN_GAP
from services.classifier.metrics import apgr, cpt
from services.classifier.prompt import of_text
from services.classifier.train import add_encoder_arguments, embedding_cache
from services.classifier.training import DIFFICULTY_C, SEED, feature_matrix

_OPTION_SPLIT = re.compile(r"\n\s*\(?[A-D][.)] ")
_NUMBER = re.compile(r"[-\u2212+]?\$?\d[\d,]*(?:\.\d+)?%?")
_FORMULA = re.compile(r"[=^√∑∫π\u00d7÷/*]|\b[a-z]\s*[+\-]\s*\w|\d\s*[a-zA-Z]\b")
_WORD = re.compile(r"[a-z0-9]+")
_NEGATION = re.compile(r"\b(?:NOT|EXCEPT|LEAST|FALSE|INCORRECT|CANNOT)\b|\bnot\b|\bexcept\b|\bleast\b")
_STATEMENT_COMBO = re.compile(r"(?i)^(?:true|false)\s*,\s*(?:true|false)$")
_ROMAN_OPTION = re.compile(r"^(?:I{1,3}|IV)(?:\s*(?:,|and)\s*(?:I{1,3}|IV))*(?:\s*only)?$")
_ABOVE = re.compile(r"(?i)\b(?:all|none|both|neither) of the (?:above|following|these)\b")
_STOP_WORDS = (
    "a an the of to in and or is are was were be by for on with as at that this it its from which "
    "what who whom whose how why when where following"
)
_STOP = frozenset(_STOP_WORDS.split())

MMLU_FEATURES = (
    "options_numeric_share",
    "options_formula_share",
    "options_log_mean_words",
    "options_length_ratio",
    "options_pair_jaccard_mean",
    "options_pair_jaccard_max",
    "options_question_overlap",
    "options_distinct_first_word",
    "statement_combo",
    "roman_options",
    "above_option",
    "negation_any_case",
    "passage",
    "question_lines",
    "blank",
    "quotes",
    "question_log_words",
    "question_numbers",
    "options_sentences",
    "long_option_is_unique",
)


def split(text: str) -> tuple[str, list[str]]:
    """(question, options) of an MMLU prompt ("question\\nA. …\\nD. …\\nAnswer:")."""
    pieces = _OPTION_SPLIT.split(text)
    options = [p.split("\nAnswer:")[0].strip() for p in pieces[1:]]
    return pieces[0].strip(), options


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP}


def mmlu_features(text: str) -> list[float]:
    question, options = split(text)
    n = max(1, len(options))
    words = [_words(o) for o in options]
    pairs = [
        len(a & b) / len(a | b) if a | b else 1.0 for i, a in enumerate(words) for b in words[i + 1 :]
    ] or [0.0]
    qwords = _words(question)
    lengths = [len(o) for o in options] or [0]
    longest = max(lengths)
    return [
        sum(bool(_NUMBER.search(o)) and len(_WORD.findall(o)) <= 4 for o in options) / n,
        sum(bool(_FORMULA.search(o)) for o in options) / n,
        math.log1p(sum(len(o.split()) for o in options) / n),
        (longest + 1) / (min(lengths) + 1),
        float(np.mean(pairs)),
        float(max(pairs)),
        float(np.mean([len(w & qwords) / (len(w) or 1) for w in words])) if words else 0.0,
        len({o.split()[0].lower() for o in options if o.split()}) / n,
        float(any(_STATEMENT_COMBO.match(o) for o in options)),
        float(any(_ROMAN_OPTION.match(o) for o in options)),
        float(any(_ABOVE.search(o) for o in options)),
        float(bool(_NEGATION.search(question))),
        float(len(question) > 600 or question.count("\n") >= 3),
        float(question.count("\n")),
        float("___" in question or "______" in text),
        float(question.count('"') + question.count("“") >= 2),
        math.log1p(len(question.split())),
        math.log1p(len(_NUMBER.findall(question))),
        float(np.mean([o.count(". ") + 1 for o in options])) if options else 0.0,
        float(sum(x == longest for x in lengths) == 1 and longest > 1.5 * (sum(lengths) / n)),
    ]


def option_similarity(question_vectors: np.ndarray, option_vectors: list[np.ndarray]) -> np.ndarray:
    """(n, 4): mean and max pairwise cosine of the options, mean and max question↔option."""
    out = np.zeros((len(option_vectors), 4), dtype=np.float32)
    for i, (q, opts) in enumerate(zip(question_vectors, option_vectors, strict=True)):
        if len(opts) < 2:
            continue
        sims = opts @ opts.T
        upper = sims[np.triu_indices(len(opts), 1)]
        qs = opts @ q
        out[i] = (upper.mean(), upper.max(), qs.mean(), qs.max())
    return out


@dataclass
class Data:
    subjects: np.ndarray
    weak: np.ndarray
    strong: np.ndarray
    embeddings: np.ndarray
    base: np.ndarray  # the 16 structure features
    mmlu: np.ndarray
    options: np.ndarray | None


Fit = Callable[[Data, np.ndarray, np.ndarray], np.ndarray]  # (data, train idx, test idx) → scores


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = train.mean(axis=0), train.std(axis=0) + 1e-6
    return (train - mean) / std, (test - mean) / std


def _inputs(d: Data, idx: np.ndarray, parts: Sequence[str]) -> np.ndarray:
    blocks = {"emb": d.embeddings, "base": d.base, "mmlu": d.mmlu, "options": d.options}
    return np.hstack([blocks[p][idx] for p in parts])  # type: ignore[index]


def target(d: Data, name: str) -> np.ndarray:
    if name == "weak_fails":
        return 1.0 - d.weak
    if name == "gain":  # cheap fails and strong succeeds
        return (1.0 - d.weak) * d.strong
    return d.strong - d.weak  # "delta"


def logistic(parts: Sequence[str], goal: str = "weak_fails", c: float = DIFFICULTY_C) -> Fit:
    from sklearn.linear_model import LogisticRegression

    def fit(d: Data, train: np.ndarray, test: np.ndarray) -> np.ndarray:
        x = _inputs(d, np.concatenate([train, test]), parts)
        emb_cols = d.embeddings.shape[1] if "emb" in parts else 0
        xtr, xte = x[: len(train)], x[len(train) :]
        ztr, zte = _standardise(xtr[:, emb_cols:], xte[:, emb_cols:])
        xtr = np.hstack([xtr[:, :emb_cols], ztr])
        xte = np.hstack([xte[:, :emb_cols], zte])
        y = target(d, goal)[train] > 0.5
        model = LogisticRegression(C=c, max_iter=3000, random_state=SEED).fit(xtr, y)
        return np.asarray(model.predict_proba(xte)[:, 1])

    return fit


def fixed_effects(parts: Sequence[str], level: Fit | None = None, scale: float = 10.0) -> Fit:
    """Logistic regression with one indicator per training subject (scaled up, so barely
    penalised): the shared weights learn which questions are harder *within* a subject.
    An unseen subject gets no indicator; `level`, when given, adds its estimate of the
    subject's level (a probability, as a logit)."""
    from sklearn.linear_model import LogisticRegression

    def fit(d: Data, train: np.ndarray, test: np.ndarray) -> np.ndarray:
        x = _inputs(d, np.concatenate([train, test]), parts)
        emb_cols = d.embeddings.shape[1] if "emb" in parts else 0
        xtr, xte = x[: len(train)], x[len(train) :]
        ztr, zte = _standardise(xtr[:, emb_cols:], xte[:, emb_cols:])
        names = sorted(set(d.subjects[train]))
        onehot = (d.subjects[train][:, None] == np.array(names)[None, :]) * scale
        xtr = np.hstack([xtr[:, :emb_cols], ztr, onehot])
        xte = np.hstack([xte[:, :emb_cols], zte, np.zeros((len(test), len(names)))])
        model = LogisticRegression(C=DIFFICULTY_C, max_iter=5000, random_state=SEED)
        model.fit(xtr, d.weak[train] < 0.5)
        logit = np.asarray(xte @ model.coef_[0])
        if level is not None:
            p = np.clip(level(d, train, test), 1e-3, 1 - 1e-3)
            logit = logit + np.log(p / (1 - p))
        return logit

    return fit


def ridge(parts: Sequence[str], alpha: float = 30.0) -> Fit:
    """Least squares on strong - weak: the expected gain of escalating the prompt."""

    def fit(d: Data, train: np.ndarray, test: np.ndarray) -> np.ndarray:
        x = _inputs(d, np.concatenate([train, test]), parts)
        xtr, xte = _standardise(x[: len(train)], x[len(train) :])
        y = target(d, "delta")[train]
        y = y - y.mean()
        w = np.linalg.solve(xtr.T @ xtr + alpha * np.eye(xtr.shape[1]), xtr.T @ y)
        return np.asarray(xte @ w)

    return fit


def product(first: Fit, second: Fit) -> Fit:
    """P(cheap fails) * P(strong succeeds), each a logistic regression's probability."""

    def fit(d: Data, train: np.ndarray, test: np.ndarray) -> np.ndarray:
        return first(d, train, test) * second(d, train, test)

    return fit


def strong_succeeds(parts: Sequence[str]) -> Fit:
    from sklearn.linear_model import LogisticRegression

    def fit(d: Data, train: np.ndarray, test: np.ndarray) -> np.ndarray:
        x = _inputs(d, np.concatenate([train, test]), parts)
        xtr, xte = _standardise(x[: len(train)], x[len(train) :])
        model = LogisticRegression(C=DIFFICULTY_C, max_iter=3000, random_state=SEED)
        model.fit(xtr, d.strong[train] > 0.5)
        return np.asarray(model.predict_proba(xte)[:, 1])

    return fit


def _knn_scores(d: Data, train: np.ndarray, test: np.ndarray, ks: Sequence[int], goal: str) -> np.ndarray:
    """(len(ks), len(test)): mean target of the k nearest training questions."""
    y = target(d, goal)[train]
    out = np.zeros((len(ks), len(test)))
    kmax = max(ks)
    emb_train = d.embeddings[train]
    for start in range(0, len(test), 512):
        chunk = test[start : start + 512]
        sims = d.embeddings[chunk] @ emb_train.T
        nearest = np.argpartition(-sims, kmax - 1, axis=1)[:, :kmax]
        order = np.take_along_axis(sims, nearest, axis=1).argsort(axis=1)[:, ::-1]
        nearest = np.take_along_axis(nearest, order, axis=1)
        for j, k in enumerate(ks):
            out[j, start : start + len(chunk)] = y[nearest[:, :k]].mean(axis=1)
    return out


def knn(k: int, goal: str = "weak_fails") -> Fit:
    def fit(d: Data, train: np.ndarray, test: np.ndarray) -> np.ndarray:
        return _knn_scores(d, train, test, [k], goal)[0]

    return fit


def blend(a: Fit, b: Fit, weight: float) -> Fit:
    """weight * P_a + (1 - weight) * P_b: both estimate the same probability, so the blend
    keeps each subject's level (a rank average within the held-out subject would not)."""

    def fit(d: Data, train: np.ndarray, test: np.ndarray) -> np.ndarray:
        return weight * a(d, train, test) + (1 - weight) * b(d, train, test)

    return fit


KS = (10, 25, 50, 100, 200, 400)
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def nested_knn_blend(head: Fit, goal: str = "weak_fails") -> Fit:
    """k and the blend weight chosen by leave-one-subject-out inside the training subjects
    (pooled APGR of the inner predictions), then refitted on all of them."""

    def fit(d: Data, train: np.ndarray, test: np.ndarray) -> np.ndarray:
        inner_subjects = sorted(set(d.subjects[train]))
        knn_inner = np.zeros((len(KS), len(train)))
        head_inner = np.zeros(len(train))
        for subject in inner_subjects:
            held = d.subjects[train] == subject
            knn_inner[:, held] = _knn_scores(d, train[~held], train[held], KS, goal)
            head_inner[held] = head(d, train[~held], train[held])
        w, s = d.weak[train], d.strong[train]
        best = max(
            ((k, wt) for k in range(len(KS)) for wt in WEIGHTS),
            key=lambda kw: apgr(kw[1] * knn_inner[kw[0]] + (1 - kw[1]) * head_inner, w, s),
        )
        print(f"    inner choice: k={KS[best[0]]}, weight={best[1]}", file=sys.stderr)
        return blend(knn(KS[best[0]], goal), head, best[1])(d, train, test)

    return fit


def hgb(parts: Sequence[str], components: int = 16) -> Fit:
    from sklearn.ensemble import HistGradientBoostingClassifier

    def fit(d: Data, train: np.ndarray, test: np.ndarray) -> np.ndarray:
        blocks = [p for p in parts if p != "pca"]
        xtr, xte = _inputs(d, train, blocks), _inputs(d, test, blocks)
        if "pca" in parts:
            e = d.embeddings[train]
            mean = e.mean(axis=0)
            _, _, vt = np.linalg.svd(e - mean, full_matrices=False)
            basis = vt[:components].T
            xtr = np.hstack([xtr, (e - mean) @ basis])
            xte = np.hstack([xte, (d.embeddings[test] - mean) @ basis])
        model = HistGradientBoostingClassifier(
            max_iter=200,
            learning_rate=0.05,
            max_leaf_nodes=15,
            min_samples_leaf=40,
            l2_regularization=1.0,
            random_state=SEED,
        )
        model.fit(xtr, d.weak[train] < 0.5)
        return np.asarray(model.predict_proba(xte)[:, 1])

    return fit


def leave_one_subject_out(d: Data, fit: Fit) -> np.ndarray:
    scores = np.zeros(len(d.subjects))
    for subject in sorted(set(d.subjects)):
        test = np.flatnonzero(d.subjects == subject)
        train = np.flatnonzero(d.subjects != subject)
        scores[test] = fit(d, train, test)
    return scores


def summary(d: Data, scores: np.ndarray) -> dict[str, float]:
    clear = [u for u in sorted(set(d.subjects)) if _gap(d, u) >= MIN_GAP]
    by_subject = {
        u: apgr(scores[d.subjects == u], d.weak[d.subjects == u], d.strong[d.subjects == u]) for u in clear
    }
    weights = {u: _gap(d, u) * int((d.subjects == u).sum()) for u in clear}
    return {
        "pooled": apgr(scores, d.weak, d.strong),
        "mean": float(np.mean(list(by_subject.values()))),
        "within": sum(by_subject[u] * weights[u] for u in clear) / sum(weights.values()),
        "cpt50": cpt(scores, d.weak, d.strong),
    }


def _gap(d: Data, subject: str) -> float:
    m = d.subjects == subject
    return float(d.strong[m].mean() - d.weak[m].mean())


def paired_intervals(
    d: Data, scores: np.ndarray, reference: np.ndarray, rounds: int, seed: int = 1
) -> tuple[tuple[float, float], tuple[float, float]]:
    """90 % bootstrap intervals of (pooled APGR - reference's), questions resampled, and of
    (mean-by-subject APGR - reference's), subjects resampled."""
    rng = np.random.default_rng(seed)
    n = len(scores)
    pooled = []
    for _ in range(rounds):
        i = rng.integers(0, n, n)
        pooled.append(apgr(scores[i], d.weak[i], d.strong[i]) - apgr(reference[i], d.weak[i], d.strong[i]))
    clear = [u for u in sorted(set(d.subjects)) if _gap(d, u) >= MIN_GAP]
    diffs = []
    for u in clear:
        m = d.subjects == u
        diffs.append(apgr(scores[m], d.weak[m], d.strong[m]) - apgr(reference[m], d.weak[m], d.strong[m]))
    per = np.array(diffs)
    means = [per[rng.integers(0, len(per), len(per))].mean() for _ in range(rounds)]
    return (
        (float(np.quantile(pooled, 0.05)), float(np.quantile(pooled, 0.95))),
        (float(np.quantile(means, 0.05)), float(np.quantile(means, 0.95))),
    )


def load(args: argparse.Namespace) -> tuple[Data, list[str]]:
    rows = corpus.outcomes()
    texts = [r.text for r in rows]
    cache = embedding_cache(args)
    embeddings = cache.embed_prompts(texts)
    options = None
    if args.options:
        parsed = [split(of_text(t).user) for t in texts]
        flat = [o for _, opts in parsed for o in opts]
        vectors = cache.embed(flat)
        questions = cache.embed([q for q, _ in parsed])
        per, at = [], 0
        for _, opts in parsed:
            per.append(vectors[at : at + len(opts)])
            at += len(opts)
        options = option_similarity(questions, per)
    data = Data(
        subjects=np.array([r.subject for r in rows]),
        weak=np.array([r.weak_correct for r in rows], dtype=float),
        strong=np.array([r.strong_correct for r in rows], dtype=float),
        embeddings=embeddings,
        base=feature_matrix(texts),
        mmlu=np.array([mmlu_features(of_text(t).user) for t in texts], dtype=np.float32),
        options=options,
    )
    return data, texts


def variants(args: argparse.Namespace) -> dict[str, Fit]:
    today = logistic(("emb", "base"))
    out: dict[str, Fit] = {
        "today (emb+16, cheap fails, C=0.3)": today,
        "target: cheap fails ∧ strong right": logistic(("emb", "base"), "gain"),
        "target: strong - weak (ridge)": ridge(("emb", "base")),
        "product with P(strong right)": product(today, strong_succeeds(("emb", "base"))),
        "16 features alone": logistic(("base",)),
        "20 MMLU features alone": logistic(("mmlu",)),
        "16 + 20 features": logistic(("base", "mmlu")),
        "emb + 16 + 20 features": logistic(("emb", "base", "mmlu")),
        "emb + 16 + 20, target gain": logistic(("emb", "base", "mmlu"), "gain"),
        "knn k=50 (cheap fails)": knn(50),
        "knn k=200 (cheap fails)": knn(200),
        "knn k=200 (gain)": knn(200, "gain"),
        "blend ½ today + ½ knn k=200": blend(today, knn(200), 0.5),
        "blend ½ today + ½ 16+20 features": blend(today, logistic(("base", "mmlu")), 0.5),
        "fixed effects emb+16 (within only)": fixed_effects(("emb", "base")),
        "fixed effects emb+16+20 (within only)": fixed_effects(("emb", "base", "mmlu")),
        "fixed effects emb+16 + knn k=400 level": fixed_effects(("emb", "base"), knn(400)),
        "fixed effects emb+16 + today's level": fixed_effects(("emb", "base"), today),
        "fixed effects emb+16 + knn k=400 + 20": fixed_effects(("emb", "base", "mmlu"), knn(400)),
        "hgb 16 + 20 features": hgb(("base", "mmlu")),
        "hgb 16 + 20 + 16 PCs": hgb(("base", "mmlu", "pca")),
        "blend ½ today + ½ hgb 16+20": blend(today, hgb(("base", "mmlu")), 0.5),
    }
    if args.options:
        out["options cosines alone"] = logistic(("options",))
        out["emb + 16 + options cosines"] = logistic(("emb", "base", "options"))
        out["emb + 16 + 20 + options cosines"] = logistic(("emb", "base", "mmlu", "options"))
        out["fixed effects emb+16+options + knn"] = fixed_effects(("emb", "base", "options"), knn(400))
    if args.nested:
        out["nested: knn k and blend weight"] = nested_knn_blend(today)
    if args.only:
        out = {
            k: v for k, v in out.items() if k.startswith("today") or any(s in k for s in args.only.split(","))
        }
    return out


def option_latency(args: argparse.Namespace, prompts: int = 200, rounds: int = 3) -> None:
    """CPU time of the classifier's forward pass for a prompt alone, and for the prompt with
    its question and options (what `+options` needs), one thread on one pinned core, the
    two taking turns prompt by prompt."""
    import os
    import random

    from services.kernel.encoder import load_backend

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    name, model = load_backend(embedding_cache(args).requested_backend, args.model_file, threads=1)
    rows = random.Random(0).sample(corpus.outcomes(), prompts)
    alone: list[float] = []
    with_options: list[float] = []
    for _ in range(rounds):
        for row in rows:
            prompt = of_text(row.text)
            question, options = split(prompt.user)
            for texts, out in (([prompt.text], alone), ([prompt.text, question, *options], with_options)):
                started = time.thread_time()
                model.embed(texts)
                out.append((time.thread_time() - started) * 1e3)
    a, b = np.percentile(alone, [50, 99]), np.percentile(with_options, [50, 99])
    print(
        f"latency ({name}, {prompts} MMLU prompts x {rounds}, CPU ms): prompt alone p50 {a[0]:.2f}, "
        f"p99 {a[1]:.2f}; prompt + question + options in one call p50 {b[0]:.2f}, p99 {b[1]:.2f} "
        f"(+{b[0] - a[0]:.2f} ms at p50)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_encoder_arguments(parser)
    parser.add_argument("--options", action="store_true", help="also embed each option (slow once)")
    parser.add_argument("--nested", action="store_true", help="the nested choice of knn k and blend weight")
    parser.add_argument("--rounds", type=int, default=300, help="bootstrap rounds")
    parser.add_argument("--only", help="comma-separated substrings of the variants to run")
    parser.add_argument("--latency", action="store_true", help="only the added cost of `+options`")
    args = parser.parse_args(argv)
    if args.latency:
        option_latency(args)
        return 0
    d, _ = load(args)
    clear = sum(_gap(d, u) >= MIN_GAP for u in set(d.subjects))
    print(
        f"{len(d.subjects)} questions, {len(set(d.subjects))} subjects ({clear} with a gap ≥ {MIN_GAP:.0%}); "
        f"weak {d.weak.mean():.3f}, strong {d.strong.mean():.3f}"
    )
    oracle = {u: _gap(d, u) for u in set(d.subjects)}
    subject_oracle = np.array([oracle[u] for u in d.subjects]) + 1e-9 * np.arange(len(d.subjects))
    print(
        "(reference: scoring each question by its subject's true gap gives pooled APGR "
        f"{apgr(subject_oracle, d.weak, d.strong):.3f})"
    )
    print(
        f"\n{'variant':<40}{'pooled':>8}{'Δ [90% CI]':>22}{'mean':>8}{'Δ [90% CI]':>22}"
        f"{'within':>8}{'CPT50':>7}{'s':>6}"
    )
    reference: np.ndarray | None = None
    for name, fit in variants(args).items():
        started = time.monotonic()
        scores = leave_one_subject_out(d, fit)
        s = summary(d, scores)
        if reference is None:
            reference = scores
            ci = "".ljust(22), "".ljust(22)
            base = s
        else:
            (p0, p1), (m0, m1) = paired_intervals(d, scores, reference, args.rounds)
            ci = (
                f"{s['pooled'] - base['pooled']:+.3f} [{p0:+.3f},{p1:+.3f}]".rjust(22),
                f"{s['mean'] - base['mean']:+.3f} [{m0:+.3f},{m1:+.3f}]".rjust(22),
            )
        print(
            f"{name:<40}{s['pooled']:>8.3f}{ci[0]}{s['mean']:>8.3f}{ci[1]}{s['within']:>8.3f}"
            f"{s['cpt50']:>7.1%}{time.monotonic() - started:>6.0f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
