"""The rollout stage: draw problems, sample, score; rollout-stage filters; a typed result.

:func:`sample_and_score` is the one sample-and-score path of rlvr: training rollouts, AEPO's extra
samples, the held-out evaluation during training and ``rlvr eval`` all go through it.

:class:`RolloutStage` adds what a training step needs around it: usable problems drawn with the
run's data RNG (bad ones skipped and counted), and DAPO dynamic sampling with refill (arXiv
2503.14476): groups whose verifier scores are all equal carry no GRPO signal, so new prompts are
sampled until ``prompts_per_step`` informative groups are collected or ``max_sampling_rounds``
rounds are spent, and the batch is cut to exactly ``prompts_per_step`` groups. The filter keeps a
group when its score std is > 0 or it has a single response (as the official filter does) and uses
the verifier score (DAPO's ``acc`` metric). If no round yields an informative group, the last round
is trained on as it is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager

import torch
from torch import Tensor

from rlvr.algos.dynamic_sampling import keep_informative_groups
from rlvr.errors import RLVRError
from rlvr.rollout.base import RolloutBatch, concat_batches
from rlvr.rollout.engines import RolloutEngine
from rlvr.tasks.base import Problem, Task, context_length, drop_unusable, prompt_issue, stable_hash
from rlvr.train.distributed import SINGLE, Dist
from rlvr.tasks.reward_funcs import RewardScorer, as_scorer


@dataclass(frozen=True)
class Sampling:
    """How to sample: ``n`` responses per prompt of at most ``max_new_tokens`` tokens."""

    n: int
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    greedy: bool = False


@dataclass
class RolloutResult:
    """A scored rollout batch: row ``i`` answers ``problems[i]`` and scored ``scores[i]`` (CPU).

    ``advantages``, when set, are token advantages a rollout-stage component fixed for these rows,
    and ``scores`` are then the rewards to train on (AEPO's mixed rows: its positive samples' scores
    and the step's shaped rewards); the trainer skips reward shaping and the advantage estimator.
    ``verified`` marks the rows verified correct (default: score 1).
    """

    problems: list[Problem]
    batch: RolloutBatch
    scores: Tensor
    failures: Counter[str] = field(default_factory=Counter)
    stats: dict[str, float] = field(default_factory=dict)
    generate_s: float = 0.0
    advantages: Tensor | None = None
    verified: Tensor | None = None

    @property
    def correct(self) -> Tensor:
        """Verified correct rows (bool, ``(B,)``)."""
        return self.verified if self.verified is not None else self.scores >= 1.0


def prompt_limit(model: Any, max_prompt_tokens: int) -> int:
    """Longest usable prompt in tokens: ``max_prompt_tokens``, capped by the model's context."""
    context = context_length(model.config.to_dict())
    return min(max_prompt_tokens, context) if context else max_prompt_tokens


def token_counter(tokenizer: Any) -> Callable[[str], int]:
    """Tokens of a text (``verbose=False``: no "longer than the maximum" warning; long prompts are skipped)."""
    return lambda text: len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def usable_problems(problems: list[Problem], tokenizer: Any, max_tokens: int, what: str) -> list[Problem]:
    """``problems`` that can be prompted (see :func:`rlvr.tasks.base.prompt_issue`); the rest are
    skipped with one warning. All unusable is an RLVRError."""
    kept, _, note = drop_unusable(problems, token_counter(tokenizer), max_tokens, what)
    if note:
        warnings.warn(note)
    if problems and not kept:
        raise RLVRError(
            f"every {what} problem is unusable ({note}); check the task data, or raise "
            "rollout.max_prompt_tokens (the model's context also caps prompt length)"
        )
    return kept


def sample_and_score(
    engine: RolloutEngine,
    model: Any,
    problems: list[Problem],
    sampling: Sampling,
    score: Callable[[Problem, str], Any] | RewardScorer,
    timeout_s: float,
) -> tuple[RolloutBatch, Tensor, Counter[str]]:
    """``sampling.n`` responses per problem and their crash/hang/NaN-safe scores (float32, CPU).

    Rows ``i*n .. i*n+n-1`` answer ``problems[i]`` and share group id ``i``. ``score`` is the task's
    verifier, or a :class:`~rlvr.tasks.reward_funcs.RewardScorer` (verifier + reward functions).
    """
    batch, scores, failures, _ = sample_scored(engine, model, problems, sampling, score, timeout_s)
    return batch, scores, failures


def sample_scored(
    engine: RolloutEngine,
    model: Any,
    problems: list[Problem],
    sampling: Sampling,
    score: Callable[[Problem, str], Any] | RewardScorer,
    timeout_s: float,
) -> tuple[RolloutBatch, Tensor, Counter[str], Tensor | None]:
    """:func:`sample_and_score` and the rows the task's verifier found correct (bool, CPU; None without it)."""
    batch = engine.generate(
        model,
        problems,  # Problems, not strings: the chat template also reads their system prompt (meta["system"])
        n=sampling.n,
        max_new_tokens=sampling.max_new_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k,
        greedy=sampling.greedy,
    )
    per_response = [p for p in problems for _ in range(sampling.n)]
    scored = as_scorer(score)(per_response, batch.responses, timeout_s)
    verified = None if scored.verified is None else torch.tensor(scored.verified, dtype=torch.bool)
    return batch, torch.tensor(scored.rewards, dtype=torch.float32), scored.failures, verified


class RolloutStage:
    """Problems -> sampled, scored responses for one training step (see the module docstring)."""

    def __init__(
        self,
        task: Task,
        engine: RolloutEngine,
        tokenizer: Any,
        *,
        sampling: Sampling,
        prompts_per_step: int,
        max_prompt_tokens: int,
        dynamic_sampling: bool = False,
        max_sampling_rounds: int = 10,
        timeout_s: float = 10.0,
        seed: int = 0,
        shards: int = 1,
        dist: Dist = SINGLE,
        autocast: Callable[[], ContextManager[None]] = contextlib.nullcontext,
        scorer: RewardScorer | None = None,
    ) -> None:
        if prompts_per_step % shards:
            raise RLVRError(f"rollout.prompts_per_step ({prompts_per_step}) must be a multiple of rollout.shards ({shards})")
        self.task, self.engine, self.tokenizer = task, engine, tokenizer
        self.scorer = scorer or RewardScorer(task.score)  # the verifier alone, or with reward.funcs
        self.seed, self.shards, self.dist = seed, shards, dist
        self.count_tokens = token_counter(tokenizer)
        self.sampling = sampling
        self.prompts_per_step = prompts_per_step
        self.max_prompt_tokens = max_prompt_tokens
        self.dynamic_sampling = dynamic_sampling
        self.max_sampling_rounds = max_sampling_rounds
        self.timeout_s = timeout_s
        self.autocast = autocast
        self.data_rng = random.Random(seed)
        self.skipped_data: Counter[str] = Counter()

    def draw_problems(self, n: int) -> list[Problem]:
        """``n`` usable training problems; bad ones are skipped, counted and the first few reported."""
        out: list[Problem] = []
        for _attempt in range(100):
            for problem in self.task.train_problems(n - len(out), self.data_rng):
                reason = prompt_issue(problem, self.count_tokens, self.max_prompt_tokens)
                if reason is None:
                    out.append(problem)
                    continue
                self.skipped_data[reason] += 1
                if sum(self.skipped_data.values()) <= 3:
                    shown = getattr(problem, "id", repr(problem)[:80])
                    warnings.warn(f"skipping training problem {shown}: {reason.replace('_', ' ')}")
            if len(out) == n:
                return out
        raise RLVRError(
            f"could not draw {n} usable training problems (skipped so far: {dict(self.skipped_data)}); "
            f"check the task data or raise rollout.max_prompt_tokens (prompts are capped at {self.max_prompt_tokens} "
            "tokens, the model's context included)"
        )

    def _sample_local(self, model: Any, problems: list[Problem], sampling: Sampling, seed: int) -> RolloutResult:
        """Sample and score ``problems`` here, from a random stream seeded with ``seed`` only."""
        t0 = time.perf_counter()
        device = _device_of(model)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), self.autocast():
            torch.manual_seed(seed)
            batch, scores, failures, verified = sample_scored(self.engine, model, problems, sampling, self.scorer, self.timeout_s)
        per_response = [p for p in problems for _ in range(sampling.n)]
        return RolloutResult(per_response, batch, scores, failures, generate_s=time.perf_counter() - t0, verified=verified)

    def sample(self, model: Any, problems: list[Problem], sampling: Sampling | None = None, *, key: tuple = ()) -> RolloutResult:
        """Sample and score ``problems`` (no filtering), in ``rollout.shards`` shards of whole groups.

        Shard ``s`` is sampled by rank ``s % world_size`` from the seed of ``(seed, *key, s)``; the
        scored shards are gathered, so every rank returns the same result, and the result does not
        depend on the world size.
        """
        sampling = sampling or self.sampling
        shards = self.shards if len(problems) % self.shards == 0 else 1
        per = len(problems) // shards
        local = [
            (s, self._sample_local(model, problems[s * per : (s + 1) * per], sampling, shard_seed(self.seed, *key, s)))
            for s in range(shards)
            if self.dist.mine(s)
        ]
        if not self.dist.enabled and shards == 1:
            return local[0][1]
        device = _device_of(model)
        pieces = sorted(
            (s, r) for part in self.dist.all_gather_object([(s, _to_cpu(r)) for s, r in local]) for s, r in part
        )
        results = [_to_device(r, device) for _, r in pieces]
        failures: Counter[str] = Counter()
        for r in results:
            failures += r.failures
        return RolloutResult(
            problems=[p for r in results for p in r.problems],
            batch=concat_batches([r.batch for r in results], self.tokenizer.pad_token_id),
            scores=torch.cat([r.scores for r in results]),
            failures=failures,
            generate_s=max(r.generate_s for r in results),
            verified=torch.cat([r.correct for r in results]),
        )

    def collect(self, model: Any, step: int = 0) -> RolloutResult:
        """This step's rollout: ``prompts_per_step`` groups, after dynamic sampling when it is on."""
        t0 = time.perf_counter()
        if not self.dynamic_sampling:
            return self.sample(model, self.draw_problems(self.prompts_per_step), key=(step, 0))
        failures: Counter[str] = Counter()
        kept: list[RolloutResult] = []
        kept_groups = rounds = 0
        while True:
            result = self.sample(model, self.draw_problems(self.prompts_per_step), key=(step, rounds))
            rounds += 1
            failures += result.failures
            keep = keep_informative_groups(result.scores, result.batch.group_ids.cpu()).nonzero().squeeze(-1)
            if keep.numel():
                kept.append(_rows(result, keep))
                kept_groups += int(result.batch.group_ids[keep.to(result.batch.group_ids.device)].unique().numel())
            if kept_groups >= self.prompts_per_step or rounds >= self.max_sampling_rounds:
                break
        stats = {
            "sampling/rounds": rounds,
            "sampling/informative_groups": kept_groups,
            "sampling/informative_frac": kept_groups / (rounds * self.prompts_per_step),
        }
        if not kept:
            result.failures, result.stats, result.generate_s = failures, stats, time.perf_counter() - t0
            return result
        batch = concat_batches([r.batch for r in kept], self.tokenizer.pad_token_id)
        merged = RolloutResult(
            problems=[p for r in kept for p in r.problems],
            batch=batch,
            scores=torch.cat([r.scores for r in kept]),
            verified=torch.cat([r.correct for r in kept]),
        )
        rows = (batch.group_ids < self.prompts_per_step).nonzero().squeeze(-1).cpu()
        out = _rows(merged, rows)
        out.failures, out.stats, out.generate_s = failures, stats, time.perf_counter() - t0
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"data_rng": self.data_rng.getstate(), "skipped_data": dict(self.skipped_data)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.data_rng.setstate(state["data_rng"])
        self.skipped_data = Counter(state.get("skipped_data", {}))


