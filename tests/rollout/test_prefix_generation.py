"""Generation from token-id prompts that end inside an earlier response (CURE, SPAE probes)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from rlvr.models.tiny import char_tokenizer
from rlvr.rollout.base import TOP_IDS, TOP_LOGPROBS, RolloutBatch, concat_batches, left_pad
from rlvr.rollout.hf import HFRollout
from rlvr.rollout.vllm import VLLMRollout, top_lists

PROMPTS = ["1 2 3>6=", "12 5 7>99=", "4>4=", "33 44 55 66>100="]
PREFIX_LENGTHS = [0, 1, 3, 5]


def _valid(batch: RolloutBatch, row: int) -> list[int]:
    return batch.response_ids[row][batch.response_mask[row].bool()].tolist()


def _prompt(batch: RolloutBatch, row: int) -> list[int]:
    return batch.input_ids[row, : batch.prompt_len][batch.attention_mask[row, : batch.prompt_len].bool()].tolist()


@pytest.mark.parametrize("kv_decode", [True, False], ids=["kv_loop", "generate"])
def test_greedy_continuation_from_a_prefix_is_the_rest_of_the_greedy_sample(model, kv_decode):
    tok = char_tokenizer()
    tok.eos_token = "<"  # a character this model emits: rows 1 and 3 end early, rows 0 and 2 run to the limit
    engine = HFRollout(tok, "off", kv_decode=kv_decode)
    full = engine.generate(model, PROMPTS, n=1, max_new_tokens=10, greedy=True)
    responses = [_valid(full, i) for i in range(len(PROMPTS))]
    assert full.truncated.tolist() == [True, False, True, False]
    assert all(len(r) > k for r, k in zip(responses, PREFIX_LENGTHS)) and len({tuple(r) for r in responses}) == 4
    prompts = engine.prompt_token_ids(PROMPTS)
    assert prompts == [_prompt(full, i) for i in range(len(PROMPTS))]
    ids = [p + r[:k] for p, r, k in zip(prompts, responses, PREFIX_LENGTHS)]  # four different lengths
    cont = engine.generate_from_ids(model, ids, n=2, max_new_tokens=10, greedy=True)
    assert cont.prompt_len == max(len(x) for x in ids)
    assert cont.group_ids.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    for row in range(8):
        i = row // 2
        k = PREFIX_LENGTHS[i]
        assert _prompt(cont, row) == ids[i]  # prompt + prefix, left-padded, outside the response mask
        assert cont.attention_mask[row, : cont.prompt_len].sum() == len(ids[i])
        expected = responses[i][k:]
        assert _valid(cont, row)[: len(expected)] == expected  # the continuation starts exactly at token k
        assert cont.response_mask[row].sum() == len(_valid(cont, row))
        if full.truncated[i]:  # it ran to the limit: the continuation goes on (10 new tokens from k)
            assert len(_valid(cont, row)) == 10 or not cont.truncated[row]
        else:  # it ended with EOS: so does the continuation, at the same token
            assert _valid(cont, row) == expected and expected[-1] == tok.eos_token_id and not cont.truncated[row]


def test_top_logprobs_of_the_kv_loop_equal_generate_and_the_model(tok, model):
    ids = HFRollout(tok, "off").prompt_token_ids(PROMPTS[:2])
    kv = HFRollout(tok, "off").generate_from_ids(model, ids, n=1, max_new_tokens=4, greedy=True, top_logprobs=5)
    gen = HFRollout(tok, "off", kv_decode=False).generate_from_ids(model, ids, n=1, max_new_tokens=4, greedy=True, top_logprobs=5)
    assert kv.extras[TOP_LOGPROBS].shape == (2, kv.response_mask.shape[1], 5)
    assert torch.equal(kv.extras[TOP_IDS], gen.extras[TOP_IDS][:, : kv.response_mask.shape[1]])
    torch.testing.assert_close(kv.extras[TOP_LOGPROBS], gen.extras[TOP_LOGPROBS][:, : kv.response_mask.shape[1]], atol=1e-5, rtol=0)
    with torch.no_grad():  # position t of the response: the model's distribution after prompt + response[:t]
        logits = model(input_ids=kv.input_ids, attention_mask=kv.attention_mask).logits.float()
    p = kv.prompt_len
    for row in range(2):
        for t in range(int(kv.response_mask[row].sum())):
            values, top = logits[row, p - 1 + t].log_softmax(-1).topk(5)
            assert kv.extras[TOP_IDS][row, t].tolist() == top.tolist()
            torch.testing.assert_close(kv.extras[TOP_LOGPROBS][row, t], values, atol=1e-5, rtol=0)
            assert kv.extras[TOP_IDS][row, t, 0] == kv.response_ids[row, t]  # greedy: the top token is the sampled one


def test_left_pad_and_concat_pad_response_aligned_extras():
    ids, mask = left_pad([[5, 6, 7], [8], []], pad_token_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]

    def batch(width: int, fill: float) -> RolloutBatch:
        return RolloutBatch(
            input_ids=torch.ones(1, 2 + width, dtype=torch.long), attention_mask=torch.ones(1, 2 + width, dtype=torch.long),
            prompt_len=2, response_mask=torch.ones(1, width), responses=["x"], truncated=torch.zeros(1, dtype=torch.bool),
            group_ids=torch.zeros(1, dtype=torch.long),
            extras={"token_temperature": torch.full((1, width), fill), "top_ids": torch.full((1, width, 2), 7), "flag": torch.ones(1)},
        )  # fmt: skip

    merged = concat_batches([batch(1, 0.5), batch(3, 2.0)], pad_token_id=0)
    assert merged.extras["token_temperature"].tolist() == [[0.5, 1.0, 1.0], [2.0, 2.0, 2.0]]  # padded with 1.0
    assert merged.extras["top_ids"].shape == (2, 3, 2) and merged.extras["top_ids"][0, 1:].eq(0).all()
    assert merged.extras["flag"].tolist() == [1.0, 1.0]


def test_vllm_continues_the_exact_ids_and_reads_top_logprobs(tok, tmp_path):
    eos = tok.eos_token_id
    calls = []

    class LLM:
        def generate(self, prompts, params, use_tqdm=False):
            calls.append((prompts, params))
            lp = lambda v: SimpleNamespace(logprob=v)  # noqa: E731
            out = SimpleNamespace(index=0, token_ids=[9, eos], logprobs=[{9: lp(-0.1), 4: lp(-2.5), 5: lp(-3.0)}, {eos: lp(-0.2)}])
            return [SimpleNamespace(outputs=[out]) for _ in prompts]

    engine = VLLMRollout(tok, tmp_path, chat_template="off", llm=LLM(), sampling_params_cls=lambda **kw: kw)
    ids = [[1, 20, 21, 22], [1, 30]]
    batch = engine.generate_from_ids(None, ids, n=1, max_new_tokens=4, top_logprobs=2)
    prompts, params = calls[0]
    assert [p["prompt_token_ids"] for p in prompts] == ids and params["logprobs"] == 2
    assert batch.prompt_len == 4 and _prompt(batch, 1) == [1, 30] and _valid(batch, 0) == [9, eos]
    assert batch.extras[TOP_IDS][0].tolist() == [[9, 4], [eos, 0]]
    torch.testing.assert_close(batch.extras[TOP_LOGPROBS][0], torch.tensor([[-0.1, -2.5], [-0.2, 0.0]]))
    lists = top_lists([[{3: -1.0, 8: -0.5, 2: -4.0}]], k=2, width=2)  # plain floats too; sorted by log-prob
    assert lists[TOP_IDS].tolist() == [[[8, 3], [0, 0]]]
