"""rlvr advantages / policy losses inside TRL's GRPOTrainer on the tiny Qwen2 (CPU, trl 1.16)."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from rlvr.errors import ConfigError  # noqa: E402
from rlvr.integrations.trl import RLVRGRPOTrainer  # noqa: E402
from rlvr.models.tiny import char_tokenizer, tiny_qwen2  # noqa: E402


def digit_reward(completions, **kwargs):
    """Fraction of digits: varies across a group even for a random model."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


def _setup(tmp_path, **overrides):
    tok = char_tokenizer()
    model = tiny_qwen2(tok, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    data = datasets.Dataset.from_dict({"prompt": [f"{a}+{b}=" for a in range(4) for b in range(4)]})
    kwargs = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=8,
        max_steps=2,
        learning_rate=1e-2,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        beta=0.0,
        seed=0,
    )
    kwargs.update(overrides)
    return model, tok, data, GRPOConfig(**kwargs)


def test_two_steps_with_rlvr_components(tmp_path):
    model, tok, data, args = _setup(tmp_path)
    before = copy.deepcopy(model.state_dict())
    trainer = RLVRGRPOTrainer(
        model=model,
        reward_funcs=[digit_reward],
        args=args,
        train_dataset=data,
        processing_class=tok,
        rlvr_advantage="rloo",
        rlvr_policy_loss=("ppo_clip", {"clip_high": 0.28}),
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in logs)
    assert all("rlvr/clip_frac" in h and "rlvr/advantage_abs_mean" in h for h in logs)
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


def _fake_inputs(trainer, gen):
    batch, prompt_len, width = 8, 4, 6
    lengths = torch.randint(1, width + 1, (batch,), generator=gen)
    completion_mask = (torch.arange(width)[None] < lengths[:, None]).long()
    completion_ids = torch.randint(4, 104, (batch, width), generator=gen) * completion_mask
    prompt_ids = torch.randint(4, 104, (batch, prompt_len), generator=gen)
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, torch.cat([prompt_ids, completion_ids], 1),
            torch.cat([torch.ones_like(prompt_ids), completion_mask], 1), width,
        )  # fmt: skip
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": torch.ones_like(prompt_ids),
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": torch.randn(batch, generator=gen),
        "old_per_token_logps": logps + torch.randn(logps.shape, generator=gen) * 0.3,  # ratios outside the clip
        "num_items_in_batch": completion_mask.sum().float() * 2,
    }


@pytest.mark.parametrize("loss_type, agg_mode", [("dapo", "token-mean"), ("grpo", "seq-mean-token-mean"), ("dr_grpo", "seq-mean-token-sum-norm")])
def test_loss_equals_trl_native(tmp_path, loss_type, agg_mode):
    model, tok, data, args = _setup(tmp_path, loss_type=loss_type, epsilon=0.2, epsilon_high=0.28)
    trainer = RLVRGRPOTrainer(
        model=model, reward_funcs=[digit_reward], args=args, train_dataset=data, processing_class=tok,
        rlvr_policy_loss=("ppo_clip", {"clip_low": 0.2, "clip_high": 0.28}), rlvr_agg_mode=agg_mode,
    )  # fmt: skip
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 2
    inputs = _fake_inputs(trainer, torch.Generator().manual_seed(0))
    ours = trainer._compute_loss(trainer.model, inputs)
    theirs = GRPOTrainer._compute_loss(trainer, trainer.model, inputs)
    assert torch.allclose(ours, theirs, atol=1e-6), (float(ours), float(theirs))


def test_advantage_equals_trl_group_advantage(tmp_path):
    model, tok, data, args = _setup(tmp_path)
    trainer = RLVRGRPOTrainer(
        model=model, reward_funcs=[digit_reward], args=args, train_dataset=data, processing_class=tok,
        rlvr_advantage=("grpo", {"eps": 1e-4}),
    )  # fmt: skip
    trainer.model.train()
    inputs = [{"prompt": p} for p in ["1+2=", "3+1="] for _ in range(4)]
    torch.manual_seed(5)
    native = GRPOTrainer._generate_and_score_completions(trainer, inputs)
    torch.manual_seed(5)
    ours = trainer._generate_and_score_completions(inputs)
    assert torch.equal(native["completion_ids"], ours["completion_ids"])
    mask = ours["completion_mask"].bool()
    expected = native["advantages"].unsqueeze(1).expand_as(ours["advantages"])
    assert ours["advantages"].shape == mask.shape
    assert torch.allclose(ours["advantages"][mask], expected[mask], atol=1e-5)
    assert torch.all(ours["advantages"][~mask] == 0)


def test_rejects_dropped_options_and_missing_inputs(tmp_path):
    model, tok, data, args = _setup(tmp_path, entropy_coef=0.01)
    with pytest.raises(ConfigError, match="entropy_coef"):
        RLVRGRPOTrainer(model=model, reward_funcs=[digit_reward], args=args, train_dataset=data, processing_class=tok, rlvr_policy_loss="ppo_clip")
    with pytest.raises(ConfigError, match="rlvr_agg_mode"):
        RLVRGRPOTrainer(model=model, reward_funcs=[digit_reward], args=args, rlvr_agg_mode="sum")
