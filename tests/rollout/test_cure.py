"""CURE stage 1: branch points, the merged group layout, what continuation rows train and score on."""

from __future__ import annotations

from pathlib import Path
import pytest
import torch

from rlvr.models.tiny import char_tokenizer
from rlvr.rollout.cure import CURE_BRANCH, CUREBrancher, branch_candidates, branch_points
from rlvr.rollout.engines import HFEngine
from rlvr.rollout.stage import RolloutStage, Sampling
from rlvr.tasks.countdown import countdown_problem
from rlvr.train.config import CUREConfig, load_config
from rlvr.train.logging import read_metrics
from rlvr.train.trainer import Trainer


class FakeTokenizer:
    """Three word pieces, a space and a special EOS, as a BPE vocabulary would have them."""

    all_special_ids = [8]
    pieces = {4: "the", 5: "a", 6: " x", 7: " ", 8: "<eos>"}

    def decode(self, ids, skip_special_tokens=False):
        return "".join(self.pieces[i] for i in ids)


def test_branch_candidates_follow_the_official_filter():
    ids = torch.tensor([[4, 4, 5, 6, 7, 8, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0]])
    tok = FakeTokenizer()
    # official: not position 0, not special, len(decode(t).strip()) > 1 -> only "the" at position 1 (" x" strips to "x")
    assert branch_candidates(ids, mask, tok, min_token_chars=2, skip_special=True).nonzero().tolist() == [[0, 1]]
    assert branch_candidates(ids, mask, tok, min_token_chars=1, skip_special=True).nonzero().tolist() == [[0, 1], [0, 2], [0, 3]]
    # no filter: every valid position but 0 (the space and the EOS included); padding never
    assert branch_candidates(ids, mask, tok, min_token_chars=0, skip_special=False)[0].tolist() == [0, 1, 1, 1, 1, 1, 0]
    chars = char_tokenizer()  # one character per token: the official length filter removes everything
    row = torch.tensor([chars("1+23", add_special_tokens=False)["input_ids"] + [chars.eos_token_id]])
    assert not branch_candidates(row, torch.ones_like(row), chars, min_token_chars=2, skip_special=True).any()
    assert branch_candidates(row, torch.ones_like(row), chars, min_token_chars=1, skip_special=True)[0].tolist() == [0, 1, 1, 1, 0]


