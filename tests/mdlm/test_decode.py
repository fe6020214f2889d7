"""Masked-diffusion decoding: the schedule it follows, EOSER, its sampling distribution, determinism,
and the learner's trajectory replay reproducing the sampler's log-probs exactly."""

from __future__ import annotations

import math

import pytest
import torch

import rlvr.rollout.mdlm as mdlm_rollout
from rlvr.models.build import build_model_and_tokenizer
from rlvr.ops.forward import Entropy, policy_forward
from rlvr.ops.trajectory import trajectory_states
from rlvr.rollout.base import UNMASK_STEP
from rlvr.rollout.diffusion_schedule import ass_schedule, decoding_schedule, uniform_schedule
from rlvr.rollout.engines import build_engine
from rlvr.rollout.mdlm import SAMPLER_LOGPROBS, MDLMEngine, diffusion_decode
from rlvr.tasks.countdown import CountdownTask
from rlvr.train.config import ModelConfig, TinyModelConfig

TINY = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64)
EOS, MASK_ID, VOCAB = 2, 5, 6


@pytest.fixture(scope="module")
def mdlm():
    model, tokenizer = build_model_and_tokenizer(ModelConfig(kind="mdlm", tiny=TINY), seed=1)
    return model, tokenizer, CountdownTask().heldout_problems(3)


def fixed_logits(monkeypatch, probs: list[list[float]], rows: int = 1) -> None:
    """Make every decoding forward return log(probs) (one row of ``VOCAB - 1`` probabilities per position)."""
    table = torch.tensor([p + [0.0] for p in probs]).log()  # the mask id gets probability 0
    monkeypatch.setattr(mdlm_rollout, "response_logits", lambda *args: table.expand(rows, -1, -1).clone())


def decode(schedule, rows=1, **kwargs):
    prompt = torch.ones(rows, 2, dtype=torch.long)
    return diffusion_decode(None, prompt, torch.ones_like(prompt), schedule, mask_id=MASK_ID, eos_id=EOS, **kwargs)


def test_eoser_holds_back_confident_eos_early(monkeypatch):
    # greedy candidates: token 3 (p .6), token 4 (p .5), EOS (p .9), EOS (p .95); L = 4 -> ASS commits 1 then 3.
    fixed_logits(
        monkeypatch,
        [[0.1, 0.1, 0.1, 0.6, 0.1], [0.1, 0.2, 0.1, 0.1, 0.5], [0.025, 0.025, 0.9, 0.025, 0.025], [0.0125, 0.0125, 0.95, 0.0125, 0.0125]],
    )
    # EOSER step 0: gamma = 0.01 + 0.99 / 4 = 0.2575, EOS confidences .9 * .2575 = .23 and .245 < .6: position 0 first
    tokens, unmask_step, logprobs = decode(ass_schedule(4, gamma_min=0.01), greedy=True)
    assert tokens.tolist() == [[3, 4, EOS, EOS]]
    assert unmask_step.tolist() == [[0, 1, 1, 1]]
    assert logprobs[0].tolist() == pytest.approx([math.log(0.6), math.log(0.5), math.log(0.9), math.log(0.95)], abs=1e-6)
    # EOSER off: the most confident candidate is the last position's EOS
    _, unmask_step, _ = decode(ass_schedule(4, gamma_min=1.0), greedy=True)
    assert unmask_step.tolist() == [[1, 1, 1, 0]]


def test_gumbel_draws_follow_the_tempered_distribution(monkeypatch):
    rows = 20000
    fixed_logits(monkeypatch, [[0.5, 0.3, 0.2, 0.0, 0.0]], rows=rows)
    torch.manual_seed(0)
    tokens, _, logprobs = decode(uniform_schedule(1, 1), rows=rows, temperature=0.5)
    freq = torch.bincount(tokens[:, 0], minlength=VOCAB).double() / rows
    expected = torch.tensor([0.25, 0.09, 0.04]) / 0.38  # softmax(log p / 0.5) = p^2 / sum p^2
    assert freq[:3].tolist() == pytest.approx(expected.tolist(), abs=0.015)
    assert freq[3:].sum() == 0  # probability 0, and the mask token is never drawn
    first = tokens[:, 0] == 0
    assert logprobs[first, 0].unique().tolist() == pytest.approx([math.log(0.25 / 0.38)], abs=1e-5)


def test_trajectory_states():
    final = torch.tensor([[7, 8, 9, 10]])
    unmask_step = torch.tensor([[1, 0, 2, 1]])
    assert trajectory_states(final, unmask_step, 0, 5).tolist() == [[5, 5, 5, 5]]
    assert trajectory_states(final, unmask_step, 1, 5).tolist() == [[5, 8, 5, 5]]
    assert trajectory_states(final, unmask_step, 2, 5).tolist() == [[7, 8, 5, 10]]
    assert trajectory_states(final, unmask_step, 3, 5).tolist() == [[7, 8, 9, 10]]


