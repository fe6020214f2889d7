"""R^3's replay and reflection (rollout stage), arXiv 2601.19620; its ranking reward is :mod:`rlvr.algos.r3`.

R^3 ("Replay, Reflection, and Ranking Rewards for LLM Reinforcement Learning", Jiang et al. 2026)
releases no code. **Sourced** (abstract and two summaries): when every response of a group fails,
GRPO's advantages collapse to 0; (1) *cross-context replay* keeps a buffer of good responses per
query and injects earlier successes of the same query into such a group, restoring the advantage
gap; (2) *in-context self-reflection* re-prompts persistent failures with their previous erroneous
attempt in the context.

**Inferred** (every mechanism detail and default is ours):

* What counts as "all fail": no row of the group is verified correct (``RolloutResult.correct``).
* Replay: the buffer holds the ``buffer_size`` most recent verified-correct responses of each
  prompt id (token ids and score, :meth:`rlvr.train.history.PromptHistory.store_response`; in the
  checkpoint), filled from every freshly sampled round. In a failed group the *last*
  ``min(inject, buffer, n - 1)`` rows are replaced by stored responses drawn without replacement;
  they keep their stored score and count as correct.
* Reflection: a failed group of a prompt with no stored success whose every earlier visit had
  accuracy 0 (and at least ``reflect_min_visits`` visits, this one included) is re-prompted with
  its first failed attempt: prompt + attempt (its trailing EOS dropped) + ``reflection_prompt``,
  continued ``reflection_n`` times; the verifier reads the continuation alone. Up to ``inject`` of
  the correct continuations replace the group's last rows: with ``reflection_context="original"``
  as responses to the plain prompt (what the model should learn to answer without the hint), with
  ``"reflection"`` after the prompt, attempt and reflection text they were sampled from (the
  continuation alone trains). Reflected successes also enter the replay buffer.
* Replayed rows and original-context reflected rows were not sampled by the current policy from
  the prompt they train on. As Confucius3-Math's Recent Sample Recovery (also off-policy, also no
  importance correction) they get old log-probs from a separate forward of the current weights
  (``RolloutResult.off_policy``): the importance ratio starts at 1 and PPO's clip bounds the update.

Runs on every sampled round before DAPO's dynamic-sampling filter, which then keeps the repaired
groups. ``extras["r3_source"]`` (``(B,)`` long) is :data:`SAMPLED`, :data:`REPLAYED` or
:data:`REFLECTED`; the prompt history records the sampled rows only.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any

import torch
from torch import Tensor

from rlvr.errors import RLVRError
from rlvr.rollout.base import RolloutBatch, concat_batches, eos_ids
from rlvr.rollout.stage import RolloutResult, RolloutStage, batch_to, shard_seed
from rlvr.rollout.vllm import assemble_batch
from rlvr.tasks.base import Problem, context_length
from rlvr.train.config import R3Config
from rlvr.train.history import PromptHistory

R3_SOURCE = "r3_source"
"""``extras`` key: ``(B,)`` long, where a row comes from (:data:`SAMPLED`, :data:`REPLAYED`, :data:`REFLECTED`)."""
SAMPLED, REPLAYED, REFLECTED = 0, 1, 2


@dataclasses.dataclass
class Injection:
    """Rows ``rows`` of a round replaced by ``batch`` (one row each), all correct, with their scores."""

    rows: list[int]
    batch: RolloutBatch
    scores: Tensor
    source: int


def failed_groups(result: RolloutResult) -> list[list[int]]:
    """The rows of each group of ``result`` with no verified-correct row, in group order."""
    groups: dict[int, list[int]] = defaultdict(list)
    for row, g in enumerate(result.batch.group_ids.tolist()):
        groups[g].append(row)
    correct = result.correct.cpu()
    return [rows for _, rows in sorted(groups.items()) if not bool(correct[rows].any())]


class R3Injector:
    """Repairs the all-failed groups of each sampled round by replay and reflection (module docstring).

    The replay buffer lives in ``history`` (replicated on every rank, checkpointed with it); draws use a
    generator seeded by ``(seed, step, round)``, so every rank and a resumed run inject the same rows.
    """

    def __init__(self, cfg: R3Config, history: PromptHistory) -> None:
        self.cfg = cfg
        self.history = history
        self.stats: dict[str, float] = defaultdict(float)

    def augment(self, stage: RolloutStage, model: Any, result: RolloutResult, step: int, key: tuple = ()) -> RolloutResult:
        """``result`` with replayed / reflected successes in its failed groups, and ``extras[r3_source]``."""
        if result.batch.extras:
            raise RLVRError(
                f"rollout.r3 rebuilds rows without the per-token records {sorted(result.batch.extras)}: "
                "turn off the method that records them"
            )
        c = self.cfg
        if c.replay:
            self._store(result, result.correct.cpu().nonzero().flatten().tolist(), step)
        failed = failed_groups(result)
        generator = torch.Generator().manual_seed(shard_seed(stage.seed, *key, "r3"))
        injections: list[Injection] = []
        reflect: list[list[int]] = []
        for rows in failed:
            pid = result.problems[rows[0]].id
            stored = self.history.stored_responses(pid) if c.replay else []
            room = min(c.inject, len(rows) - 1)
            if stored and room > 0:
                pick = torch.randperm(len(stored), generator=generator)[: min(room, len(stored))].tolist()
                injections.append(self._replayed(stage, result.problems[rows[0]], rows[len(rows) - len(pick) :], [stored[i] for i in pick]))
            elif c.reflection and room > 0 and self._never_solved(pid):
                reflect.append(rows)
        self.stats["r3/failed_groups"] += len(failed)
        self.stats["r3/replayed_groups"] += len(injections)
        if reflect:
            injections += self._reflected(stage, model, result, reflect, step, key)
        if not injections:
            return _tagged(result, torch.full((len(result.problems),), SAMPLED, dtype=torch.long))
        return merge_injections(result, injections, stage.tokenizer.pad_token_id)

    def pop_stats(self) -> dict[str, float]:
        """The counts since the last call (summed over the step's rounds)."""
        out, self.stats = dict(self.stats), defaultdict(float)
        return out

    def _store(self, result: RolloutResult, rows: list[int], step: int) -> None:
        """Keep ``rows`` of ``result`` in the replay buffer of their problem."""
        for row in rows:
            ids = result.batch.response_token_ids(row)
            self.history.store_response(result.problems[row].id, ids, float(result.scores[row]), step + 1, self.cfg.buffer_size)

    def _never_solved(self, pid: str) -> bool:
        earlier = self.history.visit_values(pid, "accuracy")
        return len(earlier) + 1 >= self.cfg.reflect_min_visits and not any(earlier) and not self.history.stored_responses(pid)

    def _replayed(self, stage: RolloutStage, problem: Problem, rows: list[int], stored: list[Any]) -> Injection:
        prompt = stage.engine.prompt_token_ids([problem])
        batch = assemble_batch(stage.tokenizer, prompt, [e.ids.tolist() for e in stored], n=len(stored), max_new_tokens=10**9)
        return Injection(rows, batch, torch.tensor([e.score for e in stored], dtype=torch.float32), REPLAYED)

    def _reflected(
        self, stage: RolloutStage, model: Any, result: RolloutResult, groups: list[list[int]], step: int, key: tuple
    ) -> list[Injection]:
        """Samples ``reflection_n`` continuations after each group's first failed attempt; injects the correct ones."""
        c = self.cfg
        tok = stage.tokenizer
        note = list(tok(c.reflection_prompt, add_special_tokens=False)["input_ids"])
        sampling = dataclasses.replace(stage.step_sampling(), n=c.reflection_n)
        limit = context_length(model.config.to_dict()) if hasattr(model, "config") else None
        problems = [result.problems[rows[0]] for rows in groups]
        prompt_ids = stage.engine.prompt_token_ids(problems)
        kept, prefixes = [], []
        for rows, prompt in zip(groups, prompt_ids):
            prefix = _without_eos(result.batch.response_token_ids(rows[0]), tok) + note
            if limit is not None and len(prompt) + len(prefix) + sampling.max_new_tokens > limit:
                self.stats["r3/reflection_too_long"] += 1
                continue
            kept.append(rows)
            prefixes.append(prefix)
        if not kept:
            return []
        sampled = stage.sample(
            model, [result.problems[rows[0]] for rows in kept], sampling, key=(*key, "r3"), prefixes=prefixes, score_prefix=False
        )
        result.failures = result.failures + sampled.failures  # the step's scorer health counts them
        result.scored += sampled.scored
        self.stats["r3/reflections"] += len(kept)
        self.stats["r3/reflection_accuracy_sum"] += float(sampled.correct.float().sum())
        self.stats["r3/reflection_samples"] += len(sampled.problems)
        out = []
        for g, rows in enumerate(kept):
            wins = [g * c.reflection_n + j for j in range(c.reflection_n) if bool(sampled.correct[g * c.reflection_n + j])]
            if c.replay:
                self._store(sampled, wins, step)  # the reflection rows answer the group's problem
            wins = wins[: min(c.inject, len(rows) - 1)]
            if not wins:
                continue
            if c.reflection_context == "reflection":
                batch = sampled.batch.rows(torch.tensor(wins, device=sampled.batch.input_ids.device))
            else:
                plain = stage.engine.prompt_token_ids([result.problems[rows[0]]])
                batch = assemble_batch(tok, plain, [sampled.batch.response_token_ids(r) for r in wins], n=len(wins), max_new_tokens=10**9)
            out.append(Injection(rows[len(rows) - len(wins) :], batch, sampled.scores[wins].float(), REFLECTED))
        self.stats["r3/reflected_groups"] += len(out)
        return out


def merge_injections(result: RolloutResult, injections: list[Injection], pad_token_id: int) -> RolloutResult:
    """``result`` with each injection's rows in place of the rows it names; groups, problems and order kept."""
    n = len(result.problems)
    device = result.batch.input_ids.device
    merged = concat_batches([result.batch, *[batch_to(i.batch, device) for i in injections]], pad_token_id)
    order = list(range(n))
    source = torch.full((n,), SAMPLED, dtype=torch.long)
    scores, correct = result.scores.clone().float(), result.correct.cpu().clone()
    offset = n
    for inj in injections:
        for j, row in enumerate(inj.rows):
            order[row] = offset + j
            source[row] = inj.source
            scores[row] = inj.scores[j]
            correct[row] = True
        offset += len(inj.rows)
    index = torch.tensor(order, dtype=torch.long, device=device)
    batch = dataclasses.replace(merged.rows(index), group_ids=result.batch.group_ids)
    out = RolloutResult(
        problems=list(result.problems), batch=batch, scores=scores, failures=result.failures, stats=result.stats,
        generate_s=result.generate_s, verified=correct, off_policy=True, scored=result.scored,
    )  # fmt: skip
    return _tagged(out, source)


def sampled_rows(rollout: RolloutResult) -> Tensor:
    """Indices (CPU long) of the rows the current policy sampled from their own prompt (all without R^3)."""
    source = rollout.batch.extras.get(R3_SOURCE)
    if source is None:
        return torch.arange(len(rollout.problems))
    return (source.cpu() == SAMPLED).nonzero().flatten()


def r3_metrics(rollout: RolloutResult, stats: dict[str, float]) -> dict[str, float]:
    """Shares of replayed / reflected rows, the sampled rows' accuracy, and the step's counts."""
    source = rollout.batch.extras.get(R3_SOURCE)
    if source is None:
        return {}
    source = source.cpu()
    correct = rollout.correct.cpu().float()
    out = {
        "r3/replayed_frac": float((source == REPLAYED).float().mean()),
        "r3/reflected_frac": float((source == REFLECTED).float().mean()),
        "r3/sampled_accuracy": float(correct[source == SAMPLED].mean()) if bool((source == SAMPLED).any()) else 0.0,
    }
    stats = dict(stats)
    total, wins = stats.pop("r3/reflection_samples", 0.0), stats.pop("r3/reflection_accuracy_sum", 0.0)
    if total:
        out["r3/reflection_accuracy"] = wins / total
    return {**out, **stats}


def _without_eos(ids: list[int], tokenizer: Any) -> list[int]:
    eos = set(eos_ids(tokenizer))
    while ids and ids[-1] in eos:
        ids = ids[:-1]
    return ids


def _tagged(result: RolloutResult, source: Tensor) -> RolloutResult:
    device = result.batch.input_ids.device
    result.batch = dataclasses.replace(result.batch, extras={**result.batch.extras, R3_SOURCE: source.to(device)})
    return result

