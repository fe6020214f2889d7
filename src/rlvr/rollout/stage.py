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
from rlvr.rollout.adaptive_temperature import AdaptiveTemperature
from rlvr.rollout.base import RolloutBatch, concat_batches
from rlvr.rollout.engines import RolloutEngine
from rlvr.rollout.kv_decode import TemperatureFn
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
    temperature_fn: TemperatureFn | None = None
    """Per-token temperature (HAPO-H adaptive sampling, rlvr's KV-cache loop only); None: ``temperature``."""
    top_logprobs: int = 0
    """Record the ``k`` largest raw log-probs of every response position (``extras``); 0: off."""


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
    off_policy: bool = False
    """Some rows were sampled by an earlier policy (recovered overflow groups, ``rollout.recover_overflow``)."""
    scored: int = 0
    """How many responses the scorer saw to produce this result (with ``failures``: every sampled round
    and extra generation counted, dropped rows included; the scorer health check reads both)."""

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
    score: Callable[[Problem, str], Any] | RewardScorer | None,
    timeout_s: float,
    prefixes: list[list[int]] | None = None,
    score_prefix: bool = True,
) -> tuple[RolloutBatch, Tensor, Counter[str], Tensor | None]:
    """:func:`sample_and_score` and the rows the task's verifier found correct (bool, CPU; None without it).

    ``prefixes[i]`` (token ids, e.g. the start of an earlier response to ``problems[i]``) is appended
    to problem ``i``'s formatted prompt and the responses continue it (:func:`generate_continuations`);
    the verifier then reads prefix + continuation (``score_prefix``) or the continuation alone.
    ``score=None`` skips scoring (scores 0, no verifier call).
    """
    options: dict[str, Any] = {}
    if sampling.temperature_fn is not None:
        options["temperature_fn"] = sampling.temperature_fn
    if sampling.top_logprobs:
        options["top_logprobs"] = sampling.top_logprobs
    if prefixes is None:
        batch = engine.generate(
            model,
            problems,  # Problems, not strings: the chat template also reads their system prompt (meta["system"])
            n=sampling.n,
            max_new_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            greedy=sampling.greedy,
            **options,
        )
        texts = batch.responses
    else:
        batch = generate_continuations(engine, model, problems, prefixes, sampling, **options)
        texts = continuation_texts(engine.tokenizer, batch, prefixes, sampling.n) if score_prefix else batch.responses
    if score is None:
        return batch, torch.zeros(len(texts), dtype=torch.float32), Counter(), None
    per_response = [p for p in problems for _ in range(sampling.n)]
    scored = as_scorer(score)(per_response, texts, timeout_s)
    verified = None if scored.verified is None else torch.tensor(scored.verified, dtype=torch.bool)
    return batch, torch.tensor(scored.rewards, dtype=torch.float32), scored.failures, verified


def generate_continuations(
    engine: Any, model: Any, problems: list[Problem], prefixes: list[list[int]], sampling: Sampling, **options: Any
) -> RolloutBatch:
    """``sampling.n`` continuations of each problem's formatted prompt followed by ``prefixes[i]``.

    The prefix is part of the prompt (``prompt_len`` covers it; ``response_mask`` only the
    continuation), so a method trains on the continuation only. Rows ``i*n .. i*n+n-1`` continue
    problem ``i`` and share group id ``i``. Needs an engine with ``generate_from_ids`` (hf, vllm).
    """
    from_ids = getattr(engine, "generate_from_ids", None)
    if not callable(from_ids):
        raise RLVRError(f"the {getattr(engine, 'name', type(engine).__name__)} rollout engine cannot continue response prefixes")
    ids = [list(p) + list(x) for p, x in zip(engine.prompt_token_ids(problems), prefixes)]
    return from_ids(
        model, ids, n=sampling.n, max_new_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
        top_p=sampling.top_p, top_k=sampling.top_k, greedy=sampling.greedy, **options,
    )  # fmt: skip


