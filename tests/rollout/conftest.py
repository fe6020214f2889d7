"""A tiny Qwen2 with spread weights, shared by the rollout tests."""

from __future__ import annotations

import pytest
import torch

from rlvr.models.tiny import char_tokenizer, tiny_qwen2


@pytest.fixture(scope="session")
def tok():
    """The built-in character tokenizer."""
    return char_tokenizer()


@pytest.fixture(scope="session")
def spread_model():
    """2 layers, d=32, with N(0, 0.3) matrices instead of the 0.02 init, so greedy continuations differ between prompts."""
    model = tiny_qwen2(char_tokenizer(), hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return model


@pytest.fixture(scope="session")
def model(spread_model):
    return spread_model
