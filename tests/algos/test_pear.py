"""pear (inferred form): phase split at </think> and R += -alpha H_think + beta H_answer."""

from __future__ import annotations

import pytest
import torch

from rlvr.algos import AlgoContext, reward
from rlvr.algos.pear import phase_entropies
from rlvr.algos.shaping import think_split

MARKER = "</think>"


def test_think_split_cases() -> None:
    # "ab</think>cd": the marker ends at character 10
    assert think_split("ab</think>cd", 12, MARKER, 1.0, text_tokens=12) == (10, "exact")  # 1 char = 1 token
    assert think_split("ab</think>cd", 6, MARKER, 1.0, text_tokens=5) == (5, "approx")  # round(6 * 10/12)
    assert think_split("abc", 4, MARKER, 0.5) == (2, "no_marker")  # round(0.5 * 4)
    assert think_split("abc", 4, MARKER, 1.0) == (4, "no_marker")


def test_phase_entropies() -> None:
    entropy = torch.tensor([[1.0, 2.0, 3.0, 4.0, 9.0], [5.0, 7.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0, 0.0]])
    think, answer = phase_entropies(entropy, mask, [2, 0])
    # row 0: think (1+2)/2 = 1.5, answer (3+4)/2 = 3.5 (the padded 9 is ignored); row 1: empty think -> 0, answer 6
    assert think.tolist() == pytest.approx([1.5, 0.0])
    assert answer.tolist() == pytest.approx([3.5, 6.0])


def ctx_of() -> AlgoContext:
    # row 0: "ab</think>cd" + EOS = 13 tokens, exact split after 10: entropy 1 on the 10 thinking tokens, 4 after
    # row 1: "zzz" + EOS = 4 tokens, no marker: entropies 2, 2, 6, 6
    entropy = torch.tensor([[1.0] * 10 + [4.0] * 3, [2.0, 2.0, 6.0, 6.0] + [0.0] * 9])
    mask = torch.tensor([[1.0] * 13, [1.0] * 4 + [0.0] * 9])
    return AlgoContext(
        response_mask=mask,
        rewards=torch.tensor([1.0, 0.0]),
        truncated=torch.tensor([False, False]),
        old_entropy=entropy,
        extras={"responses": ["ab</think>cd", "zzz"]},
    )


def test_pear_reward() -> None:
    comp = reward.build("pear", {})
    # alpha 0.1, beta 0: row 0: -0.1 * 1 = -0.1;  row 1 (all thinking): -0.1 * (2+2+6+6)/4 = -0.4
    assert comp(ctx_of()).tolist() == pytest.approx([0.9, -0.4])
    metrics = comp.prepare(ctx_of())
    assert metrics["pear/think_entropy"] == pytest.approx(2.5)  # (1 + 4) / 2
    assert metrics["pear/answer_entropy"] == pytest.approx(2.0)  # (4 + 0) / 2
    assert metrics["pear/frac_split_exact"] == 0.5 and metrics["pear/frac_split_no_marker"] == 0.5
    # think_fraction 0.5 and beta 0.05: row 0: -0.1 + 0.05*4 = 0.1;  row 1 split at 2: -0.1*2 + 0.05*6 = 0.1
    both = reward.build("pear", {"beta": 0.05, "think_fraction": 0.5})
    assert both(ctx_of()).tolist() == pytest.approx([1.1, 0.1])
