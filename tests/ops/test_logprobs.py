"""chunked_logprobs_entropy / response_logprobs against full-logit references."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from rlvr.ops import chunked_logprobs_entropy, default_position_ids, naive_logprobs_entropy, response_logprobs

TOL = 1e-5


def _inputs(n: int, d: int, v: int, *, seed: int = 0, dtype: torch.dtype = torch.float32, scale: float = 0.5):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=gen).to(dtype).requires_grad_()
    weight = (torch.randn(v, d, generator=gen) * scale).to(dtype).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=gen)
    g_logp = torch.randn(n, generator=gen)
    g_ent = torch.randn(n, generator=gen)
    return hidden, weight, targets, g_logp, g_ent


def _run(fn, hidden: Tensor, weight: Tensor, targets: Tensor, g_logp: Tensor, g_ent: Tensor, **kw):
    """Values and grads w.r.t. (hidden, weight) of sum(g_logp * logp + g_ent * H)."""
    hidden = hidden.detach().clone().requires_grad_(hidden.requires_grad)
    weight = weight.detach().clone().requires_grad_(weight.requires_grad)
    logp, ent = fn(hidden, weight, targets, **kw)
    loss = (g_logp * logp).sum() + (g_ent * ent).sum()
    loss.backward()
    return logp.detach(), ent.detach(), hidden.grad, weight.grad


def _max_diff(a: Tensor, b: Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def _tol(ref: Tensor) -> float:
    """1e-5, scaled up for quantities larger than 1 (fp32 matmuls over V terms round relatively)."""
    return TOL * max(1.0, ref.abs().max().item())


@pytest.mark.parametrize(
    ("n", "v", "chunk", "temperature"),
    [(50, 3001, 7, 0.7), (50, 3001, 64, 1.0), (50, 3001, 1, 1.3), (33, 5000, 16, 0.6), (40, 257, 1024, 1.0)],
)
def test_matches_naive_fp32(n: int, v: int, chunk: int, temperature: float) -> None:
    """fp32 chunked vs the naive oracle, both in fp32 and evaluated exactly (float64)."""
    hidden, weight, targets, g_logp, g_ent = _inputs(n, 32, v, scale=0.35)  # logits std ~2 / T
    kw = {"temperature": temperature, "chunk_size": chunk}
    got = _run(chunked_logprobs_entropy, hidden, weight, targets, g_logp, g_ent, **kw)
    ref32 = _run(naive_logprobs_entropy, hidden, weight, targets, g_logp, g_ent, **kw)
    exact = _run(
        naive_logprobs_entropy, hidden.double(), weight.double(), targets, g_logp.double(), g_ent.double(), **kw
    )
    for name, a, b, e in zip(("logp", "entropy", "grad_hidden", "grad_weight"), got, ref32, exact, strict=True):
        assert a.dtype == b.dtype == torch.float32, name
        assert _max_diff(a, e) <= _tol(e), f"{name} vs float64: {_max_diff(a, e)}"
        assert _max_diff(a, b) <= _tol(e), f"{name} vs fp32 naive: {_max_diff(a, b)}"


def test_gradcheck_float64() -> None:
    hidden, weight, targets, _, _ = _inputs(9, 6, 40, dtype=torch.float64, scale=1.0)

    def fn(h: Tensor, w: Tensor) -> tuple[Tensor, Tensor | None]:
        return chunked_logprobs_entropy(h, w, targets, temperature=0.8, chunk_size=4)

    assert torch.autograd.gradcheck(fn, (hidden, weight))


def test_only_logp_used_and_without_entropy() -> None:
    hidden, weight, targets, g_logp, _ = _inputs(21, 16, 300)
    ref_logp, _ = naive_logprobs_entropy(hidden, weight, targets, temperature=0.9)
    ref_gh, ref_gw = torch.autograd.grad((g_logp * ref_logp).sum(), (hidden, weight))
    for with_entropy in (True, False):
        logp, ent = chunked_logprobs_entropy(
            hidden, weight, targets, temperature=0.9, chunk_size=5, with_entropy=with_entropy
        )
        assert (ent is None) == (not with_entropy)
        gh, gw = torch.autograd.grad((g_logp * logp).sum(), (hidden, weight))
        assert _max_diff(logp, ref_logp) <= TOL
        assert _max_diff(gh, ref_gh) <= TOL and _max_diff(gw, ref_gw) <= TOL


def test_only_entropy_used() -> None:
    hidden, weight, targets, _, g_ent = _inputs(21, 16, 300)
    _, ref_ent = naive_logprobs_entropy(hidden, weight, targets)
    ref = torch.autograd.grad((g_ent * ref_ent).sum(), (hidden, weight))
    _, ent = chunked_logprobs_entropy(hidden, weight, targets, chunk_size=8)
    got = torch.autograd.grad((g_ent * ent).sum(), (hidden, weight))
    assert max(_max_diff(a, b) for a, b in zip(got, ref, strict=True)) <= TOL


@pytest.mark.parametrize("frozen", ["weight", "hidden"])
def test_frozen_input(frozen: str) -> None:
    hidden, weight, targets, g_logp, g_ent = _inputs(19, 16, 300)
    if frozen == "weight":
        weight.requires_grad_(False)
    else:
        hidden.requires_grad_(False)
    got = _run(chunked_logprobs_entropy, hidden, weight, targets, g_logp, g_ent, chunk_size=6)
    ref = _run(naive_logprobs_entropy, hidden, weight, targets, g_logp, g_ent)
    for a, b in zip(got, ref, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert _max_diff(a, b) <= TOL
    assert (got[2] is None) == (frozen == "hidden") and (got[3] is None) == (frozen == "weight")


def test_bf16_inputs() -> None:
    hidden, weight, targets, g_logp, g_ent = _inputs(45, 32, 2000, dtype=torch.bfloat16)
    got = _run(chunked_logprobs_entropy, hidden, weight, targets, g_logp, g_ent, temperature=0.8, chunk_size=16)
    ref32 = _run(
        naive_logprobs_entropy, hidden.float(), weight.float(), targets, g_logp, g_ent, temperature=0.8
    )
    assert got[0].dtype == got[1].dtype == torch.float32
    assert got[2].dtype == got[3].dtype == torch.bfloat16
    # same fp32 math on the exact bf16 values: tight on values; grads differ by the final bf16 rounding
    assert _max_diff(got[0], ref32[0]) <= 1e-4 and _max_diff(got[1], ref32[1]) <= 1e-4
    for a, b in zip(got[2:], ref32[2:], strict=True):
        assert _max_diff(a, b) <= 1e-2 * b.abs().max().item()


def test_autocast_does_not_lower_precision() -> None:
    hidden, weight, targets, _, _ = _inputs(20, 16, 500)
    ref_logp, ref_ent = naive_logprobs_entropy(hidden, weight, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logp, ent = chunked_logprobs_entropy(hidden, weight, targets, chunk_size=8)
    assert logp.dtype == torch.float32
    assert _max_diff(logp, ref_logp) <= TOL and _max_diff(ent, ref_ent) <= TOL


def test_empty_and_bad_inputs() -> None:
    hidden, weight, targets, _, _ = _inputs(0, 8, 50)
    logp, ent = chunked_logprobs_entropy(hidden, weight, targets)
    assert logp.shape == ent.shape == (0,)
    (logp.sum() + ent.sum()).backward()
    assert weight.grad is not None and not weight.grad.any()
    with pytest.raises(ValueError, match="hidden dim"):
        chunked_logprobs_entropy(torch.randn(3, 8), torch.randn(50, 9), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="targets"):
        chunked_logprobs_entropy(torch.randn(3, 8), torch.randn(50, 8), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        chunked_logprobs_entropy(torch.randn(3, 8), torch.randn(50, 8), torch.zeros(3, dtype=torch.long), temperature=0)


# ---------------------------------------------------------------------------------------------
# Hugging Face model helper
# ---------------------------------------------------------------------------------------------


def _tiny_qwen2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        vocab_size=104,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return transformers.Qwen2ForCausalLM(config).eval()


def _left_padded_batch(vocab: int = 104, prompt_len: int = 6, resp_len: int = 5):
    gen = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, vocab, (3, prompt_len + resp_len), generator=gen)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :3] = 0  # left padding of different lengths
    attention_mask[1, :1] = 0
    attention_mask[2, -2:] = 0  # right padding after an early EOS
    return input_ids, attention_mask, prompt_len


def _reference(model, input_ids: Tensor, attention_mask: Tensor, start: int, temperature: float):
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=default_position_ids(attention_mask))
    logits = out.logits[:, start - 1 : -1].float() / temperature
    logp = torch.log_softmax(logits, -1).gather(-1, input_ids[:, start:, None]).squeeze(-1)
    ent = torch.logsumexp(logits, -1) - (torch.softmax(logits, -1) * logits).sum(-1)
    return logp, ent


def test_response_logprobs_matches_model_logits() -> None:
    model = _tiny_qwen2()
    input_ids, attention_mask, start = _left_padded_batch()
    gen = torch.Generator().manual_seed(2)
    n_resp = input_ids.shape[1] - start
    g1, g2 = torch.randn(3, n_resp, generator=gen), torch.randn(3, n_resp, generator=gen)

    logp, ent = response_logprobs(model, input_ids, attention_mask, start, temperature=0.7, chunk_size=4)
    assert logp.shape == ent.shape == (3, input_ids.shape[1] - start)
    grads = torch.autograd.grad((g1 * logp + g2 * ent).sum(), list(model.parameters()))

    ref_logp, ref_ent = _reference(model, input_ids, attention_mask, start, 0.7)
    ref_grads = torch.autograd.grad((g1 * ref_logp + g2 * ref_ent).sum(), list(model.parameters()))
    assert _max_diff(logp, ref_logp) <= TOL and _max_diff(ent, ref_ent) <= TOL
    assert max(_max_diff(a, b) for a, b in zip(grads, ref_grads, strict=True)) <= TOL


def test_response_logprobs_explicit_positions_and_peft() -> None:
    model = _tiny_qwen2()
    input_ids, attention_mask, start = _left_padded_batch()
    positions = torch.arange(input_ids.shape[1]).expand_as(input_ids)
    logp, _ = response_logprobs(model, input_ids, attention_mask, start, position_ids=positions, with_entropy=False)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions)
    ref = torch.log_softmax(out.logits[:, start - 1 : -1].float(), -1)
    ref = ref.gather(-1, input_ids[:, start:, None]).squeeze(-1)
    assert _max_diff(logp, ref) <= TOL

    peft = pytest.importorskip("peft")
    peft_model = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param)  # make the adapter change the outputs
    logp_peft, _ = response_logprobs(peft_model, input_ids, attention_mask, start)
    ref_peft, _ = _reference(peft_model, input_ids, attention_mask, start, 1.0)
    assert _max_diff(logp_peft, ref_peft) <= TOL


def test_response_logprobs_rejects_unsupported_heads() -> None:
    model = _tiny_qwen2()
    input_ids, attention_mask, start = _left_padded_batch()
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(NotImplementedError, match="final_logit_softcapping"):
        response_logprobs(model, input_ids, attention_mask, start)
    model.config.final_logit_softcapping = None
    model.lm_head = torch.nn.Linear(64, 104, bias=True)
    with pytest.raises(NotImplementedError, match="bias"):
        response_logprobs(model, input_ids, attention_mask, start)
    with pytest.raises(ValueError, match="response_start"):
        response_logprobs(model, input_ids, attention_mask, 0)
