"""HAPO-H adaptive temperature: the per-token formula, what the KV loop records, log-probs at T_t."""

from __future__ import annotations

import io
import math

import pytest
import torch

from rlvr.errors import ConfigError
from rlvr.ops.forward import Entropy, RawLogit, SelfCertainty, compute_policy_forward
from rlvr.rollout.adaptive_temperature import AdaptiveTemperature, EntropyTemperature
from rlvr.rollout.base import SAMPLING_ENTROPY, TOKEN_TEMPERATURE
from rlvr.rollout.hf import HFRollout
from rlvr.rollout.kv_decode import warp_logits
from rlvr.rollout.vllm import VLLMRollout
from rlvr.train.config import load_config
from rlvr.train.trainer import Trainer

PROMPTS = ["1 2 3>6=", "12 5 7>99=", "4>4="]


def test_entropy_temperature_by_hand():
    # rows: uniform over 4 (H = ln 4 = 1.386294), (0.7, 0.1, 0.1, 0.1) (H = 0.940448), nearly one-hot (H ~ 0)
    probs = torch.tensor([[0.25] * 4, [0.7, 0.1, 0.1, 0.1], [1 - 3e-9, 1e-9, 1e-9, 1e-9]])
    logits = 1.2 * probs.log()  # at the base temperature 1.2 the distributions are exactly ``probs``
    stats = (0.0, 0.5, 0.5, 1.0)  # pivot m = log 1, rms 0.5, scale_pos 0.5, scale_neg 1 (signed)
    temps, entropy = EntropyTemperature(1.2, 0.1, stats)(logits)
    torch.testing.assert_close(entropy[:2], torch.tensor([1.386294, 0.940448]), atol=1e-5, rtol=0)
    h_uniform = math.log(1.386294) / 0.500001 * 0.5  # h * scale_pos = 0.326634
    h_peaked = math.log(0.940448) / 0.500001 * 1.0  # h * scale_neg = -0.122797
    expected = [1.2 * (1 + 0.1 * h_uniform), 1.2 * (1 + 0.1 * h_peaked), 1.2 * (1 - 0.1)]  # last: clipped at -1
    torch.testing.assert_close(temps, torch.tensor(expected), atol=1e-5, rtol=0)
    assert expected[0] == pytest.approx(1.239196, abs=1e-5) and expected[1] == pytest.approx(1.185264, abs=1e-5)
    first, _ = EntropyTemperature(1.2, 0.1, None)(logits)  # no statistics yet (first step): the base temperature
    assert first.tolist() == pytest.approx([1.2] * 3)


def test_warp_logits_takes_one_temperature_per_row():
    torch.manual_seed(0)
    logits = torch.randn(3, 20)
    temps = torch.tensor([0.5, 1.0, 2.0])
    rows = warp_logits(logits, temperature=temps.unsqueeze(-1), top_k=5, top_p=0.9, suppress_ids=[0])
    for i, t in enumerate(temps.tolist()):
        torch.testing.assert_close(rows[i], warp_logits(logits[i : i + 1], temperature=t, top_k=5, top_p=0.9, suppress_ids=[0])[0])


def test_kv_loop_records_each_tokens_temperature_from_its_own_logits(tok, model):
    fn = EntropyTemperature(1.0, 0.5, (1.4, 0.05, 0.5, 0.5))  # a narrow rms: temperatures spread over [0.5, 1.5]
    torch.manual_seed(0)
    batch = HFRollout(tok, "off").generate(model, PROMPTS, n=2, max_new_tokens=6, temperature_fn=fn)
    temps, entropy = batch.extras[TOKEN_TEMPERATURE], batch.extras[SAMPLING_ENTROPY]
    assert temps.shape == batch.response_mask.shape
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
    p, valid = batch.prompt_len, batch.response_mask.bool()
    expected_t, expected_h = fn(logits[:, p - 1 : -1][valid])
    torch.testing.assert_close(temps[valid], expected_t, atol=1e-4, rtol=0)
    torch.testing.assert_close(entropy[valid], expected_h, atol=1e-4, rtol=0)
    assert float(temps[valid].max() - temps[valid].min()) > 0.1


