"""SPAE's step probes: the step potential ``Phi`` of every reasoning step, for the ``spae`` advantage.

SPAE (arXiv 2601.03823; official probe cii030/SPAE-RL ``inference/probe_mechanism_example.py``; the
math is :mod:`rlvr.algos.spae`). For every step end ``k`` of a response (the advantage's own
segmentation, :meth:`rlvr.algos.spae.Spae.probe_positions`; the response's last token is not
probed, as the official code probes step boundaries only), the prompt, the response up to and
including token ``k`` and the probe prompt (``rollout.spae.prompt``, official
``"**Final Answer**\\n\\boxed{"``) are continued ``samples`` (5) times for ``max_new_tokens`` (10)
tokens at ``temperature`` (0.6), recording the ``top_logprobs`` (20) largest log-probs of every
probe position (the model's raw distribution, temperature 1: vLLM V1's default ``logprobs_mode``).
With ``y*`` the tokens of the problem's reference answer, probe ``n`` reads its first
``K_n = min(|y*|, probe length)`` positions: ``l_j`` is the listed log-prob of ``y*_j`` at position
``j`` (-10 if not listed) and ``H_j`` the entropy of the list (not renormalised); then
:func:`rlvr.algos.spae.probe_scores` (``normalise``) and ``Phi = 1.5 a c + 0.5 a - c``.

The probe rows are sampled through :meth:`rlvr.rollout.stage.RolloutStage.sample` (sharded over the
ranks, gathered; no verifier call), so every rank computes the same potentials. The result is
``ctx.extras["step_potential"]``: ``(B, T)``, ``Phi`` at the probed step ends, NaN elsewhere.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from rlvr.algos.context import AlgoContext
from rlvr.algos.spae import ABSENT_LOGPROB, Spae, probe_scores, step_potential, top_list_entropy
from rlvr.rollout.base import TOP_IDS, TOP_LOGPROBS, RolloutBatch
from rlvr.rollout.stage import RolloutResult, RolloutStage, Sampling
from rlvr.train.config import SPAEProbeConfig

STEP_POTENTIAL = "step_potential"


def token_texts(tokenizer: Any, batch: RolloutBatch) -> list[list[str]]:
    """Each row's valid response tokens decoded one by one (special tokens as empty strings)."""
    out = []
    for ids, mask in zip(batch.response_ids.tolist(), batch.response_mask.tolist()):
        out.append([tokenizer.decode([t], skip_special_tokens=True) for t, keep in zip(ids, mask) if keep])
    return out


def probe_targets(top_logprobs: Tensor, top_ids: Tensor, probe_mask: Tensor, targets: list[list[int]]) -> tuple[Tensor, Tensor, Tensor]:
    """``(target_logprobs, top_entropy, positions)`` ``(R, W)`` of ``R`` probe rows for :func:`probe_scores`.

    ``targets[r]`` are the reference-answer ids row ``r`` is read against; position ``j`` counts
    where ``j < len(targets[r])`` and the probe generated a token there (``probe_mask``).
    ``W = min(max |targets|, probe width)``.
    """
    rows, width = probe_mask.shape
    w = min(max((len(t) for t in targets), default=0), width)
    tgt = torch.full((rows, w), -1, dtype=torch.long, device=top_ids.device)
    has = torch.zeros((rows, w), dtype=torch.bool, device=top_ids.device)
    for r, t in enumerate(targets):
        t = t[:w]
        if t:
            tgt[r, : len(t)] = torch.tensor(t, dtype=torch.long, device=top_ids.device)
            has[r, : len(t)] = True
    lp, ids = top_logprobs[:, :w].float(), top_ids[:, :w]
    match = ids == tgt.unsqueeze(-1)
    listed = match.any(-1)
    target_lp = torch.where(listed, (lp * match).sum(-1), torch.full_like(lp[..., 0], ABSENT_LOGPROB))
    positions = (has & (probe_mask[:, :w] > 0)).to(lp.dtype)
    return target_lp, top_list_entropy(lp), positions


class SPAEProber:
    """Runs the probes of a step's rollout for the run's :class:`rlvr.algos.spae.Spae` advantage."""

    def __init__(self, cfg: SPAEProbeConfig, spae: Spae) -> None:
        self.cfg, self.spae = cfg, spae

    def probe_ends(self, ctx: AlgoContext) -> Tensor:
        """Bool ``(B, T)``: the advantage's step ends, without each response's last valid token."""
        mask = ctx.response_mask.cpu() > 0
        ends = self.spae.probe_positions(ctx).cpu() & mask
        positions = torch.arange(mask.shape[1]).expand_as(mask)
        last = torch.where(mask, positions, torch.full_like(positions, -1)).amax(-1, keepdim=True)
        return ends & (positions != last)

    def potentials(
        self, stage: RolloutStage, model: Any, rollout: RolloutResult, ctx: AlgoContext, step: int = 0
    ) -> tuple[Tensor, dict[str, float]]:
        """``(step_potential, metrics)`` of ``rollout`` (see the module docstring)."""
        c, tok, batch = self.cfg, stage.tokenizer, rollout.batch
        if self.spae.split == "delimiter" and "token_texts" not in ctx.extras:
            ctx.extras["token_texts"] = token_texts(tok, batch)
        ends = self.probe_ends(ctx)
        grid = torch.full(tuple(batch.response_mask.shape), math.nan, device=batch.response_mask.device)
        points = ends.nonzero().tolist()
        if not points:
            return grid, {"spae_probe/probes": 0.0}
        probe_ids = list(tok(c.prompt, add_special_tokens=False)["input_ids"])
        response = batch.response_ids.cpu()
        prefixes = [response[row, : end + 1].tolist() + probe_ids for row, end in points]
        problems = [rollout.problems[row] for row, _ in points]
        sampling = Sampling(n=c.samples, max_new_tokens=c.max_new_tokens, temperature=c.temperature, top_logprobs=c.top_logprobs)
        probes = stage.sample(model, problems, sampling, key=(step, "spae"), prefixes=prefixes, score=False)
        answers = [list(tok(str(p.answer), add_special_tokens=False)["input_ids"]) for p in problems]
        pb = probes.batch
        targets = [answers[r // c.samples] for r in range(pb.input_ids.shape[0])]
        target_lp, top_h, positions = probe_targets(pb.extras[TOP_LOGPROBS], pb.extras[TOP_IDS], pb.response_mask, targets)
        shape = (len(points), c.samples, target_lp.shape[-1])
        a, conf = probe_scores(target_lp.view(shape), top_h.view(shape), positions.view(shape), c.normalise)
        phi = step_potential(a, conf)
        assert isinstance(phi, Tensor)
        rows = torch.tensor([r for r, _ in points], device=grid.device)
        cols = torch.tensor([e for _, e in points], device=grid.device)
        grid[rows, cols] = phi.to(grid)
        return grid, {
            "spae_probe/probes": float(len(points)),
            "spae_probe/accuracy_mean": float(a.mean()),
            "spae_probe/confidence_mean": float(conf.mean()),
        }


def find_spae(pipeline: Any) -> Spae | None:
    """The run's :class:`~rlvr.algos.spae.Spae` advantage, if it has one."""
    fn = pipeline.advantage.fn
    return fn if isinstance(fn, Spae) else None
