"""The reference-answer splice: RLPR's R1 rules on texts, the token layout of the spliced and baseline
batches on the char tokenizer (one token per character, so every position is known by hand), and the
layouts of the own-forward quantities' ``ctx.extras`` entries."""

from __future__ import annotations

import pytest
import torch

from rlvr.models.tiny import char_tokenizer
from rlvr.ops.forward import (
    ForwardSource,
    PromptLogProbs,
    ReferenceAnswerBaselineLogProbs,
    ReferenceAnswerLogProbs,
)
from rlvr.ops.splice import (
    Splice,
    baseline_splice,
    compact,
    r1_format_score,
    r1_well_formed,
    splice_response,
    spliced_batch,
)
from rlvr.rollout.base import RolloutBatch
from rlvr.tasks.base import Problem

TOK = char_tokenizer()
PAD, EOS = TOK.pad_token_id, TOK.eos_token_id


def ids(text: str) -> list[int]:
    return TOK(text, add_special_tokens=False)["input_ids"]


def test_r1_well_formed_keeps_the_reasoning_middle_and_the_answers_own_whitespace() -> None:
    text = "<think>a b</think>\nso <answer>\n 41</answer>"
    assert splice_response("r1", text, "42") == Splice("<think>a b</think>\nso <answer>\n ", "42", " </answer>", True)
    # no whitespace after <answer>: a single space (the official allow_empty_leading_whitespaces=False)
    got = splice_response("r1", "<think>x</think><answer>7", "42")
    assert (got.head, got.tail, got.valid) == ("<think>x</think><answer> ", " </answer>", True)


@pytest.mark.parametrize(
    "text",
    [
        "<think>x</think><answer>1</answer><answer>2</answer>",  # two <answer>
        "<think>x</think><answer>  \n",  # blank answer section (the official's test: the text after <answer>)
        "<think>x<answer>1</answer>",  # no </think>
        "<answer>1</answer><think>x</think>",  # <answer> before <think>
        "<think><think>x</think><answer>1",  # two <think>
        "3*5+7",
    ],
)
def test_r1_malformed(text: str) -> None:
    assert not r1_well_formed(text)
    assert not splice_response("r1", text, "42").valid


def test_r1_malformed_is_cut_to_make_room_for_the_end_text() -> None:
    # end text "</think> <answer> 42 </answer>" is 30 characters + EOS = 31 tokens; 40 - 31 - 5 = 4 tokens kept
    text = "abcdefgh"
    got = splice_response("r1", text, "42", response_ids=ids(text), tokenizer=TOK, max_new_tokens=40)
    assert got == Splice("abcd</think> <answer> ", "42", " </answer>", False)
    short = splice_response("r1", "ab", "42", response_ids=ids("ab"), tokenizer=TOK, max_new_tokens=40)
    assert short.head == "ab</think> <answer> "
    assert splice_response("r1", text, "42", response_ids=ids(text), tokenizer=TOK, max_new_tokens=20).head == "</think> <answer> "


def test_r1_format_score_needs_every_tag_once_in_order() -> None:
    assert r1_format_score("<think>a</think> b <answer>c</answer> d") == 1.0
    assert r1_format_score("<think>a</think><answer>c") == 0.0  # spliceable but no </answer>
    assert r1_format_score("<answer>c</answer><think>a</think>") == 0.0
    assert r1_format_score("<think>a</think><answer>c</answer></answer>") == 0.0


def test_boxed_append_and_the_baselines() -> None:
    assert splice_response("boxed", "so \\boxed{1} or \\boxed{3}", "42") == Splice("so \\boxed{1} or \\boxed{", "42", "}")
    assert splice_response("boxed", "no box", "42") == Splice("no box \\boxed{", "42", "}", False)
    assert splice_response("append", "3*5+7", "22") == Splice("3*5+7 ", "22", "")
    assert baseline_splice("r1", "42") == Splice(" ", "42", " ")
    assert baseline_splice("boxed", "42") == Splice("\\boxed{", "42", "}")
    assert baseline_splice("append", "42") == Splice("", "42", "")


def _rollout() -> RolloutBatch:
    """Two groups of two: prompts "ab>" (row 0, 1) and "c>" (rows 2, 3), left-padded to 3; responses right-padded to 4."""
    p1, p2 = ids("ab>"), ids("c>")
    r = [ids("x") + [EOS], ids("yz") + [EOS], ids("wxyz"), ids("v") + [EOS]]
    prompts = torch.tensor([p1, p1, [PAD] + p2, [PAD] + p2])
    pmask = torch.tensor([[1, 1, 1], [1, 1, 1], [0, 1, 1], [0, 1, 1]])
    resp = torch.tensor([row + [PAD] * (4 - len(row)) for row in r])
    rmask = torch.tensor([[1.0] * len(row) + [0.0] * (4 - len(row)) for row in r])
    return RolloutBatch(
        input_ids=torch.cat([prompts, resp], dim=1),
        attention_mask=torch.cat([pmask, rmask.long()], dim=1),
        prompt_len=3,
        response_mask=rmask,
        responses=["x", "yz", "wxyz", "v"],
        truncated=torch.tensor([False, False, True, False]),
        group_ids=torch.tensor([0, 0, 1, 1]),
    )