def test_policy_forward_at_per_token_temperatures_is_exact(tok, model):
    torch.manual_seed(0)
    batch = HFRollout(tok, "off").generate(model, PROMPTS, n=2, max_new_tokens=6)
    temps = 0.5 + torch.rand(batch.response_mask.shape)
    out = compute_policy_forward(
        model, batch, temperature=7.0, chunk_size=5, quantities=[Entropy(), RawLogit(), SelfCertainty()], token_temperature=temps
    )
    with torch.no_grad():
        z = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()[:, batch.prompt_len - 1 : -1]
    scaled = z / temps.unsqueeze(-1)
    logp = scaled.log_softmax(-1)
    targets = batch.response_ids.unsqueeze(-1)
    valid = batch.response_mask.bool()
    torch.testing.assert_close(out["logprobs"][valid], logp.gather(-1, targets).squeeze(-1)[valid], atol=1e-5, rtol=0)
    torch.testing.assert_close(out["entropy"][valid], -(logp.exp() * logp).sum(-1)[valid], atol=1e-5, rtol=0)
    torch.testing.assert_close(out["raw_logit"][valid], z.gather(-1, targets).squeeze(-1)[valid], atol=1e-4, rtol=0)
    certainty = scaled.logsumexp(-1) - scaled.mean(-1)
    torch.testing.assert_close(out["self_certainty"][valid], certainty[valid], atol=1e-4, rtol=0)
    constant = compute_policy_forward(model, batch, temperature=0.8, chunk_size=5, token_temperature=torch.full_like(temps, 0.8))
    plain = compute_policy_forward(model, batch, temperature=0.8, chunk_size=5)
    torch.testing.assert_close(constant["logprobs"], plain["logprobs"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", ["sampled", "base"])
def test_learner_log_probs_use_the_recorded_or_the_base_temperature(fast_overrides, mode):
    overrides = [*fast_overrides, "rollout.adaptive_temperature.enabled=true", f"rollout.adaptive_temperature.logprob_temperature={mode}",
                 "rollout.adaptive_temperature.tau=0.5", "rollout.temperature=0.9"]  # fmt: skip
    trainer = Trainer(load_config(None, overrides), quiet=True)
    stage = trainer.rollout
    stage.collect(trainer.model, step=0)  # the first step samples at T and gives the statistics
    rollout = stage.collect(trainer.model, step=1)
    batch = rollout.batch
    temps = batch.extras[TOKEN_TEMPERATURE][batch.response_mask.bool()]
    assert float(temps.max() - temps.min()) > 0.01
    got = trainer.learner.forward(trainer.model, batch)["logprobs"]
    with torch.no_grad():
        if mode == "sampled":
            expected = compute_policy_forward(trainer.model, batch, temperature=0.9, chunk_size=64, token_temperature=batch.extras[TOKEN_TEMPERATURE])
        else:
            expected = compute_policy_forward(trainer.model, batch, temperature=0.9, chunk_size=64)
    torch.testing.assert_close(got.detach(), expected["logprobs"], atol=1e-6, rtol=0)
    state = io.BytesIO()
    torch.save(stage.state_dict(), state)
    state.seek(0)
    again = AdaptiveTemperature(tau=0.5)
    again.load_state_dict(torch.load(state, weights_only=True)["rollout_adaptive_temperature"])
    assert again.stats == stage.adaptive_temperature.stats and again.stats is not None


def test_adaptive_temperature_trains_in_the_trainer(fast_overrides, informative):
    from pathlib import Path

    from rlvr.train.logging import read_metrics

    overrides = [*fast_overrides, *informative.overrides, "train.steps=2", "eval.every=100", "rollout.adaptive_temperature.enabled=true"]
    trainer = Trainer(load_config(None, overrides), quiet=True)
    trainer.run()
    records = read_metrics(Path(trainer.cfg.output_dir) / "metrics.jsonl")[1:]
    assert records[0]["adaptive_temperature/max"] == records[0]["adaptive_temperature/min"] == 1.0  # no statistics yet
    assert records[1]["adaptive_temperature/max"] > 1.0 > records[1]["adaptive_temperature/min"]
    informative.assert_learning(records)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["rollout.backend=vllm"], "KV-cache"),
        (["rollout.kv_decode=false"], "KV-cache"),
        (["rollout.aepo.enabled=true"], "aepo"),
    ],
)
def test_adaptive_temperature_refuses_samplers_that_cannot(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, ["rollout.adaptive_temperature.enabled=true", *overrides])


def test_engines_without_per_token_temperatures_refuse_it(tok, model, tmp_path):
    fn = EntropyTemperature(1.0, 0.05)
    with pytest.raises(ConfigError, match="KV-cache"):
        HFRollout(tok, "off", kv_decode=False).generate(model, PROMPTS, n=1, max_new_tokens=2, temperature_fn=fn)
    engine = VLLMRollout(tok, tmp_path, llm=object(), sampling_params_cls=dict)
    with pytest.raises(ConfigError, match="KV-cache"):
        engine.generate_from_ids(None, [[1, 2]], n=1, max_new_tokens=2, temperature_fn=fn)
