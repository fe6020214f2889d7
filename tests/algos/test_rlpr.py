"""RLPR by hand: the four answer scores, the threshold shaping and format mix, the repetition penalty,
the first-visit debias cache, and the EMA reward-std filter step by step (plus its loss equalling the
loss without the dropped groups)."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.algos import AlgoContext, reward, token_weight
from rlvr.algos.rlpr import answer_score, repetition_penalty, rlpr_reward
from rlvr.errors import ConfigError, MissingInputError

LOGPROBS = torch.tensor([[math.log(0.5), math.log(0.25)], [math.log(0.8), 0.0], [0.0, 0.0]])
MASK = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])


@pytest.mark.parametrize(
    ("score", "expected"),
    [
        ("mean_prob", [0.375, 0.8, 0.0]),
        ("prob", [0.125, 0.8, 0.0]),
        ("geo_mean_prob", [math.sqrt(0.125), 0.8, 0.0]),
        ("mean_logprob", [(math.log(0.5) + math.log(0.25)) / 2, math.log(0.8), 0.0]),
    ],
)
def test_answer_scores(score: str, expected: list[float]) -> None:
    # a row without answer tokens scores 0 whatever the score (the official compute_scoreB)
    assert answer_score(LOGPROBS, MASK, score).tolist() == pytest.approx(expected, rel=1e-6)


def test_threshold_shaping_and_format_mix() -> None:
    score_b, score_a = torch.tensor([0.375, 0.8, 0.1]), torch.tensor([0.2, 0.9, 0.1])
    fmt = torch.tensor([1.0, 0.0, 1.0])
    # delta = (0.175, -0.1, 0): below 0 -> 0; then 0.9 * shaped + 0.1 * format
    got = rlpr_reward(score_b, score_a, fmt, shaping="threshold", threshold=0.0, format_coef=0.1)
    assert got.tolist() == pytest.approx([0.9 * 0.175 + 0.1, 0.0, 0.1])
    ident = rlpr_reward(score_b, score_a, fmt, shaping="identity", threshold=0.0, format_coef=0.1)
    assert ident.tolist() == pytest.approx([0.9 * 0.175 + 0.1, -0.09, 0.1])


def test_repetition_penalty() -> None:
    window = " ".join(f"w{i}" for i in range(10))
    assert repetition_penalty(" ".join([window] * 10)) == -1.0  # (w0 .. w9) starts at words 0, 10, ..., 90
    assert repetition_penalty(" ".join([window] * 9)) == 0.0  # 9 times
    ten = "a " * 19  # 19 words "a": the window of ten "a" occurs 10 times
    assert repetition_penalty(ten) == -1.0
    assert repetition_penalty("a " * 18) == 0.0  # 9 occurrences
    assert repetition_penalty("a_a_a_a_a a_a_a_a_a a_a_a_a_a a_a_a_a") == -1.0  # 19 words after splitting on "_"
    assert repetition_penalty("a " * 10) == 0.0  # no more words than the window


R1_OK = "<think>t</think><answer>4</answer>"


def make_ctx(step: int = 0, baseline: list[float] | None = None, texts: list[str] | None = None) -> AlgoContext:
    baseline = baseline or [0.5, 0.5, 0.1, 0.1]
    return AlgoContext(
        response_mask=torch.ones(4, 3),
        rewards=torch.tensor([1.0, 0.0, 0.0, 1.0]),
        group_ids=torch.tensor([0, 0, 1, 1]),
        prompt_ids=["p", "p", "q", "q"],
        step=step,
        extras={
            "responses": texts or [R1_OK, R1_OK, "<think>t</think><answer>4", "no tags"],
            "reference_answer_logprobs": torch.log(torch.tensor([[0.9, 0.7], [0.3, 0.1], [0.6, 1.0], [0.9, 1.0]])),
            "reference_answer_mask": torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0], [1.0, 0.0]]),
            "reference_answer_valid": torch.tensor([True, True, True, False]),
            "reference_answer_baseline_logprobs": torch.log(torch.tensor(baseline)).unsqueeze(-1),
            "reference_answer_baseline_mask": torch.ones(4, 1),
        },
    )


def test_rlpr_reward_end_to_end_and_first_visit_debias() -> None:
    shaper = reward.build("rlpr")
    # s_B = (0.8, 0.2, 0.6, 0 [malformed]); s_A = (0.5, 0.5, 0.1, 0.1); format = (1, 1, 0 [no </answer>], 0)
    # delta = (0.3, -0.3, 0.5, -0.1) -> (0.3, 0, 0.5, 0); r = 0.9 * . + 0.1 * format
    assert shaper(make_ctx()).tolist() == pytest.approx([0.9 * 0.3 + 0.1, 0.1, 0.45, 0.0])
    metrics = shaper.prepare(make_ctx())
    assert metrics["rlpr/well_formed_frac"] == 0.75
    # a later step: "p" keeps its first s_A (0.5) although this step's baseline says 0.7
    later = make_ctx(step=1, baseline=[0.7, 0.7, 0.1, 0.1])
    assert shaper(later).tolist() == pytest.approx([0.9 * 0.3 + 0.1, 0.1, 0.45, 0.0])
    assert shaper.state_dict() == {"score_a": pytest.approx({"p": 0.5, "q": 0.1})}
    current = reward.build("rlpr", {"debias": "current"})
    assert current(later).tolist() == pytest.approx([0.9 * 0.1 + 0.1, 0.1, 0.45, 0.0])
    none = reward.build("rlpr", {"debias": "none", "format_coef": 0.0})
    assert none(later).tolist() == pytest.approx([0.8, 0.2, 0.6, 0.0])
    restored = reward.build("rlpr")
    restored.load_state_dict(shaper.state_dict())
    assert restored(later).tolist() == shaper(later).tolist()


def test_repetition_penalty_only_where_the_reward_is_not_zero() -> None:
    loop = "<think>" + "a " * 20 + "</think><answer>4</answer>"  # "<think>a" then 19 words "a"
    # row 0 (reward 0.37) and row 1 (0.1) repeat and get -1; row 3 (reward 0) repeats but stays 0
    texts = [loop, loop, "<think>t</think><answer>4", "a " * 19]
    got = reward.build("rlpr")(make_ctx(texts=texts))
    assert got.tolist() == pytest.approx([0.9 * 0.3 + 0.1 - 1.0, 0.1 - 1.0, 0.45, 0.0])
    assert reward.build("rlpr", {"repetition_penalty": False})(make_ctx(texts=texts)).tolist() == pytest.approx(
        [0.9 * 0.3 + 0.1, 0.1, 0.45, 0.0]
    )


def test_rlpr_needs_the_splice_and_checks_its_knobs() -> None:
    ctx = make_ctx()
    del ctx.extras["reference_answer_logprobs"]
    with pytest.raises(MissingInputError, match="reference_answer_logprobs"):
        reward.build("rlpr")(ctx)
    with pytest.raises(ConfigError, match="format"):
        reward.build("rlpr", {"format": "xml"})
    assert {"reference_answer_logprobs", "reference_answer_baseline_logprobs"} <= reward.entry("rlpr").requires


SQ2 = math.sqrt(2.0)
A, B, C, D = [0.0, 2.0], [1.0, 1.0], [0.0, 1.0], [0.0, 1.2]  # group reward pairs: std sqrt2, 0, sqrt2/2, 0.6 sqrt2


def filter_ctx(step: int, groups: list[list[float]]) -> AlgoContext:
    rewards = torch.tensor([r for g in groups for r in g])
    n = len(rewards)
    return AlgoContext(
        response_mask=torch.ones(n, 2),
        rewards=rewards,
        group_ids=torch.arange(len(groups)).repeat_interleave(2),
        step=step - 1,  # ctx.step is 0-based; the filter counts from 1
        extras={"row_index": torch.arange(n)},
    )


def test_std_filter_ema_step_by_step() -> None:
    f = token_weight.build("rlpr_std_filter", {"beta": 1.0, "ema_ratio": 0.5, "ema_start_step": 2, "start_step": 4})
    m1 = f.prepare(filter_ctx(1, [B]))  # before ema_start_step: not recorded, nothing filtered
    assert m1["rlpr_std_filter/threshold"] == 0.0 and f.fn.history == []
    f.prepare(filter_ctx(2, [A, B]))  # recorded: mean std sqrt2 / 2
    f.prepare(filter_ctx(3, [A, C]))  # recorded: 3 sqrt2 / 4
    assert f.fn.history == pytest.approx([SQ2 / 2, 3 * SQ2 / 4])
    assert f.fn.kept.tolist() == [True] * 4
    # step 4: EMA starts as the mean of the recorded steps, 5 sqrt2 / 8 = 0.884: only A (sqrt2) stays
    m4 = f.prepare(filter_ctx(4, [A, B, C]))
    assert m4["rlpr_std_filter/threshold"] == pytest.approx(5 * SQ2 / 8)
    assert f.fn.kept.tolist() == [True, True, False, False, False, False]
    assert m4["rlpr_std_filter/kept_groups_frac"] == pytest.approx(1 / 3)
    # step 5: EMA = 0.5 * 5 sqrt2 / 8 + 0.5 * (step 4's mean std, sqrt2 / 2) = 9 sqrt2 / 16 = 0.795
    m5 = f.prepare(filter_ctx(5, [C, D]))
    assert m5["rlpr_std_filter/threshold"] == pytest.approx(9 * SQ2 / 16)
    assert f.fn.kept.tolist() == [False, False, True, True]
    out = f(filter_ctx(5, [C, D]).select(torch.tensor([1, 2])))
    assert out.loss_mask.tolist() == [[0.0, 0.0], [1.0, 1.0]]
    restored = token_weight.build("rlpr_std_filter", {"beta": 1.0, "ema_ratio": 0.5, "ema_start_step": 2, "start_step": 4})
    restored.load_state_dict(f.state_dict())
    assert restored.fn.ema == f.fn.ema and restored.fn.last == f.fn.last
    with pytest.raises(ConfigError, match="ema_start_step < start_step"):
        token_weight.build("rlpr_std_filter", {"ema_start_step": 5, "start_step": 5})


def test_std_filter_loss_equals_the_loss_without_the_dropped_groups() -> None:
    from rlvr.train.config import AlgoConfig
    from rlvr.train.pipeline import Pipeline

    def loss(pipeline: Pipeline, ctx: AlgoContext) -> float:
        pipeline.shape_and_estimate(ctx)
        pipeline.prepare(ctx)
        mask = pipeline.denominator_mask(ctx)
        ctx.global_num_tokens, ctx.global_num_seqs = float(mask.sum()), float((mask.sum(-1) > 0).sum())
        return float(pipeline.loss(ctx)[0])

    shifts = torch.tensor([[0.1, -0.2, 0.3], [0.2, 0.1, -0.1], [-0.3, 0.2, 0.1], [0.05, 0.3, -0.2]])

    def ctx_of(groups: list[list[float]], lengths: list[int]) -> AlgoContext:
        ctx = filter_ctx(4, groups)
        ctx.response_mask = torch.tensor([[1.0] * n + [0.0] * (3 - n) for n in lengths])
        ctx.old_logprobs = torch.full((len(lengths), 3), -1.0)
        ctx.logprobs = ctx.old_logprobs + shifts[: len(lengths)]
        return ctx

    knobs = {"name": "rlpr_std_filter", "beta": 1.0, "ema_start_step": 3, "start_step": 4}
    filtered = Pipeline.from_config(AlgoConfig(token_weights=[knobs]))
    filtered.token_weights[0].fn.history = [1.0]  # threshold 1.0 at step 4: keeps A (sqrt2), drops C (sqrt2 / 2)
    whole = loss(filtered, ctx_of([A, C], [3, 2, 1, 3]))
    alone = loss(Pipeline.from_config(AlgoConfig()), ctx_of([A], [3, 2]))
    assert whole == pytest.approx(alone, rel=1e-6)
