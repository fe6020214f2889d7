"""Sampling-based evaluation metrics."""

from __future__ import annotations

from collections import Counter
from math import comb
from typing import Hashable, Iterable, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct (Chen et al. 2021, arXiv 2107.03374).

    pass@k = 1 - C(n - c, k) / C(n, k); 1.0 when fewer than ``k`` samples are wrong.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def avg_at_n(correct: Sequence[bool | float]) -> float:
    """Mean correctness of the ``n`` samples of one prompt (avg@n, the expected pass@1); 0.0 when empty."""
    return float(sum(float(c) for c in correct)) / len(correct) if correct else 0.0


def maj_at_k(answers: Sequence[Hashable | None], correct: Sequence[bool | float], k: int) -> float:
    """Majority-vote accuracy over the first ``k`` samples of one prompt (maj@k, "self-consistency").

    ``answers[i]`` is the normalised final answer extracted from sample ``i`` (``None``: no answer;
    such samples do not vote) and ``correct[i]`` whether that sample was verified correct (or a
    score in [0, 1]). The winning answer is the most frequent one among the first ``k``; it scores
    the mean correctness of its samples (1 or 0 normally: equal answers verify alike).

    Ties rule: when several answers share the top count, the result is the *mean score of the tied
    answers*, i.e. the expected score of breaking the tie uniformly at random. So it does not depend
    on sample order; e.g. answers ``[a, b]`` with only ``a`` correct give 0.5. Returns 0.0 when none
    of the first ``k`` samples has an answer.
    """
    if len(answers) != len(correct):
        raise ValueError(f"maj_at_k: {len(answers)} answers but {len(correct)} correctness flags")
    if not 1 <= k <= len(answers):
        raise ValueError(f"maj_at_k needs 1 <= k <= n, got k={k}, n={len(answers)}")
    votes: dict[Hashable, list[float]] = {}
    for answer, ok in zip(answers[:k], correct[:k]):
        if answer is not None:
            votes.setdefault(answer, []).append(float(ok))
    if not votes:
        return 0.0
    top = max(len(v) for v in votes.values())
    tied = [v for v in votes.values() if len(v) == top]
    return sum(sum(v) / len(v) for v in tied) / len(tied)


def distinct_answers(answers: Iterable[Hashable | None]) -> int:
    """How many different non-``None`` answers there are."""
    return len({a for a in answers if a is not None})


def answer_entropy(answers: Sequence[Hashable | None]) -> float:
    """Answer-level entropy of one prompt's samples, ``H = -sum_a p_a ln p_a`` in nats.

    ``p_a = n_a / n``: the empirical distribution of the extracted final answers of the ``n``
    samples (the distribution EMPO and SEED-GRPO cluster; The Invisible Leash, arXiv 2507.14843,
    contrasts it with token-level entropy). A sample without an answer (``None``) counts as an
    answer of its own, so unknown answers never agree: ``n`` different answers, or ``n`` samples
    without one, give ``ln n``; one answer shared by all gives 0. 0.0 when there are no samples.
    """
    from rlvr.algos.seed_grpo import cluster_sizes, semantic_entropy

    return semantic_entropy(cluster_sizes(list(answers), "singleton"), "shannon")


def empirical_support(keys: Sequence[Hashable | None], correct: Sequence[bool | float], min_frac: float = 0.0) -> set[Hashable]:
    """The empirical support of one prompt: the distinct keys of its correct samples.

    ``keys[i]`` is what identifies sample ``i``'s solution (its extracted answer, or its response
    text), ``correct[i]`` whether it verified (a score counts as correct at >= 1). With
    ``min_frac = eps > 0`` a key is kept only when at least ``eps * n`` of the ``n`` samples are
    correct with that key (the stricter "frequency >= eps" support). ``None`` keys are never in it.
    (Definition inferred from the abstract and reviews of The Invisible Leash, arXiv 2507.14843; the
    paper's own thresholds were not available.)
    """
    if len(keys) != len(correct):
        raise ValueError(f"empirical_support: {len(keys)} keys but {len(correct)} correctness flags")
    if not 0.0 <= min_frac <= 1.0:
        raise ValueError(f"empirical_support needs 0 <= min_frac <= 1, got {min_frac}")
    counts = Counter(k for k, ok in zip(keys, correct) if k is not None and float(ok) >= 1.0)
    return {k for k, c in counts.items() if c >= min_frac * len(keys)}


def support_change(base: set[Hashable], new: set[Hashable]) -> dict[str, int]:
    """How ``new`` support differs from ``base`` support: ``preserved`` = |base & new|,
    ``shrunk`` = |base - new| (reached by the base model only), ``expanded`` = |new - base|."""
    return {"preserved": len(base & new), "shrunk": len(base - new), "expanded": len(new - base)}


def ngrams(tokens: Sequence[Hashable], n: int) -> list[tuple[Hashable, ...]]:
    """The contiguous ``n``-grams of ``tokens`` (none when it is shorter than ``n``)."""
    if n < 1:
        raise ValueError(f"ngrams needs n >= 1, got {n}")
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(sequences: Iterable[Sequence[Hashable]], n: int) -> float:
    """distinct-n (Li et al. 2016, arXiv 1510.03055): distinct ``n``-grams / all ``n``-grams.

    Pooled over ``sequences`` (token lists, e.g. the responses to one prompt; a ``str`` is split on
    whitespace). 1.0 means no ``n``-gram repeats anywhere; 0.0 when there is no ``n``-gram at all.
    """
    grams: list[tuple[Hashable, ...]] = []
    for seq in sequences:
        tokens = seq.split() if isinstance(seq, str) else list(seq)
        grams.extend(ngrams(tokens, n))
    return len(set(grams)) / len(grams) if grams else 0.0


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation (numpy's default); NaN when empty."""
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile needs 0 <= q <= 100, got {q}")
    if not values:
        return float("nan")
    ordered = sorted(float(v) for v in values)
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def accuracy_per_1k_tokens(num_correct: float, num_tokens: float) -> float:
    """Correct responses per 1000 generated tokens (token efficiency); 0.0 when nothing was generated."""
    return 1000.0 * num_correct / num_tokens if num_tokens > 0 else 0.0


def default_ks(n: int) -> list[int]:
    """``1, 2, 4, ...`` up to ``n``, plus ``n`` itself: the ``k`` values reported for ``n`` samples."""
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    if n >= 1 and ks[-1] != n:
        ks.append(n)
    return ks
