"""trapo: unique-majority pseudo labels, z-normalised trajectory cosine, top-k / threshold selection, and two steps by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.algos import AlgoContext, advantage
from rlvr.algos.trapo import hashed_unlabeled, majority_rewards, select_unlabeled, trajectory_similarity
from rlvr.errors import MissingInputError
from rlvr.tasks.base import Problem


def test_majority_must_be_unique() -> None:
    assert majority_rewards(["7", "7", "8"]) == ([1.0, 1.0, 0.0], True)
    assert majority_rewards(["7", "8"]) == ([0.0, 0.0], False)  # tie: no majority, every response 0
    assert majority_rewards(["7", None, None]) == ([0.0, 0.0, 0.0], False)  # failed parses are singletons
    assert majority_rewards(["7", "7", None]) == ([1.0, 1.0, 0.0], True)
    assert majority_rewards([None, None]) == ([0.0, 0.0], False)


def test_trajectory_cosine_and_selection() -> None:
    # z-normalised [0,1,0,1] matches itself (cos 1) and its mirror (cos -1): mean 0
    assert trajectory_similarity([0, 1, 0, 1], [[0, 1, 0, 1], [1, 0, 1, 0]]) == pytest.approx(0.0, abs=1e-12)
    # T = 3: [0, 1, 0] against the first 3 of [0.2, 0.9, 0.2, 0.5], an affine copy: cos 1
    assert trajectory_similarity([0.0, 1.0, 0.0], [[0.2, 0.9, 0.2, 0.5]]) == pytest.approx(1.0)
    # a 2-entry row truncates everything to T = 2: rising (cos 1) and falling (cos -1)
    assert trajectory_similarity([0.0, 1.0, 0.0], [[0.2, 0.9, 0.2, 0.5], [0.3, 0.0]]) == pytest.approx(0.0, abs=1e-9)
    scores = {0: 0.9, 1: 0.1, 2: 0.5, 3: -0.2}
    assert select_unlabeled(scores, top_k=0.25, threshold=0.4) == {0, 2}
    assert select_unlabeled(scores, top_k=0.0, threshold=2.0) == {0}  # at least one
    assert select_unlabeled({}, 0.1, 0.4) == set()


def make_ctx(rewards: list[float], answers: list[str]) -> AlgoContext:
    # prompts L (labelled), U1, U2 (unlabelled), three responses each
    problems = [Problem(pid, "q", "a", meta={"labeled": pid == "L"}) for pid in ("L", "U1", "U2") for _ in range(3)]
    return AlgoContext(
        response_mask=torch.ones(9, 1, dtype=torch.float64),
        rewards=torch.tensor(rewards, dtype=torch.float64),
        correct=torch.tensor([r > 0 for r in rewards]),
        group_ids=torch.arange(3).repeat_interleave(3),
        prompt_ids=[p.id for p in problems],
        extras={"problems": problems, "responses": answers},
    )


def grpo3(values: list[float]) -> list[float]:
    mean = sum(values) / 3
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
    return [(v - mean) / (std + 1e-6) for v in values]


def test_two_steps_by_hand() -> None:
    comp = advantage.build("trapo", {"warm_up": 2, "extract": "first_line"})
    # step 1: L rewards (1,0,0) -> pass 1/3; U1 answers 7,8,9 -> no majority -> 0; U2 5,5,5 -> 1
    step1 = comp(make_ctx([1, 0, 0, 0, 0, 0, 0, 0, 0], ["x"] * 3 + ["7", "8", "9"] + ["5", "5", "5"]))
    assert step1[:3, 0].tolist() == pytest.approx(grpo3([1, 0, 0]))
    assert step1[3:].abs().sum() == 0.0  # warm-up: no database yet, every unlabelled group dropped
    assert comp.fn.metrics["trapo/unlabeled_dropped"] == 2.0
    # step 2: L (1,1,0) -> history (1/3, 2/3) rising; U1 7,7,8 -> pseudo (1,1,0), history (0, 2/3) rising: cos 1
    # U2 5,6,9 -> no majority, history (1, 0) falling: cos -1 -> dropped (below 0.4 and not the top one)
    ctx = make_ctx([1, 1, 0, 0, 1, 1, 0, 0, 0], ["x"] * 3 + ["7", "7", "8"] + ["5", "6", "9"])
    step2 = comp(ctx)
    assert step2[:3, 0].tolist() == pytest.approx(grpo3([1, 1, 0]))
    assert step2[3:6, 0].tolist() == pytest.approx(grpo3([1, 1, 0]))  # pseudo labels, not the verifier's
    assert step2[6:].abs().sum() == 0.0
    metrics = comp.fn.metrics
    assert metrics["trapo/similarity_selected"] == pytest.approx(1.0)
    assert metrics["trapo/database_size"] == 2.0  # L and U1's snapshot
    assert metrics["trapo/majority_frac"] == 0.5
    # pseudo (1,1,0 | 0,0,0) vs verifier (0,1,1 | 0,0,0): 4 of 6 agree
    assert metrics["trapo/pseudo_label_accuracy"] == pytest.approx(4 / 6)
    state = comp.state_dict()
    assert state["labeled_history"] == {"L": [pytest.approx(1 / 3), pytest.approx(2 / 3)]}
    assert state["unlabeled_history"]["U2"] == [1.0, 0.0]


def test_labels_from_a_hash_or_missing() -> None:
    ctx = make_ctx([1, 0, 0] * 3, ["x"] * 9)
    ctx.extras["problems"] = [Problem(p, "q", "a") for p in ctx.prompt_ids]
    with pytest.raises(MissingInputError, match="labeled"):
        advantage.build("trapo")(ctx)
    ids = [f"p{i}" for i in range(400)]
    hidden = sum(hashed_unlabeled(p, 0.5) for p in ids)
    assert 150 < hidden < 250 and hashed_unlabeled("p1", 0.5) == hashed_unlabeled("p1", 0.5)
    assert not any(hashed_unlabeled(p, 0.0) for p in ids) and all(hashed_unlabeled(p, 1.0) for p in ids)
    out = advantage.build("trapo", {"unlabeled_fraction": 0.0})(ctx)  # all labelled: plain GRPO
    assert torch.allclose(out, advantage.build("grpo")(ctx))
