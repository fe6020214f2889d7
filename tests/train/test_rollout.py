"""Rollout masks, and old log-probs from the training forward equal the sampler's own log-probs."""

from __future__ import annotations

import torch

from rlvr.models.tiny import char_tokenizer, tiny_qwen2
from rlvr.rollout.base import response_mask_from_ids
from rlvr.rollout.hf import HFRollout
from rlvr.ops.forward import Entropy, policy_forward


def test_response_mask_includes_first_eos_and_flags_truncation():
    eos = 2
    ids = torch.tensor([[5, 6, 2, 0, 0], [5, 2, 7, 2, 0], [5, 6, 7, 8, 9]])
    mask, truncated = response_mask_from_ids(ids, eos)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert truncated.tolist() == [False, False, True]


def test_generate_groups_and_masks():
    tok = char_tokenizer()
    model = tiny_qwen2(tok, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    torch.manual_seed(0)
    batch = HFRollout(tok).generate(model, ["1 2 3>6=", "9>9="], n=3, max_new_tokens=6)
    assert batch.input_ids.shape[0] == 6
    assert batch.group_ids.tolist() == [0, 0, 0, 1, 1, 1]
    assert batch.response_mask.shape == (6, batch.input_ids.shape[1] - batch.prompt_len)
    for row, text in zip(range(6), batch.responses):
        ids = batch.response_ids[row][batch.response_mask[row].bool()].tolist()
        assert tok.pad_token_id not in ids and tok.bos_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=True) == text


def test_training_forward_matches_sampling_logprobs():
    """Old log-probs must be the log-probs the sampler used (left padding, position ids, temperature)."""
    tok = char_tokenizer()
    model = tiny_qwen2(tok, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64).eval()
    prompts = ["1 2 3>6=", "12 5 7>99=", "4>4="]
    temperature = 0.7
    enc = tok([tok.bos_token + p for p in prompts], return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(0)
    out = model.generate(
        **enc,
        do_sample=True,
        temperature=temperature,
        top_k=None,
        max_new_tokens=6,
        output_scores=True,
        return_dict_in_generate=True,
        pad_token_id=tok.pad_token_id,
    )
    scores = torch.stack(out.scores, dim=1)  # processed logits (divided by temperature)
    response = out.sequences[:, enc["input_ids"].shape[1] :]
    expected = torch.log_softmax(scores, dim=-1).gather(-1, response.unsqueeze(-1)).squeeze(-1)

    from rlvr.rollout.base import RolloutBatch

    mask, truncated = response_mask_from_ids(response, tok.eos_token_id)
    batch = RolloutBatch(
        input_ids=out.sequences,
        attention_mask=torch.cat([enc["attention_mask"], mask.long()], dim=1),
        prompt_len=enc["input_ids"].shape[1],
        response_mask=mask,
        responses=[""] * 3,
        truncated=truncated,
        group_ids=torch.arange(3),
    )
    with torch.no_grad():
        got = policy_forward(model, batch, temperature=temperature, chunk_size=5, quantities=[Entropy()])
    assert mask.sum() >= 6
    diff = ((got["logprobs"] - expected) * mask).abs().max()
    assert diff <= 1e-5, diff
    assert (got["logprobs"][mask == 0] == 0).all()


def test_concat_batches_pads_and_keeps_logprobs():
    """Batches of different widths stack without changing any row's log-probs."""
    from rlvr.rollout.base import concat_batches

    tok = char_tokenizer()
    model = tiny_qwen2(tok, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    engine = HFRollout(tok)
    torch.manual_seed(0)
    a = engine.generate(model, ["1 2 3>6="], n=2, max_new_tokens=4)
    b = engine.generate(model, ["12 34 56>100=", "7>7="], n=2, max_new_tokens=7)
    both = concat_batches([a, b], tok.pad_token_id)
    assert both.group_ids.tolist() == [0, 0, 1, 1, 2, 2]
    assert both.responses == a.responses + b.responses
    with torch.no_grad():
        joint = policy_forward(model, both, temperature=1.0, chunk_size=8)["logprobs"]
        parts = [policy_forward(model, x, temperature=1.0, chunk_size=8)["logprobs"] for x in (a, b)]
    assert torch.allclose(joint[:2, : parts[0].shape[1]], parts[0], atol=1e-5)
    assert torch.allclose(joint[2:, : parts[1].shape[1]], parts[1], atol=1e-5)


def test_a_tasks_system_prompt_reaches_the_training_rollouts(fast_overrides, tmp_path):
    """Rollouts get the Problems themselves, so the chat formatting sees their system prompt."""
    import json

    from rlvr.rollout.hf import format_prompts
    from rlvr.train.config import load_config
    from rlvr.train.trainer import Trainer

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"problem": f"{i}+1=?", "answer": str(i + 1)}) + "\n" for i in range(40)))
    cfg = load_config(None, [*fast_overrides, "task=math_jsonl", f"task.kwargs.path={data}",
                             "task.kwargs.system_prompt=Answer in one line.", "warmstart.steps=0"])
    trainer = Trainer(cfg, quiet=True)
    seen = []
    generate = trainer.engine.generate

    def spy(model, prompts, **kwargs):
        seen.extend(format_prompts(trainer.tokenizer, prompts, cfg.rollout.chat_template))
        return generate(model, prompts, **kwargs)

    trainer.engine.generate = spy
    trainer.rollout.collect(trainer.model)
    assert len(seen) == cfg.rollout.prompts_per_step
    assert all("Answer in one line." in text and "+1=?" in text for text in seen)
