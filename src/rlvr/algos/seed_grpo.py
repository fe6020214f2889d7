"""SEED-GRPO: advantages scaled down on prompts with high semantic entropy (arXiv 2505.12346) (stage: advantage).

**Partly inferred**: no official code was found, and the definitions below come from secondary
summaries of the paper plus our own reconstructions, marked [INFERENCE]. Per prompt ``q`` with
``G`` responses:

1. **Clusters.** The ``G`` responses are clustered by meaning; for verifiable math, two responses are
   equivalent iff their extracted final answers are equal (string equality after whitespace
   normalisation) [INFERENCE]. ``extract`` picks the answer: ``"boxed"`` (last ``\\boxed{}``,
   ``rlvr.tasks.math.extract_boxed``), ``"last_line"`` / ``"first_line"`` (last / first non-empty
   line; ``first_line`` matches the built-in arithmetic/countdown formats) or ``"full"`` (the whole
   stripped response). A response with no extractable answer forms its own singleton cluster
   (``missing="singleton"``, our choice: unknown answers are not counted as agreeing) or all such
   responses of a group share one cluster (``missing="cluster"``).
2. **Cluster probabilities.** ``p(C_k | q) = n_k / G`` (count-based estimate instead of summed sequence
   probabilities) [INFERENCE].
3. **Semantic entropy.** ``SE(q) = -(1/K) sum_k log p(C_k | q)`` over the ``K`` clusters, as the
   secondary summaries write it (``estimator="cluster_mean"``). ``estimator="shannon"`` gives the usual
   ``-sum_k p_k log p_k``. Both are at most ``SE_max = log G`` [INFERENCE], reached when all ``G``
   answers differ; a single cluster gives 0. Groups of one response get ``SE / SE_max = 0``.
4. **Modulation.** ``A_hat_i = A_i * f(alpha * SE(q) / SE_max(q))`` with ``f`` one of [INFERENCE]
   ``"linear"`` ``1 - x``, ``"exp"`` ``exp(-x)``, ``"focal"`` ``(1 - x)^gamma``. ``alpha`` is not
   known (we guess 0.5-1) [INFERENCE]; default 0.5, so that even a maximally uncertain prompt keeps
   half its advantage under the linear ``f``.

``A_i`` comes from a base advantage estimator (``base``, default ``"dr_grpo"``: the summaries'
``A_i = R_i - mean_g R``; ``base="grpo"`` gives the std-normalised variant), so the modulation composes
with any estimator whose inputs are among ``rewards, group_ids``. The decoded responses are read from
``ctx.extras["responses"]`` (the trainer sets them).

The last call's per-group statistics are kept in ``self.metrics`` (``seed_grpo/semantic_entropy``,
``seed_grpo/scale_mean``, ``seed_grpo/num_clusters``), since advantage functions return only the
tensor.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Sequence, get_args

import torch
from torch import Tensor

from rlvr.algos.context import AlgoContext
from rlvr.algos.entropy_advantage import WrapsBase, build_base_component
from rlvr.algos.groups import group_index
from rlvr.algos.registry import advantage
from rlvr.algos.shaping import check_choice
from rlvr.errors import ConfigError, MissingInputError

SEED_REQUIRES = ("rewards", "group_ids")
ExtractMode = Literal["boxed", "last_line", "first_line", "full"]
MissingMode = Literal["singleton", "cluster"]
SeEstimator = Literal["cluster_mean", "shannon"]
ScaleFn = Literal["linear", "exp", "focal"]
EXTRACT_MODES: tuple[str, ...] = get_args(ExtractMode)
MISSING_MODES: tuple[str, ...] = get_args(MissingMode)
SE_ESTIMATORS: tuple[str, ...] = get_args(SeEstimator)
SCALE_FNS: tuple[str, ...] = get_args(ScaleFn)
WHO = "advantage 'seed_grpo'"


def extract_answer(response: str, mode: ExtractMode) -> str | None:
    """The final answer of ``response`` under ``mode`` (whitespace-normalised), None if there is none."""
    if not isinstance(response, str):
        return None
    if mode == "boxed":
        from rlvr.tasks.math import clean_answer, extract_boxed

        boxed = extract_boxed(response)
        answer = None if boxed is None else clean_answer(boxed)
    elif mode in ("last_line", "first_line"):
        lines = [line for line in response.splitlines() if line.strip()]
        answer = (lines[-1] if mode == "last_line" else lines[0]) if lines else None
    elif mode == "full":
        answer = response
    else:
        raise ConfigError(f"{WHO}: unknown extract '{mode}'; valid: {', '.join(EXTRACT_MODES)}")
    if answer is None:
        return None
    answer = " ".join(answer.split())
    return answer or None


def cluster_sizes(answers: Sequence[str | None], missing: MissingMode = "singleton") -> list[int]:
    """Sizes ``n_k`` of the answer-equality clusters of one group (order of first appearance)."""
    check_choice(WHO, "missing", missing, MISSING_MODES)
    counts: dict[Any, int] = {}
    for i, answer in enumerate(answers):
        key: Any = answer
        if answer is None:
            key = ("__missing__", i) if missing == "singleton" else ("__missing__",)
        counts[key] = counts.get(key, 0) + 1
    return list(counts.values())


def semantic_entropy(sizes: Sequence[int], estimator: SeEstimator = "cluster_mean") -> float:
    """``-(1/K) sum_k log(n_k / G)`` (``cluster_mean``) or ``-sum_k (n_k/G) log(n_k / G)`` (``shannon``)."""
    check_choice(WHO, "estimator", estimator, SE_ESTIMATORS)
    total = sum(sizes)
    if total == 0:
        return 0.0
    logs = [math.log(n / total) for n in sizes]
    if estimator == "cluster_mean":
        return -sum(logs) / len(sizes)
    return -sum((n / total) * lg for n, lg in zip(sizes, logs))


def scale_factor(x: float, fn: ScaleFn, gamma: float = 2.0) -> float:
    """``f(x)``: linear ``1 - x``, exp ``exp(-x)``, focal ``(1 - x)^gamma`` (``x`` clamped to [0, 1] for focal)."""
    check_choice(WHO, "fn", fn, SCALE_FNS)
    if fn == "linear":
        return 1.0 - x
    if fn == "exp":
        return math.exp(-x)
    return max(0.0, 1.0 - x) ** gamma


@advantage.register("seed_grpo", requires=SEED_REQUIRES)
class SeedGRPO(WrapsBase):
    """SEED-GRPO (arXiv 2505.12346, partly inferred): ``A * f(alpha * SE(q) / log G)`` per group.

    Knobs: ``alpha`` (0.5), ``fn`` (``"linear"`` | ``"exp"`` | ``"focal"``), ``gamma`` (focal exponent,
    2.0), ``extract`` (``"boxed"`` | ``"last_line"`` | ``"first_line"`` | ``"full"``; default ``"boxed"``),
    ``missing`` (``"singleton"`` | ``"cluster"``), ``estimator`` (``"cluster_mean"`` | ``"shannon"``),
    ``base`` (``"dr_grpo"``) and ``base_kwargs``.
    """

    name = "seed_grpo"

    def __init__(
        self,
        *,
        alpha: float = 0.5,
        fn: ScaleFn = "linear",
        gamma: float = 2.0,
        extract: ExtractMode = "boxed",
        missing: MissingMode = "singleton",
        estimator: SeEstimator = "cluster_mean",
        base: str = "dr_grpo",
        base_kwargs: dict[str, Any] | None = None,
    ) -> None:
        who = f"advantage '{self.name}'"
        for knob, value, valid in (
            ("fn", fn, SCALE_FNS),
            ("extract", extract, EXTRACT_MODES),
            ("missing", missing, MISSING_MODES),
            ("estimator", estimator, SE_ESTIMATORS),
        ):
            check_choice(who, knob, value, valid)
        if not alpha >= 0:
            raise ConfigError(f"{who}: alpha must be >= 0, got {alpha}")
        if not gamma >= 0:
            raise ConfigError(f"{who}: gamma must be >= 0, got {gamma}")
        self.alpha = float(alpha)
        self.fn = fn
        self.gamma = float(gamma)
        self.extract = extract
        self.missing = missing
        self.estimator = estimator
        self.base = build_base_component(advantage, base, base_kwargs, SEED_REQUIRES, who, self.name)
        self.metrics: dict[str, float] = {}

    def group_scales(self, responses: Sequence[str], group_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per response: ``(scale f(alpha SE / SE_max), SE of its group, number of clusters)``, each ``(B,)``."""
        dense, k = group_index(group_ids)
        answers = [extract_answer(r, self.extract) for r in responses]
        members: list[list[int]] = [[] for _ in range(k)]
        for i, g in enumerate(dense.tolist()):
            members[g].append(i)
        scale = torch.ones(len(answers), dtype=torch.float64)
        entropy = torch.zeros(len(answers), dtype=torch.float64)
        clusters = torch.zeros(len(answers), dtype=torch.float64)
        for rows in members:
            sizes = cluster_sizes([answers[i] for i in rows], self.missing)
            se = semantic_entropy(sizes, self.estimator)
            se_max = math.log(len(rows)) if len(rows) > 1 else 0.0
            x = self.alpha * se / se_max if se_max > 0 else 0.0
            scale[rows] = scale_factor(x, self.fn, self.gamma)
            entropy[rows] = se
            clusters[rows] = float(len(sizes))
        return scale, entropy, clusters

    def __call__(self, ctx: AlgoContext) -> Tensor:
        who = f"advantage '{self.name}'"
        ctx.require(*SEED_REQUIRES, who=who)
        assert ctx.group_ids is not None
        responses = ctx.extras.get("responses")
        if not isinstance(responses, (list, tuple)) or len(responses) != ctx.batch_size:
            raise MissingInputError(
                f"{who} needs the decoded responses in ctx.extras['responses'] (a list of {ctx.batch_size} str)"
            )
        base = self.base(ctx)
        scale, entropy, clusters = self.group_scales(responses, ctx.group_ids.cpu())
        self.metrics = {
            f"{self.name}/semantic_entropy": float(entropy.mean()),
            f"{self.name}/scale_mean": float(scale.mean()),
            f"{self.name}/num_clusters": float(clusters.mean()),
        }
        return base * scale.to(device=base.device, dtype=base.dtype).unsqueeze(-1)
