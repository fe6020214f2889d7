"""Rollout engine factory, the vLLM backend's batch layout and weight sync (fake engine), real vLLM if present."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch

from rlvr.errors import ConfigError
from rlvr.models.tiny import char_tokenizer, tiny_qwen2
from rlvr.rollout.engines import HFEngine, RolloutEngine, build_engine
from rlvr.rollout.hf import HFRollout
from rlvr.rollout.vllm import VLLM_MISSING, VLLMRollout, assemble_batch, vllm_available


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


def _model(tok, seed: int = 0):
    return tiny_qwen2(tok, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64, seed=seed)


def test_hf_engine_is_a_rollout_engine(tok):
    engine = build_engine("hf", tok, chat_template="off")
    assert isinstance(engine, HFEngine) and isinstance(engine, RolloutEngine)
    model = _model(tok)
    engine.sync_weights(model)  # no-op
    torch.manual_seed(0)
    batch = engine.generate(model, ["1+2="], n=2, max_new_tokens=4)
    assert batch.input_ids.shape[0] == 2
    with pytest.raises(ConfigError, match="valid: hf, vllm"):
        build_engine("sglang", tok)


def test_missing_vllm_gives_install_hint(tok, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes ``import vllm`` raise ImportError
    with pytest.raises(ConfigError) as info:
        build_engine("vllm", tok, model_path=tmp_path)
    assert str(info.value) == VLLM_MISSING
    assert "rollout.backend=vllm needs the optional extra: pip install 'rlvr[vllm]'" in str(info.value)


def _hf_rows(batch):
    """Per-prompt prompt ids and per-row response ids (valid tokens only) of an HFRollout batch."""
    prompts, responses = [], []
    for row in range(batch.input_ids.shape[0]):
        prompt = batch.input_ids[row, : batch.prompt_len][batch.attention_mask[row, : batch.prompt_len].bool()]
        prompts.append(prompt.tolist())
        responses.append(batch.response_ids[row][batch.response_mask[row].bool()].tolist())
    return prompts, responses


def test_assemble_batch_matches_hf_layout(tok):
    torch.manual_seed(3)
    n = 3
    hf = HFRollout(tok, "off").generate(_model(tok), ["12+3=", "7*8=", "1="], n=n, max_new_tokens=6)
    prompts, responses = _hf_rows(hf)
    # vLLM-style responses: EOS kept, plus junk after the EOS that must be cut
    junk = [r + [tok.convert_tokens_to_ids("x")] if r and r[-1] == tok.eos_token_id else r for r in responses]
    out = assemble_batch(tok, prompts[::n], junk, n=n, max_new_tokens=6)
    assert out.prompt_len == hf.prompt_len
    for field in ("input_ids", "attention_mask", "response_mask", "truncated", "group_ids"):
        assert torch.equal(getattr(out, field), getattr(hf, field).to(getattr(out, field).dtype)), field
    assert out.responses == hf.responses


class FakeLLM:
    """Duck-typed ``vllm.LLM``: fixed completions, an in-process model that records load_weights."""

    def __init__(self, completions):
        self.completions = completions
        self.loaded: list[tuple[str, torch.Tensor]] = []
        self.calls: list = []
        self.resets = 0
        model = SimpleNamespace(load_weights=lambda weights: self.loaded.extend(weights))
        worker = SimpleNamespace(model_runner=SimpleNamespace(model=model))
        self.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(driver_worker=worker))

    def generate(self, prompts, params, use_tqdm=False):
        self.calls.append((prompts, params))
        return [
            SimpleNamespace(outputs=[SimpleNamespace(index=i, token_ids=ids) for i, ids in reversed(list(enumerate(group)))])
            for group in self.completions[: len(prompts)]
        ]

    def reset_prefix_cache(self):
        self.resets += 1


def test_vllm_rollout_with_fake_engine(tok, tmp_path):
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    eos = tok.eos_token_id
    fake = FakeLLM([[ids("15") + [eos], ids("150")], [ids("56") + [eos], []]])
    engine = VLLMRollout(tok, tmp_path, chat_template="off", llm=fake, sampling_params_cls=lambda **kw: kw)
    batch = engine.generate(_model(tok), ["12+3=", "7*8="], n=2, max_new_tokens=3, temperature=0.7, top_k=5)
    prompts, params = fake.calls[0]
    assert prompts[0]["prompt_token_ids"] == [tok.bos_token_id] + ids("12+3=")
    assert params["n"] == 2 and params["temperature"] == 0.7 and params["top_k"] == 5 and params["stop_token_ids"] == [eos]
    assert set(params["logit_bias"]) == {tok.pad_token_id, tok.bos_token_id, tok.unk_token_id}
    assert batch.responses == ["15", "150", "56", ""]
    assert batch.truncated.tolist() == [False, True, False, True]
    assert batch.response_mask.sum(-1).tolist() == [3.0, 3.0, 3.0, 0.0]
    assert batch.group_ids.tolist() == [0, 0, 1, 1]
    greedy = engine._sampling_params(1, 4, 0.7, 0.9, 5, greedy=True)
    assert greedy["temperature"] == 0.0 and greedy["top_k"] == -1


def test_vllm_weight_sync_pushes_merged_weights(tok, tmp_path):
    pytest.importorskip("peft")
    from rlvr.models.lora import apply_lora

    fake = FakeLLM([])
    engine = VLLMRollout(tok, tmp_path, llm=fake, sampling_params_cls=dict)
    plain = _model(tok)
    engine.sync_weights(plain)
    assert [n for n, _ in fake.loaded] == [n for n, _ in plain.named_parameters()] and fake.resets == 1
    model = apply_lora(_model(tok), r=2, alpha=4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.1)
    fake.loaded.clear()
    engine.sync_weights(model)
    merged = dict(fake.loaded)
    reference = dict(model.merge_and_unload().named_parameters())
    assert set(merged) == set(reference)
    assert all(torch.allclose(merged[k], reference[k], atol=1e-6) for k in reference)
    reloaded: list = []  # newer vLLM: the wrapped worker's in-place reload_weights is preferred
    worker = SimpleNamespace(reload_weights=lambda weights_iterator, is_checkpoint_format: reloaded.extend(weights_iterator))
    fake.llm_engine.model_executor.driver_worker = SimpleNamespace(worker=worker)
    engine.sync_weights(plain)
    assert [n for n, _ in reloaded] == [n for n, _ in plain.named_parameters()]


@pytest.mark.skipif(not vllm_available(), reason="vLLM is not installed (optional extra: pip install 'rlvr[vllm]')")
def test_real_vllm_greedy_matches_hf_after_sync(tok, tmp_path):
    def model(seed):  # head_dim 64 (vLLM's CPU attention rejects 16); scaled so greedy has no near-ties
        m = tiny_qwen2(tok, hidden_size=128, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=256, seed=seed)
        with torch.no_grad():
            for p in m.parameters():
                if p.dim() > 1:
                    p.mul_(8.0)
        return m

    prompts = ["12+3=", "7*8="]
    hf = HFRollout(tok, "off")
    first, updated = model(0), model(1)  # tied embeddings, like the built-in tiny model
    first.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    engine = build_engine("vllm", tok, chat_template="off", model_path=tmp_path, dtype="float32", max_model_len=64)
    greedy = lambda e, m: e.generate(m, prompts, n=1, max_new_tokens=8, greedy=True).responses  # noqa: E731
    assert greedy(engine, first) == greedy(hf, first)
    assert greedy(hf, updated) != greedy(hf, first)
    engine.sync_weights(updated)  # only a working sync (incl. the tied LM head) makes the outputs match
    assert greedy(engine, updated) == greedy(hf, updated)
    sampled = engine.generate(updated, prompts, n=3, max_new_tokens=8)
    assert sampled.input_ids.shape[0] == 6 and sampled.group_ids.tolist() == [0, 0, 0, 1, 1, 1]


class SleepyLLM(FakeLLM):
    """A FakeLLM with vLLM's sleep-mode calls, recording their order with the weight loads."""

    def __init__(self, completions, log):
        super().__init__(completions)
        self.log = log
        model = SimpleNamespace(load_weights=lambda weights: log.append("load"))
        self.llm_engine.model_executor.driver_worker = SimpleNamespace(model_runner=SimpleNamespace(model=model))

    def sleep(self, level):
        self.log.append(f"sleep{level}")

    def wake_up(self):
        self.log.append("wake")

    def generate(self, prompts, params, use_tqdm=False):
        self.log.append("generate")
        eos = params["stop_token_ids"][0]
        return [SimpleNamespace(outputs=[SimpleNamespace(index=i, token_ids=[eos]) for i in range(params["n"])]) for _ in prompts]