def _rows(result: RolloutResult, index: Tensor) -> RolloutResult:
    """The rows ``index`` (a CPU long tensor) of a result."""
    device_index = index.to(result.batch.input_ids.device)
    return RolloutResult(
        problems=[result.problems[i] for i in index.tolist()],
        batch=result.batch.rows(device_index),
        scores=result.scores[index],
        failures=result.failures,
        stats=result.stats,
        generate_s=result.generate_s,
        verified=result.correct[index],
    )


def shard_seed(*parts: int) -> int:
    """A 63-bit seed from integers (``(seed, step, round, shard)``), the same in every process."""
    return stable_hash(":".join(str(p) for p in parts)) % (2**63 - 1)


def _device_of(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return torch.device("cpu")


def _to_cpu(result: RolloutResult) -> RolloutResult:
    """A copy with CPU tensors (what crosses processes)."""
    return _to_device(result, torch.device("cpu"))


def _to_device(result: RolloutResult, device: torch.device) -> RolloutResult:
    return RolloutResult(
        result.problems, batch_to(result.batch, device), result.scores.cpu(), result.failures, generate_s=result.generate_s,
        verified=None if result.verified is None else result.verified.cpu(),
    )  # fmt: skip


def batch_to(batch: RolloutBatch, device: torch.device) -> RolloutBatch:
    """``batch`` with every tensor (extras included) on ``device``."""

    def moved(value: Any) -> Any:
        if isinstance(value, Tensor):
            return value.to(device)
        if isinstance(value, dict):
            return {k: moved(v) for k, v in value.items()}
        return value

    return dataclasses.replace(batch, **{f.name: moved(getattr(batch, f.name)) for f in dataclasses.fields(batch)})
