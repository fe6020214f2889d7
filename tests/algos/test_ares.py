"""ARES (arXiv 2510.08457): HWE counts, hierarchical entropy score and the alpha controller, by hand
and against a loop reference of the official per-response threshold."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rlvr.algos import AlgoContext, controller, reward
from rlvr.algos.ares import (
    bucket_statistics,
    entropy_score,
    following_windows,
    hwe_counts,
    response_thresholds,
    trigger_mask,
)
from rlvr.errors import ConfigError, MissingInputError


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_following_windows_and_counts_by_hand() -> None:
    entropy = torch.tensor([[0.0, 1.0, 3.0, 1.0, 0.0, 2.0, 9.0]])
    mask = torch.tensor([[1.0] * 6 + [0.0]])
    means, complete = following_windows(entropy, mask, 2)
    # W_t = mean(H_{t+1}, H_{t+2}) for t + 2 <= 5: W_0..W_3 = 2, 2, 0.5, 1
    assert complete[0].tolist() == [True] * 4 + [False] * 3
    assert means[0, :4].tolist() == pytest.approx([2.0, 2.0, 0.5, 1.0])
    hits = mask > 0
    assert hwe_counts(hits, means, complete, 1.5).tolist() == [2.0]
    assert hwe_counts(hits, means, complete, 0.5).tolist() == [4.0]
    # triggers from the characters of the text: '+' at t = 0, 2, 4 (t = 4 has no complete window)
    ctx = AlgoContext(response_mask=mask, extras={"responses": ["+a+b+c"]})
    triggers = trigger_mask(ctx, ["+"], "test")
    assert triggers[0].tolist() == [True, False, True, False, True, False, False]
    assert hwe_counts(triggers, means, complete, 1.5).tolist() == [1.0]
    assert hwe_counts(triggers, means, complete, 0.5).tolist() == [2.0]
    # a final EOS token decodes to nothing; explicit token strings are normalised (leading marker, case)
    eos = AlgoContext(response_mask=mask, extras={"responses": ["+a+b+"]})
    assert trigger_mask(eos, ["+"], "test")[0].tolist() == [True, False, True, False, True, False, False]
    tokens = AlgoContext(response_mask=mask, extras={"response_tokens": [["ĠWait", "x", "▁wait", "y", "z", "q"]]})
    assert trigger_mask(tokens, ["wait"], "test")[0].tolist() == [True, False, True, False, False, False, False]
    with pytest.raises(MissingInputError, match="one string per response token"):
        trigger_mask(AlgoContext(response_mask=mask, extras={"responses": ["+a"]}), ["+"], "test")


def _official_threshold(row: list[float], window: int, percentile: float) -> float:
    """The official per-sample loop: complete following windows, later positions filled with the running mean."""
    values: list[float] = []
    for i in range(len(row)):
        if len(row) - i - 1 >= window:
            values.append(float(np.mean(row[i + 1 : i + 1 + window])))
        else:
            values.append(float(np.mean(values)) if values else row[i])
    return float(np.percentile(values, percentile)) if values else 0.0


def test_response_thresholds_match_the_official_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    lengths = [12, 5, 4, 1, 0, 9]
    entropy = torch.rand(6, 12, generator=gen, dtype=torch.float64) * 2
    mask = (torch.arange(12) < torch.tensor(lengths)[:, None]).double()
    for window, percentile in ((4, 95.0), (2, 50.0), (8, 98.0)):
        got = response_thresholds(entropy, mask, window, percentile)
        want = [_official_threshold(entropy[i, :n].tolist(), window, percentile) for i, n in enumerate(lengths)]
        assert got.tolist() == pytest.approx(want)


def test_entropy_score_branches_by_hand() -> None:
    a = 0.5
    # easy correct, Delta = 6, m = 1, over 5 > kappa 2: huber 4, 4 / 3 * .5 > cap -> -cap
    assert entropy_score(10, 4, 0, True, a) == pytest.approx(-0.5)
    # easy correct, over 1: huber .25, .25 / 3 * .5
    assert entropy_score(6, 4, 0, True, a) == pytest.approx(-0.25 / 3 * 0.5)
    # medium correct, Delta = -3, m = max(1, .25 * 4) = 1: |Delta| - m = 2, huber 4 / 6, / (1 + 3) * .5
    assert entropy_score(1, 4, 1, True, a) == pytest.approx(-(4 / 6) / 4 * 0.5)
    # easy wrong, no excess: sigmoid(0) * cap * .6 = .15; medium wrong, over 3, T 2.5: sig(1.2) * .5 * .8
    assert entropy_score(4, 4, 0, False, a) == pytest.approx(0.15)
    assert entropy_score(8, 4, 1, False, a) == pytest.approx(_sig(1.2) * 0.4)
    # hard: m = 1.4, cap = .6; correct with Delta = -1 >= -m: sig(.4 / 3) * .6
    assert entropy_score(3, 4, 2, True, a) == pytest.approx(_sig(0.4 / 3) * 0.6)
    # hard correct far below target (m = 3.5): -0.5 huber(6.5, 4) / 7.5 * .6 = -.18
    assert entropy_score(0, 10, 2, True, a) == pytest.approx(-0.18)
    # hard wrong, over 4.6, T 3: sig(4.6 / 3) * .6
    assert entropy_score(10, 4, 2, False, a) == pytest.approx(_sig(4.6 / 3) * 0.6)


def test_bucket_statistics_round_half_to_even() -> None:
    counts = torch.tensor([1.0, 2.0, 3.0, 3.0, 0.0, 5.0])
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    buckets = torch.tensor([0, 0, 0, 0, 2, 2])
    means, targets = bucket_statistics(counts, buckets, groups)
    # easy: mean of the prompts' means (1.5, 3) = 2.25 -> 2; hard: 2.5 -> 2 (half to even)
    assert means == pytest.approx({0: 2.25, 2: 2.5}) and targets == {0: 2, 2: 2}


def _ctx(levels: list[float], correct: list[bool]) -> AlgoContext:
    """Rows of constant entropy (so the response threshold is that constant), 6 tokens each."""
    return AlgoContext(
        response_mask=torch.ones(4, 6),
        rewards=torch.tensor([float(c) for c in correct]),
        correct=torch.tensor(correct),
        group_ids=torch.tensor([0, 0, 1, 1]),
        old_entropy=torch.tensor(levels).unsqueeze(-1).expand(4, 6).clone(),
    )


def test_ares_reward_and_threshold_ema() -> None:
    shaper = reward.build("ares").fn
    # thresholds 1, 2, 3, 4: median 2.5 on the first step -> rows 2, 3 count their 6 - 4 = 2 complete windows
    # group 0 (acc 1/2) medium: counts 0, 0 -> target 0; group 1 (acc 1) easy: counts 2, 2 -> target 2
    # row 0 medium correct at the target: 0; row 1 medium wrong: sig(0) * .5 * .8 = .2; rows 2, 3: 0
    out = shaper(_ctx([1.0, 2.0, 3.0, 4.0], [True, False, True, True]))
    assert out.tolist() == pytest.approx([1.0, 0.2, 1.0, 1.0])
    metrics = shaper.prepare(None)
    assert metrics["ares/threshold"] == 2.5 and metrics["ares/hwe_count_mean"] == 1.0
    assert metrics["ares/target_easy"] == 2.0 and metrics["ares/target_medium"] == 0.0
    # the next step counts with the previous EMA (2.5), then folds its own median 5 in
    shaper(_ctx([5.0] * 4, [True, False, True, True]))
    assert shaper.prepare(None)["ares/threshold"] == 2.5
    assert shaper.ema == pytest.approx(0.99 * 2.5 + 0.01 * 5.0)
    fresh = reward.build("ares").fn
    fresh.load_state_dict(shaper.state_dict())
    assert fresh.ema == shaper.ema
    # official start without validation: threshold -1, every complete window counts
    counted = reward.build("ares", {"threshold_init": -1.0}).fn
    counted(_ctx([1.0, 2.0, 3.0, 4.0], [True, False, True, True]))
    assert counted.prepare(None)["ares/hwe_count_mean"] == 2.0


def test_alpha_controller_updates_before_scoring() -> None:
    ctrl = controller.build("ares_alpha").fn
    # official same-batch target: delta = mean - round(mean) (easy), round(mean) - mean (hard)
    alphas = ctrl.update({0: 2.25, 2: 2.5}, {0: 2, 2: 2})
    assert alphas == pytest.approx({0: 0.5 + 0.05 * 0.25, 1: 0.5, 2: 0.5 - 0.05 * 0.5})
    prev = controller.build("ares_alpha", {"delta_target": "previous", "alpha_max": 0.55}).fn
    prev.update({0: 2.25}, {0: 2})
    assert prev.update({0: 3.0}, {0: 3})[0] == pytest.approx(0.55)  # 0.5125 + 0.05 * (3 - 2), clipped
    assert ctrl.update({0: 3.0}, {0: 3})[0] == pytest.approx(0.5125)  # same-batch target: delta 0
    restored = controller.build("ares_alpha").fn
    restored.load_state_dict(ctrl.state_dict())
    assert restored.alpha == ctrl.alpha and restored.targets == ctrl.targets
    assert restored.prepare(None)["ares_alpha/hard"] == pytest.approx(0.475)
    # bound to the shaper, the controller's alpha (after its update on this batch) sets the cap
    shaper = reward.build("ares").fn
    ctrl = controller.build("ares_alpha", {"alpha_init": 1.0}).fn
    ctrl.bind(SimpleNamespace(reward_shaping=[SimpleNamespace(name="ares", fn=shaper)]))
    out = shaper(_ctx([1.0, 2.0, 3.0, 4.0], [True, False, True, True]))
    assert out.tolist() == pytest.approx([1.0, 0.4, 1.0, 1.0])  # medium wrong: sig(0) * 1.0 * .8
    with pytest.raises(ConfigError, match="reward 'ares'"):
        ctrl.bind(SimpleNamespace(reward_shaping=[]))