@pytest.mark.parametrize("options", [{"schedule": "ass", "block_num": 2}, {"schedule": "uniform", "steps": 3}])
def test_each_row_follows_the_schedule(mdlm, options):
    model, tokenizer, problems = mdlm
    engine = build_engine("hf", tokenizer, model=model, mdlm=options)
    assert isinstance(engine, MDLMEngine)
    torch.manual_seed(0)
    batch = engine.generate(model, problems, n=2, max_new_tokens=8)
    steps = decoding_schedule(8, **options)
    unmask_step = batch.extras[UNMASK_STEP]
    position = torch.arange(8)
    for k, step in enumerate(steps):
        now = unmask_step == k
        assert now.sum(-1).tolist() == [step.count] * 6
        assert bool((position[None].expand(6, -1)[now] < step.end).all())
    assert batch.response_mask.tolist() == [[1.0] * 8] * 6
    assert batch.input_ids.shape == (6, batch.prompt_len + 8) and (batch.response_ids != tokenizer.mask_token_id).all()
    for row, text in zip(batch.response_ids.tolist(), batch.responses):
        cut = row.index(tokenizer.eos_token_id) if tokenizer.eos_token_id in row else len(row)
        assert text == tokenizer.decode(row[:cut], skip_special_tokens=True)


def test_greedy_decoding_is_deterministic_and_per_row(mdlm):
    model, tokenizer, problems = mdlm
    engine = build_engine("hf", tokenizer, model=model)
    runs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        runs.append(engine.generate(model, problems, n=2, max_new_tokens=8, greedy=True))
    assert torch.equal(runs[0].input_ids, runs[1].input_ids)
    assert torch.equal(runs[0].extras[UNMASK_STEP], runs[1].extras[UNMASK_STEP])
    assert runs[0].responses[0] == runs[0].responses[1]  # the n copies of a prompt agree
    alone = engine.generate(model, problems[1:2], n=1, max_new_tokens=8, greedy=True)
    assert alone.responses == runs[0].responses[2:3]
    assert torch.equal(alone.extras[UNMASK_STEP], runs[0].extras[UNMASK_STEP][2:3])


def naive_replay(model, batch, temperature):
    """Per step, the model's own full logits on the state before it, at the tokens it committed."""
    unmask_step = batch.extras[UNMASK_STEP]
    prompt, final, p = batch.input_ids[:, : batch.prompt_len], batch.response_ids, batch.prompt_len
    positions = (batch.attention_mask.cumsum(-1) - 1).clamp_min(0)
    logprobs = torch.zeros(final.shape)
    entropy = torch.zeros(final.shape)
    for step in range(int(unmask_step.max()) + 1):
        state = torch.cat([prompt, trajectory_states(final, unmask_step, step, model.config.mask_token_id)], 1)
        logits = model(input_ids=state, attention_mask=batch.attention_mask, position_ids=positions).logits[:, p:] / temperature
        logp = torch.log_softmax(logits.double(), -1)
        now = unmask_step == step
        logprobs = torch.where(now, logp.gather(-1, final[..., None]).squeeze(-1).float(), logprobs)
        entropy = torch.where(now, -(logp.exp() * logp).sum(-1).float(), entropy)
    return logprobs, entropy


def test_the_learner_replays_the_sampler_exactly(mdlm):
    """Old log-probs are the sampler's: trajectory forward = sampler record = naive per-step recomputation,
    in values (any micro-batch) and in gradients."""
    model, tokenizer, problems = mdlm
    engine = build_engine("hf", tokenizer, model=model, mdlm={"schedule": "ass"})
    torch.manual_seed(0)
    batch = engine.generate(model, problems, n=2, max_new_tokens=8, temperature=0.7)
    out = policy_forward(model, batch, temperature=0.7, chunk_size=5, quantities=[Entropy()])
    naive_lp, naive_h = naive_replay(model, batch, 0.7)
    assert torch.allclose(out["logprobs"], batch.extras[SAMPLER_LOGPROBS], atol=1e-5)
    assert torch.allclose(out["logprobs"], naive_lp, atol=1e-5)
    assert torch.allclose(out["entropy"], naive_h, atol=1e-5)
    rows = torch.tensor([4, 1])
    part = policy_forward(model, batch.rows(rows), temperature=0.7, chunk_size=5)
    assert torch.allclose(part["logprobs"], out["logprobs"][rows], atol=1e-5)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(out["logprobs"].sum(), params)
    naive_grads = torch.autograd.grad(naive_replay(model, batch, 0.7)[0].sum(), params)
    for g, h in zip(grads, naive_grads):
        assert torch.allclose(g, h, atol=1e-4, rtol=1e-4)
    assert sum(float(g.abs().sum()) for g in grads) > 1.0


def test_a_batch_that_lost_its_trajectory_is_an_error_not_an_autoregressive_forward(mdlm):
    from dataclasses import replace

    from rlvr.errors import RLVRError

    model, tokenizer, problems = mdlm
    batch = build_engine("hf", tokenizer, model=model).generate(model, problems, n=1, max_new_tokens=8)
    with pytest.raises(RLVRError, match="unmask_step"):
        policy_forward(model, replace(batch, extras={}), temperature=1.0, chunk_size=64)