def test_branch_points_draw_uniformly_among_the_top_k_entropy_candidates():
    entropy = torch.tensor([[9.0, 1.0, 5.0, 3.0, 7.0], [0.0, 2.0, 2.0, 2.0, 0.5], [4.0, 4.0, 4.0, 4.0, 4.0]])
    candidates = torch.tensor([[1, 1, 1, 1, 1], [0, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    candidates[0, 0] = False  # position 0 is never a candidate (branch_candidates): its entropy 9 is ignored
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([branch_points(entropy, candidates, 2, g) for _ in range(400)])
    counts = torch.bincount(draws[:, 0], minlength=5).tolist()
    assert counts[0] == counts[1] == counts[3] == 0 and min(counts[2], counts[4]) > 150  # 7.0 at 4 and 5.0 at 2
    assert set(draws[:, 1].tolist()) == {1, 2}  # three tied at 2.0: the first two by position
    assert draws[:, 2].eq(0).all()  # no candidate: branch at 0 (a fresh sample), as the official fallback
    assert branch_points(entropy, candidates, 1, g).tolist() == [4, 1, 0]


class LengthParity:
    """Scores 1 when a response has an even number of characters."""

    name = "length_parity"

    def score(self, problem, response: str) -> float:
        return float(len(response) % 2 == 0)


@pytest.fixture(scope="module")
def setup(spread_model):
    tok = char_tokenizer()
    tok.eos_token = "<"  # a character this model emits, so some responses end before the limit
    return tok, spread_model


def _stage(tok, **kwargs):
    sampling = Sampling(n=2, max_new_tokens=8, greedy=True)
    return RolloutStage(LengthParity(), HFEngine(tok, "off"), tok, sampling=sampling, prompts_per_step=2, max_prompt_tokens=64, **kwargs)


@pytest.mark.parametrize("score", ["full", "continuation"])
def test_cure_groups_layout_and_continuations_train_on_their_own_tokens(setup, score):
    tok, model = setup
    stage = _stage(tok)
    problems = [countdown_problem([1, 2], 3), countdown_problem([12, 5, 7], 99)]
    first = stage.sample(model, problems)  # greedy: rows 2g and 2g+1 are equal
    width = first.batch.response_mask.shape[1]
    wanted = [2, 3, 1, 4]  # the branch point of each first-pass row: its highest-entropy position (top_k=1)
    entropy = torch.zeros(4, width)
    for row, k in enumerate(wanted):
        entropy[row, k] = 5.0
    cfg = CUREConfig(enabled=True, n2=2, top_k=1, min_token_chars=0, score=score)
    out = CUREBrancher(cfg).augment(stage, model, first, entropy, key=(0, 0))
    b = out.batch
    assert b.input_ids.shape[0] == 2 * (2 + 2 * 2)
    assert b.group_ids.tolist() == [0] * 6 + [1] * 6  # one group per prompt: n1 + n1 * n2 rows
    assert b.extras[CURE_BRANCH].tolist() == [-1, -1, 2, 2, 3, 3, -1, -1, 1, 1, 4, 4]
    assert [p.id for p in out.problems] == [problems[0].id] * 6 + [problems[1].id] * 6
    prompt_ids = stage.engine.prompt_token_ids(problems)
    parents = [0, 1, 0, 0, 1, 1, 2, 3, 2, 2, 3, 3]
    for row, parent in enumerate(parents):
        f_resp = first.batch.response_ids[parent][first.batch.response_mask[parent].bool()].tolist()
        prompt = b.input_ids[row, : b.prompt_len][b.attention_mask[row, : b.prompt_len].bool()].tolist()
        resp = b.response_ids[row][b.response_mask[row].bool()].tolist()
        k = int(b.extras[CURE_BRANCH][row])
        if k < 0:  # a first-pass row, unchanged
            assert prompt == prompt_ids[parent // 2] and resp == f_resp
            assert float(out.scores[row]) == float(first.scores[parent])
            continue
        assert prompt == prompt_ids[parent // 2] + f_resp[:k]  # the prefix is prompt: outside the response mask
        assert b.response_mask[row].sum() == len(resp) and b.attention_mask[row, b.prompt_len :].sum() == len(resp)
        assert resp[: len(f_resp) - k] == f_resp[k:]  # greedy: the continuation re-generates token k onwards
        text = tok.decode(f_resp[:k] + resp, skip_special_tokens=True) if score == "full" else tok.decode(resp, skip_special_tokens=True)
        assert float(out.scores[row]) == LengthParity().score(None, text)
    assert out.correct.tolist() == (out.scores >= 1).tolist()
    assert out.scored == 4 + 4 * 2  # the first-pass rows and every continuation


def test_cure_trains_on_the_merged_groups_in_the_trainer(fast_overrides, informative):
    overrides = [*fast_overrides, *informative.overrides, "train.steps=1", "eval.every=100",
                 "rollout.cure.enabled=true", "rollout.cure.min_token_chars=0", "rollout.cure.n2=2",
                 "rollout.dynamic_sampling=true"]  # fmt: skip
    trainer = Trainer(load_config(None, overrides), quiet=True)
    seen = []
    update = trainer.learner.update
    trainer.learner.update = lambda tb, step: (seen.append(tb), update(tb, step))[1]
    trainer.run()
    (tb,) = seen
    assert tb.ctx.batch_size == 4 * 4 * 3  # prompts x group_size x (1 + n2)
    assert torch.bincount(tb.ctx.group_ids).tolist() == [12] * 4
    record = read_metrics(Path(trainer.cfg.output_dir) / "metrics.jsonl")[-1]
    assert record["cure/continuation_frac"] == pytest.approx(2 / 3)
    informative.assert_learning([record])
