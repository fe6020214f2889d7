"""CURE stage 1, critical-token re-concatenation: continuations branched at high-entropy positions.

CURE (official bytedance/CURE ``recipe/CURE_First_Stage/dapo_ray_trainer.py``,
``get_critic_key_token_mask`` and the ``fit`` loop; ``run_cure_stage_1.sh``). Each prompt gets
``n1`` first-pass responses (``rollout.group_size``). For each response:

1. the per-token entropies of the rollout policy (the learner's old-policy forward, at the sampling
   temperature, as the official ``compute_log_prob``) are sorted in descending order;
2. the first ``top_k`` (20) *valid* positions are kept: a response token, not position 0, not a
   special token (``skip_special``), decoding to at least ``min_token_chars`` characters after
   ``strip()`` (official: more than 1; a knob because with a character tokenizer that removes every
   token); the branch point ``k`` is drawn uniformly among them (``k = 0`` when none is valid, as the
   official fallback);
3. the prompt followed by the response prefix ``response[:k]`` (the critical token itself is
   re-generated) is continued ``n2`` (3) times. The prefix is part of the continuation's prompt, so
   a continuation row trains on its own tokens only (``response_mask`` covers the continuation).

The group is the ``n1`` first-pass responses followed by their ``n1 * n2`` continuations (first-pass
row ``i``'s continuations in order), one group id: the advantage (GRPO in the recipe) is taken over
all ``n1 (1 + n2)``. Runs on every sampled round before DAPO's dynamic-sampling filter, which then
sees the merged groups as in the official loop. The verifier reads prefix + continuation
(``score="full"``), or only the continuation (``score="continuation"``: the official reward manager
decodes the response tokens alone). ``extras["cure_branch"]`` (``(B,)`` long) is ``k`` for a
continuation row and -1 for a first-pass row. Stage 2 of CURE is plain DAPO from the stage-1
checkpoint (a second run).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from rlvr.rollout.base import concat_batches
from rlvr.rollout.stage import RolloutResult, RolloutStage, shard_seed
from rlvr.train.config import CUREConfig

CURE_BRANCH = "cure_branch"
"""``extras`` key: ``(B,)`` long, the branch position of a continuation row (-1: a first-pass row)."""


def branch_candidates(
    response_ids: Tensor, response_mask: Tensor, tokenizer: Any, *, min_token_chars: int, skip_special: bool
) -> Tensor:
    """Bool ``(B, T)``, CPU: the positions a response may branch at (valid, not 0, not special, long enough)."""
    response_ids = response_ids.cpu()  # read token by token: one device sync per token otherwise
    valid = response_mask.cpu() > 0
    valid[:, :1] = False
    special = set(getattr(tokenizer, "all_special_ids", []) or []) if skip_special else set()
    lengths: dict[int, int] = {}
    out = torch.zeros_like(valid)
    for row, col in valid.nonzero().tolist():
        token = int(response_ids[row, col])
        if token in special:
            continue
        if token not in lengths:
            lengths[token] = len(tokenizer.decode([token]).strip())
        out[row, col] = lengths[token] >= min_token_chars
    return out


def branch_points(entropy: Tensor, candidates: Tensor, top_k: int, generator: torch.Generator) -> Tensor:
    """``(B,)`` long: per row, a position drawn uniformly among its ``top_k`` highest-entropy candidates
    (ties broken by position); 0 for a row without candidates. One draw per row with candidates, in order."""
    out = torch.zeros(entropy.shape[0], dtype=torch.long)
    entropy, candidates = entropy.detach().float().cpu(), candidates.cpu()
    for row in range(entropy.shape[0]):
        positions = candidates[row].nonzero().flatten()
        if positions.numel() == 0:
            continue
        order = torch.argsort(-entropy[row, positions], stable=True)[:top_k]
        pick = int(torch.randint(0, order.numel(), (1,), generator=generator))
        out[row] = positions[order[pick]]
    return out


def merge_branches(first: RolloutResult, continuations: RolloutResult, branches: Tensor, n2: int, pad_token_id: int) -> RolloutResult:
    """First-pass rows and their continuations as one group per prompt (layout in the module docstring).

    ``continuations`` row ``i * n2 + j`` continues ``first`` row ``i`` from ``branches[i]``.
    """
    n1_rows = first.batch.input_ids.shape[0]
    dense = torch.unique(first.batch.group_ids.cpu(), return_inverse=True)[1]
    order: list[int] = []
    for g in range(int(dense.max()) + 1 if dense.numel() else 0):
        rows = (dense == g).nonzero().flatten().tolist()
        order += rows
        order += [n1_rows + i * n2 + j for i in rows for j in range(n2)]
    parent = torch.cat([torch.arange(n1_rows), torch.arange(n1_rows).repeat_interleave(n2)])
    branch = torch.cat([torch.full((n1_rows,), -1, dtype=torch.long), branches.cpu().repeat_interleave(n2)])
    index = torch.tensor(order, dtype=torch.long)
    merged = concat_batches([first.batch, continuations.batch], pad_token_id)
    device = merged.input_ids.device
    batch = merged.rows(index.to(device))
    batch = dataclasses.replace(
        batch,
        group_ids=first.batch.group_ids[parent[index].to(first.batch.group_ids.device)],
        extras={**batch.extras, CURE_BRANCH: branch[index].to(device)},
    )
    problems = [p for p in first.problems] + [p for p in continuations.problems]
    return RolloutResult(
        problems=[problems[i] for i in order],
        batch=batch,
        scores=torch.cat([first.scores, continuations.scores])[index],
        failures=first.failures + continuations.failures,
        stats=first.stats,
        generate_s=first.generate_s + continuations.generate_s,
        verified=torch.cat([first.correct, continuations.correct])[index],
        scored=first.scored + continuations.scored,
    )


class CUREBrancher:
    """Builds a round's CURE groups from its first-pass rollout and the rollout policy's entropies."""

    def __init__(self, cfg: CUREConfig) -> None:
        self.cfg = cfg

    def augment(self, stage: RolloutStage, model: Any, first: RolloutResult, entropy: Tensor, key: tuple = ()) -> RolloutResult:
        """``first`` with its branched continuations (sampled through ``stage.sample``, sharded like every rollout)."""
        c = self.cfg
        batch = first.batch
        candidates = branch_candidates(
            batch.response_ids, batch.response_mask, stage.tokenizer, min_token_chars=c.min_token_chars, skip_special=c.skip_special
        )
        generator = torch.Generator().manual_seed(shard_seed(stage.seed, *key, "cure"))
        branches = branch_points(entropy, candidates, c.top_k, generator)
        prefixes = [batch.response_ids[row, :k].tolist() for row, k in enumerate(branches.tolist())]
        sampling = dataclasses.replace(stage.step_sampling(), n=c.n2)
        continuations = stage.sample(
            model, list(first.problems), sampling, key=(*key, "cure"), prefixes=prefixes, score_prefix=c.score == "full"
        )
        return merge_branches(first, continuations, branches, c.n2, stage.tokenizer.pad_token_id)


def cure_metrics(rollout: RolloutResult) -> dict[str, float]:
    """Branch position and accuracy of the continuation rows vs the first-pass rows of a CURE rollout."""
    branch = rollout.batch.extras.get(CURE_BRANCH)
    if branch is None:
        return {}
    branch = branch.cpu()
    cont = branch >= 0
    correct = rollout.correct.cpu().float()
    out = {"cure/continuation_frac": float(cont.float().mean())}
    if bool(cont.any()):
        out["cure/branch_mean"] = float(branch[cont].float().mean())
        out["cure/continuation_accuracy"] = float(correct[cont].mean())
    if bool((~cont).any()):
        out["cure/first_pass_accuracy"] = float(correct[~cont].mean())
    return out
