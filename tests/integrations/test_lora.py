"""LoRA via PEFT on the tiny Qwen2: only adapters train, the adapter-disabled model is the reference."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("peft")

from rlvr.errors import ConfigError
from rlvr.models.lora import (
    adapter_disabled,
    adapter_state_dict,
    apply_lora,
    is_peft_model,
    load_adapter_state_dict,
    merged_named_parameters,
    reference_forward,
    save_lora_model,
    trainable_parameters,
)
from rlvr.models.loading import load_model_and_tokenizer
from rlvr.models.tiny import char_tokenizer, tiny_qwen2
from rlvr.rollout.hf import HFRollout
from rlvr.ops.forward import Entropy, policy_forward


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


def _model(tok, seed: int = 0):
    return tiny_qwen2(tok, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64, seed=seed)


def _perturb_adapters(model, seed: int = 1) -> None:
    """Give lora_B non-zero values so the adapter changes the function (it starts as the identity)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


@pytest.fixture
def batch(tok):
    torch.manual_seed(0)
    return HFRollout(tok, "off").generate(_model(tok), ["12+3=", "7*8="], n=2, max_new_tokens=6)


def _fwd(model, rows, grad: bool = False):
    ctx = torch.enable_grad() if grad else torch.no_grad()
    with ctx:
        return policy_forward(model, rows, temperature=1.0, chunk_size=16)["logprobs"]


def test_only_lora_parameters_train(tok, batch):
    base = _model(tok)
    frozen = [(p, p.detach().clone()) for p in base.parameters()]
    model = apply_lora(base, r=4, alpha=8)
    assert is_peft_model(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    n_train, n_total = trainable_parameters(model)
    assert 0 < n_train < n_total
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    logp = _fwd(model, batch, grad=True)
    (-(logp * batch.response_mask).sum()).backward()
    opt.step()
    for param, before in frozen:  # every original weight (PEFT keeps the same Parameter objects) is unchanged
        assert not param.requires_grad and torch.equal(param, before)
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)


def test_reference_equals_base_model(tok, batch):
    base = _model(tok)
    reference = copy.deepcopy(base)
    model = apply_lora(base, r=4, alpha=8)
    assert torch.allclose(_fwd(model, batch), _fwd(reference, batch), atol=1e-6)  # identity at init
    _perturb_adapters(model)
    policy = _fwd(model, batch)
    expected = _fwd(reference, batch)
    mask = batch.response_mask.bool()
    assert not torch.allclose(policy[mask], expected[mask], atol=1e-3)  # the adapter matters
    ref = reference_forward(model, batch, temperature=1.0, chunk_size=16)["logprobs"]
    assert torch.allclose(ref, expected, atol=1e-6)
    with adapter_disabled(model):
        assert torch.allclose(_fwd(model, batch), expected, atol=1e-6)
    assert torch.allclose(_fwd(model, batch), policy)  # re-enabled on exit


def test_policy_forward_and_generate_on_peft_model(tok, batch):
    model = apply_lora(_model(tok), r=4, alpha=8)
    _perturb_adapters(model)
    out = policy_forward(model, batch, temperature=1.0, chunk_size=8, quantities=[Entropy()])
    assert out["logprobs"].shape == batch.response_mask.shape and out["entropy"].requires_grad
    out["logprobs"].sum().backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_A" in n]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    torch.manual_seed(0)
    rollout = HFRollout(tok, "off").generate(model, ["1+1="], n=3, max_new_tokens=4)
    assert rollout.input_ids.shape[0] == 3


def test_merged_weights_adapter_state_and_export(tok, batch, tmp_path):
    model = apply_lora(_model(tok), r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    _perturb_adapters(model)
    expected = _fwd(model, batch)
    merged = dict(merged_named_parameters(model))
    plain = copy.deepcopy(model).merge_and_unload()
    plain_params = dict(plain.named_parameters())
    assert set(merged) == set(plain_params)
    for name, value in merged.items():
        assert torch.allclose(value, plain_params[name], atol=1e-6), name
    state = adapter_state_dict(model)
    assert state and all("lora_" in k for k in state)
    fresh = apply_lora(_model(tok), r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    load_adapter_state_dict(fresh, state)
    assert torch.allclose(_fwd(fresh, batch), expected, atol=1e-6)
    out = save_lora_model(model, tok, tmp_path / "final")
    assert (out / "adapter" / "adapter_config.json").is_file()
    reloaded, _ = load_model_and_tokenizer(str(out))
    assert not is_peft_model(reloaded)
    assert torch.allclose(_fwd(reloaded, batch), expected, atol=1e-5)
    assert torch.allclose(_fwd(model, batch), expected)  # the live model was not merged


def test_bad_lora_settings(tok):
    with pytest.raises(ConfigError, match="positive"):
        apply_lora(_model(tok), r=0)
    with pytest.raises(ConfigError, match="LM head"):
        apply_lora(_model(tok), r=4, target_modules=["q_proj", "lm_head"])
    with pytest.raises(ConfigError, match="target_modules"):
        apply_lora(_model(tok), r=4, target_modules=["no_such_module"])


def test_checkpoint_state_with_and_without_base(tok, batch):
    from rlvr.models.lora import lora_checkpoint_state, load_lora_checkpoint_state

    base = _model(tok)
    with torch.no_grad():  # stands in for a full-weight warm start before LoRA
        base.model.embed_tokens.weight.mul_(1.5)
    model = apply_lora(base, r=4, alpha=8)
    _perturb_adapters(model)
    expected = _fwd(model, batch)
    small = lora_checkpoint_state(model, include_base=False)
    assert small["base"] is None and all("lora_" in k for k in small["adapter"])
    full = lora_checkpoint_state(model, include_base=True)
    fresh = apply_lora(_model(tok), r=4, alpha=8)
    load_lora_checkpoint_state(fresh, full)
    assert torch.allclose(_fwd(fresh, batch), expected, atol=1e-6)
    with torch.no_grad(), adapter_disabled(fresh), adapter_disabled(model):
        assert torch.allclose(_fwd(fresh, batch), _fwd(model, batch), atol=1e-6)
