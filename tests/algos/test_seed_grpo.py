"""SEED-GRPO (arXiv 2505.12346, partly inferred): semantic entropy from answer clusters, by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.algos import AlgoContext, advantage
from rlvr.algos.seed_grpo import cluster_sizes, extract_answer, semantic_entropy
from rlvr.errors import ConfigError, MissingInputError

RESPONSES = [
    # group 0: answers 1, 1, 1, 2 -> clusters (3, 1)
    "so \\boxed{1}", "\\boxed{ 1 }", "x \\boxed{1}", "\\boxed{2}",
    # group 1: all different -> 4 singletons
    "\\boxed{3}", "\\boxed{4}", "\\boxed{5}", "\\boxed{6}",
    # group 2: all the same -> one cluster
    "\\boxed{7}", "\\boxed{7}", "\\boxed{7}", "\\boxed{7}",
]
REWARDS = [1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
GROUPS = [0] * 4 + [1] * 4 + [2] * 4


def make_ctx(responses=RESPONSES, rewards=REWARDS, groups=GROUPS) -> AlgoContext:
    n = len(rewards)
    return AlgoContext(
        response_mask=torch.tensor([[1.0, 1.0, 0.0]] * n),
        rewards=torch.tensor(rewards),
        group_ids=torch.tensor(groups),
        extras={"responses": list(responses)},
    )


def test_semantic_entropy_by_hand() -> None:
    assert semantic_entropy([3, 1]) == pytest.approx(-(math.log(0.75) + math.log(0.25)) / 2)  # 0.836988
    assert semantic_entropy([1, 1, 1, 1]) == pytest.approx(math.log(4))  # the maximum, log G
    assert semantic_entropy([4]) == 0.0
    assert semantic_entropy([3, 1], "shannon") == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))


def test_linear_scaling_of_dr_grpo_advantages() -> None:
    alpha = 0.5
    adv = advantage.build("seed_grpo", {"alpha": alpha})(make_ctx())
    se0 = -(math.log(0.75) + math.log(0.25)) / 2
    f0 = 1.0 - alpha * se0 / math.log(4)  # 0.698132
    f1 = 1.0 - alpha  # all answers differ: SE = SE_max
    f2 = 1.0  # one cluster: SE = 0
    base = [0.25, 0.25, 0.25, -0.75, 0.75, -0.25, -0.25, -0.25, 0.0, 0.0, 0.0, 0.0]  # R - mean_g R
    scale = [f0] * 4 + [f1] * 4 + [f2] * 4
    expected = [b * s for b, s in zip(base, scale)]
    assert adv[:, 0].tolist() == pytest.approx(expected, abs=1e-6)
    assert adv[:, 1].tolist() == pytest.approx(expected, abs=1e-6)
    assert (adv[:, 2] == 0).all()  # padding
    comp = advantage.build("seed_grpo", {"alpha": alpha})
    comp(make_ctx())
    assert comp.fn.metrics["seed_grpo/num_clusters"] == pytest.approx((2 + 4 + 1) / 3)


def test_scale_functions_and_std_base() -> None:
    ctx = make_ctx()
    x1 = 0.8  # group 1: alpha * SE / SE_max = alpha
    exp_adv = advantage.build("seed_grpo", {"alpha": x1, "fn": "exp"})(ctx)
    assert exp_adv[4, 0].item() == pytest.approx(0.75 * math.exp(-x1), abs=1e-6)
    focal = advantage.build("seed_grpo", {"alpha": x1, "fn": "focal", "gamma": 2.0})(ctx)
    assert focal[4, 0].item() == pytest.approx(0.75 * (1 - x1) ** 2, abs=1e-6)
    grpo_base = advantage.build("grpo", {})(ctx)
    scaled = advantage.build("seed_grpo", {"alpha": x1, "base": "grpo"})(ctx)
    assert scaled[4, 0].item() == pytest.approx(grpo_base[4, 0].item() * (1 - x1), abs=1e-6)


def test_missing_answers_and_extract_modes() -> None:
    responses = ["no box", "still none", "\\boxed{1}", "\\boxed{1}"]
    ctx = make_ctx(responses, [1.0, 0.0, 1.0, 0.0], [0] * 4)
    # singleton: clusters (1, 1, 2) -> SE = -(2 log(1/4) + log(1/2)) / 3
    single = advantage.build("seed_grpo", {"alpha": 1.0})(ctx)
    se = -(2 * math.log(0.25) + math.log(0.5)) / 3
    assert single[0, 0].item() == pytest.approx(0.5 * (1 - se / math.log(4)), abs=1e-6)
    # one shared "no answer" cluster: (2, 2) -> SE = log 2
    shared = advantage.build("seed_grpo", {"alpha": 1.0, "missing": "cluster"})(ctx)
    assert shared[0, 0].item() == pytest.approx(0.5 * (1 - math.log(2) / math.log(4)), abs=1e-6)
    assert cluster_sizes(["a", None, "a", None], "singleton") == [2, 1, 1]
    assert extract_answer("work\n 42 \n\n", "last_line") == "42"
    assert extract_answer("17\nmore", "first_line") == "17"
    assert extract_answer("  a   b ", "full") == "a b"
    assert extract_answer("\\boxed{\\frac{1}{2}}", "boxed") == "\\frac{1}{2}"
    assert extract_answer("", "last_line") is None


def test_singleton_group_and_errors() -> None:
    ctx = make_ctx(["\\boxed{1}"], [1.0], [0])
    assert advantage.build("seed_grpo", {})(ctx)[0, 0].item() == pytest.approx(1.0)  # dr_grpo: singleton A = R
    with pytest.raises(MissingInputError, match="responses"):
        advantage.build("seed_grpo", {})(AlgoContext(response_mask=torch.ones(2, 1), rewards=torch.ones(2), group_ids=torch.zeros(2)))
    for knobs in ({"fn": "cubic"}, {"extract": "json"}, {"alpha": -1.0}, {"base": "seed_grpo"}, {"base": "ucas"}):
        with pytest.raises(ConfigError):
            advantage.build("seed_grpo", knobs)
