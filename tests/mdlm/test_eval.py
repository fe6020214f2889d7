"""``rlvr eval`` of a saved masked diffusion model samples it with the masked-diffusion decoder."""

from __future__ import annotations

from rlvr.eval.runner import evaluate_model
from rlvr.models.build import build_model_and_tokenizer
from rlvr.rollout.mdlm import MDLMEngine
from rlvr.train.config import ModelConfig, TinyModelConfig


def test_eval_of_a_saved_mdlm_uses_the_diffusion_decoder(tmp_path, monkeypatch):
    tiny = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    model, tokenizer = build_model_and_tokenizer(ModelConfig(kind="mdlm", tiny=tiny))
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    calls = []
    real = MDLMEngine.generate

    def counting(self, model, prompts, **kwargs):
        calls.append(kwargs["max_new_tokens"])
        return real(self, model, prompts, **kwargs)

    monkeypatch.setattr(MDLMEngine, "generate", counting)
    summary = evaluate_model(tmp_path / "model", "task:countdown", tmp_path / "out", n=2, limit=3, max_new_tokens=8, progress=False)
    assert calls == [8] and summary["complete"]
    assert summary["last_invocation"]["tokens"] == 3 * 2 * 8  # every committed position is a response token
