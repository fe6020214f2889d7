"""Confucius3-Math Recent Sample Recovery: dynamic sampling's overflow groups come first next step."""

from __future__ import annotations

import io

import pytest
import torch

from rlvr.errors import ConfigError
from rlvr.models.tiny import char_tokenizer
from rlvr.rollout.stage import RolloutStage, Sampling
from rlvr.rollout.vllm import assemble_batch
from rlvr.tasks.base import Problem
from rlvr.train.config import load_config
from rlvr.train.learner import OldLogprobSource
from rlvr.train.trainer import Trainer

# the two responses of problem p<i>; a group is informative when its scores differ ("1" scores 1)
SCRIPT = [["1", "0"], ["1", "1"], ["0", "1"], ["1", "0"], ["0", "1"], ["1", "0"], ["0", "0"], ["1", "0"]]


class Scripted:
    """Problems p0, p1, ... in order, each with its two scripted responses."""

    name = "scripted"

    def __init__(self, start: int = 0) -> None:
        self.i = start

    def train_problems(self, n, rng):
        out = [Problem(id=f"p{k}", prompt="1+1=", answer="2", meta={"answers": SCRIPT[k]}) for k in range(self.i, self.i + n)]
        self.i += n
        return out

    def score(self, problem, response: str) -> float:
        return float(response == "1")


class ScriptedEngine:
    """Returns each problem's scripted responses (then EOS)."""

    name = "scripted"

    def __init__(self, tok) -> None:
        self.tokenizer = tok

    def generate(self, model, problems, *, n, max_new_tokens, **_):
        tok = self.tokenizer
        prompts = [tok(p.prompt, add_special_tokens=False)["input_ids"] for p in problems]
        responses = [tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for p in problems for a in p.meta["answers"][:n]]
        return assemble_batch(tok, prompts, responses, n, max_new_tokens)


def _stage(recover: bool, start: int = 0) -> RolloutStage:
    tok = char_tokenizer()
    return RolloutStage(
        Scripted(start), ScriptedEngine(tok), tok, sampling=Sampling(n=2, max_new_tokens=4), prompts_per_step=2,
        max_prompt_tokens=32, dynamic_sampling=True, recover_overflow=recover,
    )  # fmt: skip


def _groups(result) -> list[str]:
    return [p.id for p in result.problems][::2]


def test_overflow_groups_are_recovered_first_next_step():
    stage = _stage(recover=True)
    first = stage.collect(None, step=0)
    # round 0: p0 informative, p1 not; round 1: p2, p3 informative -> batch p0, p2; p3 overflows
    assert _groups(first) == ["p0", "p2"] and not first.off_policy
    assert first.stats["sampling/recovered_groups"] == 0 and first.stats["sampling/rounds"] == 2
    assert stage.recovery is not None and _groups(stage.recovery) == ["p3"]
    second = stage.collect(None, step=1)
    # p3 first, then one round: p4, p5 informative -> batch p3, p4; p5 overflows
    assert _groups(second) == ["p3", "p4"] and second.off_policy
    assert second.stats["sampling/recovered_groups"] == 1 and second.stats["sampling/rounds"] == 1
    assert second.stats["sampling/informative_groups"] == 3 and second.stats["sampling/informative_frac"] == 1.0
    assert second.scores.tolist() == [1.0, 0.0, 0.0, 1.0] and second.batch.group_ids.tolist() == [0, 0, 1, 1]
    assert _groups(stage.recovery) == ["p5"]

    plain = _stage(recover=False)
    plain.collect(None, step=0)
    assert plain.recovery is None and _groups(plain.collect(None, step=1)) == ["p4", "p5"]


def test_recovery_buffer_survives_a_weights_only_checkpoint():
    stage = _stage(recover=True)
    stage.collect(None, step=0)
    buffer = io.BytesIO()
    torch.save(stage.state_dict(), buffer)
    buffer.seek(0)
    restored = _stage(recover=True, start=4)  # the task stream continues where the first stage's is
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    a, b = stage.collect(None, step=1), restored.collect(None, step=1)
    assert _groups(a) == _groups(b) == ["p3", "p4"] and b.off_policy
    for field in ("input_ids", "attention_mask", "response_mask", "group_ids", "truncated"):
        assert torch.equal(getattr(a.batch, field), getattr(b.batch, field)), field
    assert a.batch.responses == b.batch.responses and torch.equal(a.scores, b.scores)
    assert b.problems[0].meta == {"answers": ["1", "0"]}


def test_recover_overflow_needs_dynamic_sampling():
    with pytest.raises(ConfigError, match="recover_overflow"):
        load_config(None, ["rollout.recover_overflow=true"])


@pytest.mark.parametrize("off_policy", [False, True])
def test_recovered_rows_never_reuse_the_update_forward(fast_overrides, off_policy):
    """Old log-probs of a batch with recovered rows come from a separate forward of the current weights."""
    trainer = Trainer(load_config(None, [*fast_overrides, "train.steps=1", "eval.every=100"]), quiet=True)
    collect, update, seen = trainer.rollout.collect, trainer.learner.update, []

    def collect_marked(model, step, augment=None):
        result = collect(model, step, augment)
        result.off_policy = off_policy
        return result

    trainer.rollout.collect = collect_marked
    trainer.learner.update = lambda tb, step: (seen.append(tb.old_source), update(tb, step))[1]
    trainer.run()
    expected = OldLogprobSource.ROLLOUT_FORWARD if off_policy else OldLogprobSource.UPDATE_FORWARD
    assert seen == [expected]


def test_resume_restores_the_recovery_buffer_and_the_temperature_statistics(tmp_path, fast, informative):
    """Stopped after step 2 (whose overflow group step 3 recovers) and resumed: the metrics of a straight run."""
    from rlvr.train.logging import read_metrics

    shape = [*fast, *informative.overrides, "rollout.group_size=2", "rollout.dynamic_sampling=true", "rollout.recover_overflow=true",
             "rollout.adaptive_temperature.enabled=true", "eval.every=100"]  # fmt: skip
    Trainer(load_config(None, [*shape, "train.steps=4", f"output_dir={tmp_path / 'a'}"]), quiet=True).run()
    Trainer(load_config(None, [*shape, "train.steps=2", f"output_dir={tmp_path / 'b'}"]), quiet=True).run()
    Trainer(load_config(None, [*shape, "train.steps=4", f"output_dir={tmp_path / 'b'}"]), quiet=True).run(resume=True)

    def stable(run):
        volatile = ("time/", "throughput/", "eval/")  # run b's step 2 was a last step: it evaluated
        return [{k: v for k, v in r.items() if not k.startswith(volatile)} for r in read_metrics(tmp_path / run / "metrics.jsonl")]

    a, b = stable("a"), stable("b")
    assert [r.get("sampling/recovered_groups") for r in a[1:]] == [0, 1, 1, 0]  # step 3 starts with step 2's overflow
    assert a[3]["adaptive_temperature/mean"] != 1.0
    assert a == b
