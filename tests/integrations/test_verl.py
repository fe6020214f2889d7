"""rlvr methods inside verl, against a FAKE minimal ``verl.trainer.ppo.core_algos``.

verl cannot be installed next to transformers 5.23, so the fake module reproduces what the adapter
relies on in verl 0.9: the two registries with their decorators, the generic advantage call site of
``ray_trainer.compute_advantage`` and the policy-loss call site of ``losses.ppo_loss``/``dp_actor``,
plus verl's GRPO outcome advantage and ``vanilla`` PPO loss (with ``agg_loss`` and
``config.global_batch_info``) as references, written from verl's formulas.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rlvr.errors import ConfigError


def _agg_loss(loss_mat, loss_mask, loss_agg_mode, dp_size=1, batch_num_tokens=None, global_batch_size=None, loss_scale_factor=None):
    """verl 0.9 ``core_algos.agg_loss``."""
    if loss_agg_mode == "token-mean":
        batch_num_tokens = loss_mask.sum() if batch_num_tokens is None else batch_num_tokens
        return (loss_mat * loss_mask).sum() / batch_num_tokens * dp_size
    if loss_agg_mode == "token-sum":
        return (loss_mat * loss_mask).sum() * dp_size
    seq_tokens = loss_mask.sum(-1)
    seq_mask = (seq_tokens > 0).float()
    if loss_agg_mode == "seq-mean-token-mean":
        seq_losses = (loss_mat * loss_mask).sum(-1) / (seq_tokens + 1e-8)
    else:
        seq_losses = (loss_mat * loss_mask).sum(-1)
    global_batch_size = seq_mask.sum() if global_batch_size is None else global_batch_size
    loss = (seq_losses * seq_mask).sum() / global_batch_size * dp_size
    if loss_agg_mode == "seq-mean-token-sum-norm":
        loss = loss / (loss_scale_factor or loss_mask.shape[-1])
    return loss


def _fake_core_algos() -> types.ModuleType:
    core = types.ModuleType("verl.trainer.ppo.core_algos")
    core.ADV_ESTIMATOR_REGISTRY, core.POLICY_LOSS_REGISTRY = {}, {}

    def register_adv_est(name):
        def deco(fn):
            if name in core.ADV_ESTIMATOR_REGISTRY and core.ADV_ESTIMATOR_REGISTRY[name] != fn:
                raise ValueError(f"Adv estimator {name} has already been registered")
            core.ADV_ESTIMATOR_REGISTRY[name] = fn
            return fn

        return deco

    def register_policy_loss(name):
        def deco(fn):
            core.POLICY_LOSS_REGISTRY[name] = fn
            return fn

        return deco

    def compute_grpo_outcome_advantage(token_level_rewards, response_mask, index, epsilon=1e-6, norm_adv_by_std_in_grpo=True, config=None):
        scores = token_level_rewards.sum(-1)
        groups = defaultdict(list)
        for i in range(len(scores)):
            groups[index[i]].append(scores[i])
        stats = {k: (torch.stack(v).mean(), torch.stack(v).std()) if len(v) > 1 else (torch.tensor(0.0), torch.tensor(1.0)) for k, v in groups.items()}
        out = torch.stack([(scores[i] - stats[index[i]][0]) / (stats[index[i]][1] + epsilon) for i in range(len(scores))])
        out = out.unsqueeze(-1) * response_mask
        return out, out

    def compute_policy_loss_vanilla(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean", config=None, rollout_is_weights=None):
        low = config.clip_ratio_low if config.clip_ratio_low is not None else config.clip_ratio
        high = config.clip_ratio_high if config.clip_ratio_high is not None else config.clip_ratio
        ratio = torch.exp(torch.clamp(log_prob - old_log_prob, -20.0, 20.0))
        l1 = -advantages * ratio
        l2 = -advantages * torch.clamp(ratio, 1 - low, 1 + high)
        clipped = torch.maximum(l1, l2)
        dual = torch.min(-advantages * config.clip_ratio_c, clipped)
        pg = torch.where(advantages < 0, dual, clipped)
        if rollout_is_weights is not None:
            pg = pg * rollout_is_weights
        return _agg_loss(pg, response_mask, loss_agg_mode, **config.global_batch_info), {}

    core.register_adv_est = register_adv_est
    core.register_policy_loss = register_policy_loss
    core.get_adv_estimator_fn = lambda name: core.ADV_ESTIMATOR_REGISTRY[name]
    core.get_policy_loss_fn = lambda name: core.POLICY_LOSS_REGISTRY[name]
    core.agg_loss = _agg_loss
    core.compute_grpo_outcome_advantage = compute_grpo_outcome_advantage
    register_policy_loss("vanilla")(compute_policy_loss_vanilla)
    return core


def compute_advantage_call_site(core, name, token_level_rewards, response_mask, uid, config=None):
    """verl ``ray_trainer.compute_advantage``, branch for estimators other than gae/grpo."""
    fn = core.get_adv_estimator_fn(name)
    return fn(token_level_rewards=token_level_rewards, response_mask=response_mask, config=config, index=uid)


def ppo_loss_call_site(core, loss_mode, old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config, rollout_is_weights=None):
    """verl ``losses.ppo_loss`` / ``dp_actor.update_policy`` call (response_mask arrives as bool there)."""
    fn = core.get_policy_loss_fn(loss_mode)
    return fn(
        old_log_prob=old_log_prob,
        log_prob=log_prob,
        advantages=advantages,
        response_mask=response_mask.to(bool),
        loss_agg_mode=loss_agg_mode,
        config=config,
        rollout_is_weights=rollout_is_weights,
    )


@pytest.fixture
def core(monkeypatch):
    fake = _fake_core_algos()
    names = ["verl", "verl.trainer", "verl.trainer.ppo"]
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "verl.trainer.ppo.core_algos", fake)
    sys.modules["verl.trainer.ppo"].core_algos = fake
    return fake


def _rollout(batch: int = 8, width: int = 6, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, width + 1, (batch,), generator=gen)
    mask = (torch.arange(width)[None] < lengths[:, None]).float()
    scores = torch.randint(0, 2, (batch,), generator=gen).float()
    token_level_rewards = torch.zeros(batch, width)
    token_level_rewards[torch.arange(batch), lengths - 1] = scores  # score on the last valid token
    uid = np.array([f"uid-{i // 4}" for i in range(batch)], dtype=object)
    return token_level_rewards, mask, uid


def test_registers_prefixed_names(core):
    from rlvr.integrations.verl import register_with_verl

    done = register_with_verl()
    assert "rlvr_grpo" in done["advantage"] and "rlvr_rloo" in done["advantage"]
    assert set(done["policy_loss"]) >= {"rlvr_ppo_clip", "rlvr_cispo", "rlvr_gspo"}
    assert "rlvr_grpo" in core.ADV_ESTIMATOR_REGISTRY and "rlvr_ppo_clip" in core.POLICY_LOSS_REGISTRY
    register_with_verl()  # idempotent: replaces its own registrations
    core.ADV_ESTIMATOR_REGISTRY["taken"] = lambda **kw: None
    with pytest.raises(ConfigError, match="already registered"):
        register_with_verl({"taken": "grpo"}, [])


def test_advantage_matches_verl_grpo(core):
    from rlvr.integrations.verl import register_with_verl

    register_with_verl(["grpo", "rloo"], [])
    rewards, mask, uid = _rollout()
    adv, returns = compute_advantage_call_site(core, "rlvr_grpo", rewards, mask, uid)
    want, _ = core.compute_grpo_outcome_advantage(rewards, mask, uid)
    assert adv.shape == mask.shape and torch.allclose(adv, want, atol=1e-6) and torch.equal(adv, returns)
    loo, _ = compute_advantage_call_site(core, "rlvr_rloo", rewards, mask, uid)
    seq = rewards.sum(-1).view(2, 4)
    expected = (seq - (seq.sum(1, keepdim=True) - seq) / 3).view(-1, 1) * mask
    assert torch.allclose(loo, expected, atol=1e-6)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm", "token-sum"])
@pytest.mark.parametrize("dp", [1, 2])
def test_policy_loss_matches_verl_vanilla(core, mode, dp):
    from rlvr.integrations.verl import register_with_verl

    register_with_verl([], {"rlvr_dual": ("ppo_clip", {"clip_low": 0.2, "clip_high": 0.28, "clip_ratio_c": 3.0})})
    _, mask, _ = _rollout()
    gen = torch.Generator().manual_seed(1)
    old = -torch.rand(mask.shape, generator=gen) * 3
    adv = torch.randn(mask.shape, generator=gen) * mask
    weights = torch.rand(mask.shape, generator=gen) + 0.5
    info = {"dp_size": dp}
    if dp > 1:
        info.update(batch_num_tokens=float(mask.sum()) * 1.7, global_batch_size=13.0, loss_scale_factor=9)
    config = SimpleNamespace(clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0, global_batch_info=info)
    for is_weights in (None, weights):
        logp_a = (old + torch.randn(mask.shape, generator=gen) * 0.3).requires_grad_()
        logp_b = logp_a.detach().clone().requires_grad_()
        got, metrics = ppo_loss_call_site(core, "rlvr_dual", old, logp_a, adv, mask, mode, config, is_weights)
        want, _ = ppo_loss_call_site(core, "vanilla", old, logp_b, adv, mask, mode, config, is_weights)
        assert torch.allclose(got, want, atol=1e-5), (mode, dp)
        got.backward()
        want.backward()
        assert torch.allclose(logp_a.grad, logp_b.grad, atol=1e-6)
        assert "actor/rlvr_clip_frac" in metrics and isinstance(metrics["actor/rlvr_clip_frac"], float)


def test_missing_verl_and_autoregister(monkeypatch, core):
    import rlvr.integrations.verl as integration

    monkeypatch.setenv("RLVR_VERL_AUTOREGISTER", "1")
    monkeypatch.setenv("RLVR_VERL_SPEC", '{"advantages": ["grpo"], "policy_losses": {"my_cispo": ["cispo", {"clip_high": 2.0}]}}')
    importlib.reload(integration)  # what VERL_USE_EXTERNAL_MODULES=rlvr.integrations.verl does in each process
    assert "rlvr_grpo" in core.ADV_ESTIMATOR_REGISTRY and "my_cispo" in core.POLICY_LOSS_REGISTRY
    assert "rlvr_rloo" not in core.ADV_ESTIMATOR_REGISTRY
    monkeypatch.delenv("RLVR_VERL_AUTOREGISTER")
    monkeypatch.setitem(sys.modules, "verl.trainer.ppo.core_algos", None)
    with pytest.raises(ConfigError, match="needs verl"):
        integration.register_with_verl()
