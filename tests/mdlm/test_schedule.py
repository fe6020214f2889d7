"""ASS and uniform decoding schedules and their EOSER factors, against hand-computed values."""

from __future__ import annotations

import pytest

from rlvr.errors import ConfigError
from rlvr.rollout.diffusion_schedule import ass_schedule, decoding_schedule, uniform_schedule
from rlvr.train.config import load_config


def _table(steps):
    return [(s.end, s.count) for s in steps]


def test_ass_one_block_commits_powers_of_two_and_the_rest_last():
    # L = 16: S = 4 steps of 1, 2, 4 and 16 - 7 = 9 tokens, all in one block ending at 16.
    steps = ass_schedule(16)
    assert _table(steps) == [(16, 1), (16, 2), (16, 4), (16, 9)]
    # EOSER under ASS: 0.01 + 0.99 (2^(i+1) - 1) / 2^4 = 0.01 + 0.99 * (1, 3, 7, 15) / 16
    expected = [0.01 + 0.99 * k / 16 for k in (1, 3, 7, 15)]
    assert [s.eos_gamma for s in steps] == pytest.approx(expected)
    assert [s.eos_gamma for s in steps] == pytest.approx([0.071875, 0.195625, 0.443125, 0.938125])


def test_ass_blocks_from_the_end():
    # L = 16, 2 blocks: last block 2^3 + 1 + 0 = 9 tokens in one step; first block 7 tokens in steps 1, 2, 4.
    assert _table(ass_schedule(16, block_num=2)) == [(7, 1), (7, 2), (7, 4), (16, 9)]
    # L = 20 (S = 4, remainder 4), 3 blocks: 8 + 1 + 4 = 13 (last), 2^2 = 4 (middle), 3 = 1 + 2 (first).
    assert _table(ass_schedule(20, block_num=3)) == [(3, 1), (3, 2), (7, 4), (20, 13)]
    # one block of 20: 1, 2, 4, then the 13 left
    assert _table(ass_schedule(20)) == [(20, 1), (20, 2), (20, 4), (20, 13)]
    # the smallest: L = 2 or 3 is one step
    assert _table(ass_schedule(3)) == [(3, 3)]


def test_uniform_schedule_equal_shares_and_linear_eoser():
    steps = uniform_schedule(10, 4)  # 10 = 3 + 3 + 2 + 2
    assert _table(steps) == [(10, 3), (10, 3), (10, 2), (10, 2)]
    assert [s.eos_gamma for s in steps] == pytest.approx([0.4, 0.6, 0.8, 1.0])  # 0.4 + 0.6 k / 3
    assert [s.eos_gamma for s in decoding_schedule(10, "uniform", steps=4)] == pytest.approx([0.4, 0.6, 0.8, 1.0])
    assert _table(decoding_schedule(4, "uniform")) == [(4, 1)] * 4  # steps default to one token each


@pytest.mark.parametrize(
    "call",
    [
        lambda: ass_schedule(16, block_num=5),  # at most log2(16) = 4 blocks
        lambda: ass_schedule(1),
        lambda: uniform_schedule(4, 5),
        lambda: decoding_schedule(16, "ass", steps=3),
        lambda: decoding_schedule(16, "uniform", block_num=2),
    ],
)
def test_impossible_schedules_are_config_errors(call):
    with pytest.raises(ConfigError):
        call()


def test_the_config_checks_the_schedule_and_the_sampler_options():
    load_config(None, ["model.kind=mdlm", "rollout.max_new_tokens=16", "rollout.mdlm.block_num=4"])
    with pytest.raises(ConfigError, match="block_num"):
        load_config(None, ["model.kind=mdlm", "rollout.max_new_tokens=16", "rollout.mdlm.block_num=5"])
    with pytest.raises(ConfigError, match="top_p"):
        load_config(None, ["model.kind=mdlm", "rollout.top_p=0.9"])
    with pytest.raises(ConfigError, match="backend"):
        load_config(None, ["model.kind=mdlm", "rollout.backend=vllm"])
    load_config(None, ["rollout.mdlm.block_num=5"])  # decoding options are not read for a causal model