def continuation_texts(tokenizer: Any, batch: RolloutBatch, prefixes: list[list[int]], n: int) -> list[str]:
    """The text of prefix + continuation of every row (decoded together, special tokens skipped)."""
    out = []
    for row, (ids, mask) in enumerate(zip(batch.response_ids.tolist(), batch.response_mask.tolist())):
        tokens = list(prefixes[row // n]) + [t for t, keep in zip(ids, mask) if keep]
        out.append(tokenizer.decode(tokens, skip_special_tokens=True))
    return out


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
        recover_overflow: bool = False,
        adaptive_temperature: AdaptiveTemperature | None = None,
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
        self.recover_overflow = recover_overflow
        self.recovery: RolloutResult | None = None  # Confucius3 RSR: last step's overflow groups (CPU)
        self.adaptive_temperature = adaptive_temperature

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

    def step_sampling(self) -> Sampling:
        """This step's sampling of training rows: :attr:`sampling`, with HAPO-H's per-token temperature
        (from the previous step's statistics) when ``rollout.adaptive_temperature`` is on."""
        if self.adaptive_temperature is None:
            return self.sampling
        return dataclasses.replace(self.sampling, temperature_fn=self.adaptive_temperature.sampler(self.sampling.temperature))

    def _sample_local(
        self,
        model: Any,
        problems: list[Problem],
        sampling: Sampling,
        seed: int,
        prefixes: list[list[int]] | None = None,
        score: bool = True,
        score_prefix: bool = True,
    ) -> RolloutResult:
        """Sample and score ``problems`` here, from a random stream seeded with ``seed`` only."""
        t0 = time.perf_counter()
        device = _device_of(model)
        scorer = self.scorer if score else None
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), self.autocast():
            torch.manual_seed(seed)
            batch, scores, failures, verified = sample_scored(
                self.engine, model, problems, sampling, scorer, self.timeout_s, prefixes, score_prefix
            )
        per_response = [p for p in problems for _ in range(sampling.n)]
        return RolloutResult(
            per_response, batch, scores, failures, generate_s=time.perf_counter() - t0, verified=verified,
            scored=len(per_response) if score else 0,
        )  # fmt: skip

    def sample(
        self,
        model: Any,
        problems: list[Problem],
        sampling: Sampling | None = None,
        *,
        key: tuple = (),
        prefixes: list[list[int]] | None = None,
        score: bool = True,
        score_prefix: bool = True,
    ) -> RolloutResult:
        """Sample and score ``problems`` (no filtering), in ``rollout.shards`` shards of whole groups.

        Shard ``s`` is sampled by rank ``s % world_size`` from the seed of ``(seed, *key, s)``; the
        scored shards are gathered, so every rank returns the same result, and the result does not
        depend on the world size. ``prefixes`` (token ids, one list per problem) continue each
        problem's prompt from a prefix of an earlier response (:func:`sample_scored`); ``score=False``
        skips the verifier (scores 0).
        """
        sampling = sampling or self.sampling
        if prefixes is not None and len(prefixes) != len(problems):
            raise ValueError(f"{len(prefixes)} prefixes for {len(problems)} problems")
        shards = self.shards if len(problems) % self.shards == 0 else 1
        per = len(problems) // shards
        local = [
            (
                s,
                self._sample_local(
                    model, problems[s * per : (s + 1) * per], sampling, shard_seed(self.seed, *key, s),
                    None if prefixes is None else prefixes[s * per : (s + 1) * per], score, score_prefix,
                ),  # fmt: skip
            )
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
            scored=sum(r.scored for r in results),
        )

    def collect(self, model: Any, step: int = 0, augment: Augment | None = None) -> RolloutResult:
        """This step's rollout: ``prompts_per_step`` groups, after dynamic sampling when it is on.

        ``augment(result, key)`` turns each sampled round into its training groups before the
        dynamic-sampling filter (CURE's branched continuations, :mod:`rlvr.rollout.cure`; R^3's
        replayed and reflected successes, :mod:`rlvr.rollout.r3`).

        With ``recover_overflow`` (Confucius3-Math's Recent Sample Recovery, arXiv 2506.18330 §6.3)
        the informative groups of the last round that did not fit into this step's batch are kept
        and put first at the next step, before any new round is sampled. Their old log-probs are
        recomputed under the current policy like every row's (no importance correction for the one
        policy version they are behind, as in the paper); :attr:`RolloutResult.off_policy` marks a
        batch holding them.
        """
        t0 = time.perf_counter()
        sampling = self.step_sampling()

        def draw(round_: int) -> RolloutResult:
            result = self.sample(model, self.draw_problems(self.prompts_per_step), sampling, key=(step, round_))
            return augment(result, (step, round_)) if augment is not None else result

        if not self.dynamic_sampling:
            return self._observed(draw(0))
        failures: Counter[str] = Counter()
        kept: list[RolloutResult] = []
        kept_groups = rounds = scored = 0
        recovered, self.recovery = self.recovery, None
        if recovered is not None:
            kept.append(_to_device(recovered, _device_of(model)))
            kept_groups = int(recovered.batch.group_ids.unique().numel())
        recovered_groups = kept_groups
        while True:
            result = draw(rounds)
            rounds += 1
            failures += result.failures
            scored += result.scored
            keep = keep_informative_groups(result.scores, result.batch.group_ids.cpu()).nonzero().squeeze(-1)
            if keep.numel():
                kept.append(_rows(result, keep))
                kept_groups += int(result.batch.group_ids[keep.to(result.batch.group_ids.device)].unique().numel())
            if kept_groups >= self.prompts_per_step or rounds >= self.max_sampling_rounds:
                break
        stats = {
            "sampling/rounds": rounds,
            "sampling/informative_groups": kept_groups,
            "sampling/informative_frac": (kept_groups - recovered_groups) / (rounds * self.prompts_per_step),
        }
        if self.recover_overflow:
            stats["sampling/recovered_groups"] = recovered_groups
        if not kept:
            result.failures, result.scored, result.stats, result.generate_s = failures, scored, stats, time.perf_counter() - t0
            return self._observed(result)
        batch = concat_batches([r.batch for r in kept], self.tokenizer.pad_token_id)
        merged = RolloutResult(
            problems=[p for r in kept for p in r.problems],
            batch=batch,
            scores=torch.cat([r.scores for r in kept]),
            verified=torch.cat([r.correct for r in kept]),
        )
        in_batch = batch.group_ids < self.prompts_per_step
        out = _rows(merged, in_batch.nonzero().squeeze(-1).cpu())
        if self.recover_overflow and not bool(in_batch.all()):
            self.recovery = _to_cpu(_rows(merged, (~in_batch).nonzero().squeeze(-1).cpu()))
        out.failures, out.scored, out.stats, out.generate_s = failures, scored, stats, time.perf_counter() - t0
        out.off_policy = recovered is not None or any(r.off_policy for r in kept)  # RSR's recovered groups, R^3's replays
        return self._observed(out)

    def _observed(self, result: RolloutResult) -> RolloutResult:
        """``result``, after the adaptive temperature took the next step's statistics from it."""
        if self.adaptive_temperature is not None:
            result.stats = {**result.stats, **self.adaptive_temperature.observe(result.batch)}
        return result

    def state_dict(self) -> dict[str, Any]:
        return {
            "data_rng": self.data_rng.getstate(),
            "skipped_data": dict(self.skipped_data),
            "rollout_recovery": None if self.recovery is None else result_to_plain(self.recovery),
            "rollout_adaptive_temperature": None if self.adaptive_temperature is None else self.adaptive_temperature.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.data_rng.setstate(state["data_rng"])
        self.skipped_data = Counter(state.get("skipped_data", {}))
        recovery = state.get("rollout_recovery")
        self.recovery = None if recovery is None else result_from_plain(recovery)
        if self.adaptive_temperature is not None and state.get("rollout_adaptive_temperature"):
            self.adaptive_temperature.load_state_dict(state["rollout_adaptive_temperature"])


Augment = Callable[[RolloutResult, tuple], RolloutResult]
"""A rollout-stage component applied to each sampled round: ``(result, (step, round)) -> result``."""


def result_to_plain(result: RolloutResult) -> dict[str, Any]:
    """A scored rollout as plain containers and CPU tensors (checkpointable with ``weights_only=True``)."""
    b = batch_to(result.batch, torch.device("cpu"))
    return {
        "problems": [dataclasses.asdict(p) for p in result.problems],
        "batch": {f.name: getattr(b, f.name) for f in dataclasses.fields(b)},
        "scores": result.scores.cpu(),
        "verified": result.correct.cpu(),
    }


def result_from_plain(state: dict[str, Any]) -> RolloutResult:
    """The inverse of :func:`result_to_plain` (failures, stats and timings are not kept)."""
    batch = dict(state["batch"])
    batch["responses"] = list(batch["responses"])
    batch["extras"] = dict(batch.get("extras") or {})
    return RolloutResult(
        problems=[Problem(**p) for p in state["problems"]],
        batch=RolloutBatch(**batch),
        scores=state["scores"],
        verified=state["verified"],
    )


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
        off_policy=result.off_policy,
        scored=result.scored,
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
        verified=None if result.verified is None else result.verified.cpu(), scored=result.scored,
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