def test_colocated_vllm_sleeps_for_the_update_and_wakes_to_sync(tmp_path, fast_overrides, monkeypatch):
    """In the trainer: sample, sleep (frees GPU memory), update, wake + load the new weights, sample."""
    from rlvr.train.config import load_config
    from rlvr.train.learner import Learner
    from rlvr.train.trainer import Trainer

    log: list[str] = []

    def fake_engine(tokenizer, model_path, *, chat_template, seed, sleep, **options):
        assert options["gpu_memory_utilization"] == 0.3 and options["tensor_parallel_size"] == 1
        llm = SleepyLLM([], log)
        return VLLMRollout(tokenizer, model_path, chat_template=chat_template, sleep=sleep, llm=llm, sampling_params_cls=dict)

    monkeypatch.setattr("rlvr.rollout.vllm.VLLMRollout", fake_engine, raising=True)
    real_update = Learner.update
    monkeypatch.setattr(Learner, "update", lambda self, tb, step: (log.append("update"), real_update(self, tb, step))[1])
    cfg = load_config(None, [*fast_overrides, "rollout.backend=vllm", "rollout.vllm.sleep=true",
                             "rollout.vllm.gpu_memory_utilization=0.3", "warmstart.steps=0"])
    trainer = Trainer(cfg, quiet=True)
    trainer.learner.start()
    trainer.train_step()
    trainer.train_step()
    assert log == ["generate", "sleep1", "update", "wake", "load", "generate", "sleep1", "update", "wake", "load"]
