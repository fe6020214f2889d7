"""rlvr methods through the REAL verl call sites (skipped where verl is not installed).

verl pins transformers<5.11, so it lives in its own environment (docs/integrations.md, "verl").
There these tests drive rlvr's registered methods through verl's own code:

* ``verl.trainer.ppo.ray_trainer.compute_advantage`` on a real ``DataProto`` (the driver-side
  call site of custom estimators), against verl's built-in GRPO branch of the same function;
* ``core_algos.get_policy_loss_fn`` with a real ``ActorConfig`` and the arguments
  ``verl.workers.utils.losses.ppo_loss`` passes (boolean response mask, ``global_batch_info``),
  against verl's ``vanilla`` PPO loss, its gradient included.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

core_algos = pytest.importorskip(
    "verl.trainer.ppo.core_algos",
    reason="verl is not installed here (it pins transformers<5.11; run in verl's own venv, see docs/integrations.md)",
)
ray_trainer = pytest.importorskip("verl.trainer.ppo.ray_trainer", reason="verl's trainer module needs its full dependencies")

from verl import DataProto  # noqa: E402
from verl.trainer.config import AlgoConfig  # noqa: E402
from verl.workers.config import ActorConfig, PolicyLossConfig  # noqa: E402

from rlvr.integrations.verl import register_with_verl  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def registered():
    register_with_verl(advantages=["grpo", "dr_grpo"], policy_losses={"rlvr_ppo_clip": "ppo_clip", "rlvr_dapo": ("ppo_clip", {"clip_high": 0.28})})


def _rollout(batch: int = 12, length: int = 7, group: int = 4):
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, length + 1, (batch,), generator=gen)
    mask = (torch.arange(length)[None] < lengths[:, None]).float()
    scores = torch.randint(0, 2, (batch,), generator=gen).float()
    rewards = torch.zeros(batch, length)
    rewards[torch.arange(batch), lengths - 1] = scores  # verl puts the outcome reward on the last token
    uid = np.array([f"prompt-{i // group}" for i in range(batch)], dtype=object)
    return rewards, mask, uid


def _advantages(estimator: str, rewards, mask, uid, **algo) -> torch.Tensor:
    data = DataProto.from_dict(tensors={"token_level_rewards": rewards, "response_mask": mask}, non_tensors={"uid": uid})
    config = AlgoConfig(adv_estimator=estimator, **algo)
    out = ray_trainer.compute_advantage(
        data, estimator, norm_adv_by_std_in_grpo=config.norm_adv_by_std_in_grpo, config=config
    )
    return out.batch["advantages"]


def test_methods_are_in_verls_registries():
    assert core_algos.get_adv_estimator_fn("rlvr_grpo") is not None
    assert core_algos.get_policy_loss_fn("rlvr_dapo") is not None
    assert "vanilla" in core_algos.POLICY_LOSS_REGISTRY  # verl's own entries are untouched


def test_grpo_advantage_through_verls_compute_advantage():
    rewards, mask, uid = _rollout()
    ours = _advantages("rlvr_grpo", rewards, mask, uid)
    theirs = _advantages("grpo", rewards, mask, uid)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert ours.abs().sum() > 0


def test_dr_grpo_advantage_equals_verl_grpo_without_std():
    rewards, mask, uid = _rollout()
    ours = _advantages("rlvr_dr_grpo", rewards, mask, uid)
    theirs = _advantages("grpo", rewards, mask, uid, norm_adv_by_std_in_grpo=False)
    assert torch.allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize("loss_agg_mode", ["token-mean", "token-sum", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"])
@pytest.mark.parametrize("global_info", [{}, {"dp_size": 2, "batch_num_tokens": 40, "global_batch_size": 16}])
def test_ppo_clip_equals_verl_vanilla_at_ppo_loss_call_site(loss_agg_mode, global_info):
    gen = torch.Generator().manual_seed(1)
    batch, length = 8, 6
    response_mask = torch.rand(batch, length, generator=gen) > 0.25
    old = -torch.rand(batch, length, generator=gen) * 3
    advantages = torch.randn(batch, length, generator=gen)
    drift = torch.randn(batch, length, generator=gen) * 0.4  # ratios on both sides of the clip range
    losses, grads = {}, {}
    for mode in ("vanilla", "rlvr_ppo_clip"):
        config = ActorConfig(
            strategy="fsdp", rollout_n=4, ppo_mini_batch_size=4, ppo_micro_batch_size_per_gpu=2,
            clip_ratio=0.2, loss_agg_mode=loss_agg_mode, policy_loss=PolicyLossConfig(loss_mode=mode),
        )  # fmt: skip
        config.global_batch_info.update(global_info)
        if "dp_size" in global_info:
            config.global_batch_info["loss_scale_factor"] = config.loss_scale_factor
        log_prob = (old + drift).clone().requires_grad_(True)
        loss, _ = core_algos.get_policy_loss_fn(config.policy_loss.loss_mode)(
            old_log_prob=old, log_prob=log_prob, advantages=advantages, response_mask=response_mask,
            loss_agg_mode=loss_agg_mode, config=config, rollout_is_weights=None,
        )  # fmt: skip
        loss.backward()
        losses[mode], grads[mode] = loss.detach(), log_prob.grad
    assert torch.allclose(losses["rlvr_ppo_clip"], losses["vanilla"], atol=1e-6)
    assert torch.allclose(grads["rlvr_ppo_clip"], grads["vanilla"], atol=1e-6)


def test_knobs_from_the_registration_reach_the_loss():
    """``rlvr_dapo`` (clip_high 0.28) equals verl vanilla with clip_ratio_high 0.28."""
    gen = torch.Generator().manual_seed(2)
    old = -torch.rand(6, 5, generator=gen)
    log_prob = old + 0.3  # ratio 1.35 > 1.28: the loss is -1.28 only if clip_high=0.28 arrived
    advantages = torch.ones(6, 5)
    mask = torch.ones(6, 5, dtype=torch.bool)
    results = {}
    for mode, high in (("rlvr_dapo", None), ("vanilla", 0.28)):
        config = ActorConfig(strategy="fsdp", rollout_n=4, ppo_mini_batch_size=4, ppo_micro_batch_size_per_gpu=2, clip_ratio=0.2, clip_ratio_high=high)
        results[mode], _ = core_algos.get_policy_loss_fn(mode)(
            old_log_prob=old, log_prob=log_prob, advantages=advantages, response_mask=mask,
            loss_agg_mode="token-mean", config=config, rollout_is_weights=None,
        )  # fmt: skip
    assert torch.allclose(results["rlvr_dapo"], results["vanilla"], atol=1e-6)
    assert float(results["vanilla"]) == pytest.approx(-1.28, abs=1e-6)
