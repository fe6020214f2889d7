"""SPAE probes: which prefixes are probed, the official probe scoring by hand, the potentials grid."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from rlvr.algos.context import AlgoContext
from rlvr.algos.spae import Spae
from rlvr.models.tiny import char_tokenizer
from rlvr.rollout.base import TOP_IDS, TOP_LOGPROBS
from rlvr.rollout.spae import SPAEProber, probe_targets, token_texts
from rlvr.rollout.stage import RolloutResult
from rlvr.rollout.vllm import assemble_batch
from rlvr.tasks.base import Problem
from rlvr.train.config import SPAEProbeConfig


def test_probe_targets_by_hand():
    # two probe rows of width 3, top-2 lists; reference answer ids [7, 8] and [9]
    top_ids = torch.tensor([[[7, 1], [2, 8], [8, 7]], [[1, 2], [9, 3], [4, 4]]])
    top_lp = torch.log(torch.tensor([[[0.5, 0.25], [0.6, 0.3], [0.9, 0.05]], [[0.7, 0.2], [0.4, 0.4], [0.5, 0.5]]]))
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])  # row 1 generated one token only
    lp, h, pos = probe_targets(top_lp, top_ids, mask, [[7, 8], [9]])
    assert lp.shape == (2, 2)  # W = min(longest answer 2, probe width 3)
    # row 0: y*_0 = 7 listed first (0.5), y*_1 = 8 listed second (0.3); row 1: 9 not listed at position 0 -> -10
    # (its position 1 is past its one-token answer: -10 there too, and outside ``pos``)
    torch.testing.assert_close(lp, torch.tensor([[math.log(0.5), math.log(0.3)], [-10.0, -10.0]]))
    entropy = lambda ps: -sum(p * math.log(p) for p in ps)  # noqa: E731 - the list's entropy, not renormalised
    torch.testing.assert_close(h, torch.tensor([[entropy([0.5, 0.25]), entropy([0.6, 0.3])], [entropy([0.7, 0.2]), entropy([0.4, 0.4])]]))
    assert pos.tolist() == [[1.0, 1.0], [1.0, 0.0]]  # row 1: its answer has one token (and it stopped)


def _lists(rows: list[list[tuple[str, float]]], tok, width: int = 2):
    """TOP_IDS / TOP_LOGPROBS of probe rows whose position 0 lists the given (char, prob) pairs."""
    ids = torch.zeros(len(rows), width, 2, dtype=torch.long)
    lp = torch.zeros(len(rows), width, 2)
    for r, pairs in enumerate(rows):
        for j, (char, prob) in enumerate(pairs):
            ids[r, 0, j] = tok.convert_tokens_to_ids(char)
            lp[r, 0, j] = math.log(prob)
    return ids, lp


def test_probes_start_after_each_step_and_their_potential_lands_on_the_step_end():
    tok = char_tokenizer()
    eos = tok.eos_token_id
    enc = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    problem = Problem(id="q", prompt="3+4=", answer="7")
    batch = assemble_batch(tok, [enc("3+4=")], [enc("1+2*3") + [eos], enc("12") + [eos]], n=2, max_new_tokens=8)
    rollout = RolloutResult([problem, problem], batch, torch.zeros(2))
    ctx = AlgoContext(response_mask=batch.response_mask, extras={"responses": batch.responses})
    spae = Spae(split="length", step_len=2)  # steps end at the 2nd, 4th, ... token and at the last one
    cfg = SPAEProbeConfig(samples=2, top_logprobs=2, prompt="=")
    # per probed prefix, the two probes' position-0 lists: "7" listed (0.5) or absent
    lists = [[("7", 0.5), ("1", 0.25)], [("2", 0.6), ("3", 0.3)], [("7", 0.2), ("1", 0.7)], [("7", 0.9), ("2", 0.05)],
             [("5", 0.5), ("6", 0.5)], [("5", 0.5), ("6", 0.5)]]  # fmt: skip
    calls = []

    def sample(model, problems, sampling, *, key, prefixes, score):
        calls.append((problems, sampling, key, prefixes, score))
        probes = assemble_batch(tok, [enc("x")] * len(prefixes), [enc("7") + [eos]] * (2 * len(prefixes)), n=2, max_new_tokens=4)
        probes.extras[TOP_IDS], probes.extras[TOP_LOGPROBS] = _lists(lists, tok)
        return RolloutResult(problems, probes, torch.zeros(2 * len(prefixes)))

    stage = SimpleNamespace(tokenizer=tok, sample=sample)
    grid, stats = SPAEProber(cfg, spae).potentials(stage, None, rollout, ctx, step=3)
    (problems, sampling, key, prefixes, score), = calls
    # row 0 "1+2*3<eos>": steps end at 1, 3 and 5 (the last token, not probed); row 1 "12<eos>": at 1 and 2 (last)
    assert prefixes == [enc("1+") + enc("="), enc("1+2*") + enc("="), enc("12") + enc("=")]
    assert problems == [problem] * 3 and key == (3, "spae") and score is False
    assert (sampling.n, sampling.max_new_tokens, sampling.temperature, sampling.top_logprobs) == (2, 10, 0.6, 2)

    def phi(a_probes, h_probes):  # official: a_n = exp(l) / K, c_n = exp(-H) / K with K = 1; Phi = 1.5ac + .5a - c
        a, c = sum(a_probes) / 2, sum(math.exp(-h) for h in h_probes) / 2
        return 1.5 * a * c + 0.5 * a - c

    h = lambda ps: -sum(p * math.log(p) for p in ps)  # noqa: E731
    expected = [
        phi([0.5, math.exp(-10)], [h([0.5, 0.25]), h([0.6, 0.3])]),
        phi([0.2, 0.9], [h([0.2, 0.7]), h([0.9, 0.05])]),
        phi([math.exp(-10)] * 2, [h([0.5, 0.5])] * 2),
    ]
    assert grid[0, 1].item() == pytest.approx(expected[0], abs=1e-6)
    assert grid[0, 3].item() == pytest.approx(expected[1], abs=1e-6)
    assert grid[1, 1].item() == pytest.approx(expected[2], abs=1e-6)
    assert int(torch.isfinite(grid).sum()) == 3 and stats["spae_probe/probes"] == 3.0
    assert token_texts(tok, batch) == [list("1+2*3") + [""], ["1", "2", ""]]