PROBLEMS = [Problem("p1", "ab", "42"), Problem("p1", "ab", "42"), Problem("p2", "c", "7", solution="3+4"), Problem("p2", "c", "7", solution="3+4")]


def test_spliced_batch_token_layout() -> None:
    batch = _rollout()
    spliced = spliced_batch(batch, [0, 2], [Splice("x ", "42", ""), Splice("wxyz ", "7", "")], TOK)
    assert spliced.prompt_len == 3
    assert spliced.input_ids.tolist() == [
        ids("ab>") + ids("x 42") + [EOS] + [PAD] * 2,
        [PAD] + ids("c>") + ids("wxyz 7") + [EOS],
    ]
    assert spliced.attention_mask.tolist() == [[1] * 8 + [0, 0], [0] + [1] * 9]
    # the answer's tokens only: "42" at response positions 2, 3; "7" at position 5
    assert spliced.response_mask.tolist() == [[0, 0, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 1, 0]]
    assert spliced.group_ids.tolist() == [0, 1]


def test_compact_moves_each_rows_masked_values_left() -> None:
    values = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    mask = torch.tensor([[0.0, 1.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0]])
    out, out_mask = compact(values, mask)
    assert out.tolist() == [[2.0, 4.0], [7.0, 0.0]]
    assert out_mask.tolist() == [[1.0, 1.0], [1.0, 0.0]]


def test_reference_answer_plan_and_finish_layout() -> None:
    batch = _rollout()
    plan = ReferenceAnswerLogProbs(format="append").plan(ForwardSource(batch, PROBLEMS, TOK, max_new_tokens=4))
    # EOS dropped from each response, " " + y* + EOS appended after the prompt's own tokens
    assert plan.batch.input_ids[0].tolist() == ids("ab>") + ids("x 42") + [EOS] + [PAD] * 2
    assert plan.batch.input_ids[2].tolist() == [PAD] + ids("c>") + ids("wxyz 7") + [EOS]
    assert plan.batch.response_mask.sum(-1).tolist() == [2, 2, 1, 1]
    fake = torch.arange(28, dtype=torch.float32).view(4, 7)  # log-prob grid: value = 7 * row + position
    out = plan.finish(fake)
    assert out["reference_answer_logprobs"].tolist() == [[2.0, 3.0], [10.0, 11.0], [19.0, 0.0], [23.0, 0.0]]
    assert out["reference_answer_mask"].tolist() == [[1.0, 1.0], [1.0, 1.0], [1.0, 0.0], [1.0, 0.0]]
    assert out["reference_answer_valid"].tolist() == [True] * 4
    r1 = ReferenceAnswerLogProbs().plan(ForwardSource(batch, PROBLEMS, TOK, max_new_tokens=4))
    assert r1.finish(torch.zeros(r1.batch.response_mask.shape))["reference_answer_valid"].tolist() == [False] * 4


def test_baseline_runs_once_per_prompt_and_is_shared_by_its_rows() -> None:
    batch = _rollout()
    plan = ReferenceAnswerBaselineLogProbs(reference="solution").plan(ForwardSource(batch, PROBLEMS, TOK))
    # r1 baseline: " " + y* + " " + EOS right after the prompt; p1 has no solution, so its answer
    assert plan.batch.input_ids.tolist() == [ids("ab>") + ids(" 42 ") + [EOS] + [PAD], [PAD] + ids("c>") + ids(" 3+4 ") + [EOS]]
    assert plan.batch.response_mask.tolist() == [[0, 1, 1, 0, 0, 0], [0, 1, 1, 1, 0, 0]]
    out = plan.finish(torch.tensor([[0.0, -1.0, -2.0, 0.0, 0.0, 0.0], [0.0, -3.0, -4.0, -5.0, 0.0, 0.0]]))
    assert out["reference_answer_baseline_logprobs"].tolist() == [[-1.0, -2.0, 0.0]] * 2 + [[-3.0, -4.0, -5.0]] * 2
    assert out["reference_answer_baseline_mask"].tolist() == [[1.0, 1.0, 0.0]] * 2 + [[1.0, 1.0, 1.0]] * 2


def test_prompt_logprobs_plan_and_finish_layout() -> None:
    batch = _rollout()
    plan = PromptLogProbs().plan(ForwardSource(batch))
    # one row per distinct prompt, unpadded on the left: the first token is the "prompt", the rest are scored
    assert plan.batch.prompt_len == 1
    assert plan.batch.input_ids.tolist() == [ids("ab>"), ids("c>") + [0]]
    assert plan.batch.response_mask.tolist() == [[1.0, 1.0], [1.0, 0.0]]
    out = plan.finish(torch.tensor([[-1.0, -2.0], [-3.0, 0.0]]))
    # back on the rollout's left-padded prompt columns; the first real token has no log-prob
    assert out["prompt_logprobs"].tolist() == [[0.0, -1.0, -2.0]] * 2 + [[0.0, 0.0, -3.0]] * 2
    assert out["prompt_mask"].tolist() == [[0.0, 1.0, 1.0]] * 2 + [[0.0, 0.0, 1.0]] * 2
