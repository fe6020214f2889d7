"""TraPO: semi-supervised RLVR by pass-rate trajectory matching (stage: advantage), arXiv 2512.13106.

Official code: ShenzhiYang2000/TRAPO ``Weakly_Supervised/Research/Semi_RL/semi_ray_trainer.py``
(``_generate_pseudo_labels_and_update_passrate``, ``_compute_trajectory_cosine``, ``filter_dict_by_topk``,
``filter_dict_by_threshold``, ``copy_dict_with_validation``, the ``fit`` loop) and
``Weakly_Supervised/scripts/run/run_semi.sh`` (``warm_up=8``, ``topk=0.1``, ``thres=0.4``,
``update_db=True``, ``n=8``).

Each prompt is **labelled** (its verifier reward is used) or **unlabelled** (its reward is a pseudo
label). Per step, on the rollout batch:

1. **Pseudo labels** (unlabelled groups): extract each response's answer (``extract`` and
   ``equivalence``, as ``empo``); the majority answer must be **unique** (official: a tie gives
   ``'__NoMajorityAnswer__'``, so every response scores 0); responses whose answer equals it get reward
   1, the others 0. A response without an answer never matches (official: a failed parse is its own
   answer).
2. **Pass-rate trajectories**: each visit appends the group's pass rate (the mean verifier reward for
   labelled prompts, the mean pseudo reward for unlabelled ones) to the prompt's history, keyed by
   ``ctx.prompt_ids`` and kept in this component's state (checkpointed).
3. **Database**: the histories of labelled prompts, plus (``update_db``) a snapshot of the history of
   each unlabelled prompt at the time it was selected. Only histories with at least ``warm_up`` entries
   take part.
4. **Warm-up**: while the database is empty every unlabelled group is dropped (official: labelled
   samples only for the first ``warm_up`` epochs).
5. **Similarity** of an unlabelled group whose history has at least ``warm_up`` entries (shorter ones
   are dropped): truncate the database and the query to ``T = min(shortest database history, len(query))``
   (the first ``T`` entries), z-normalise each over time (``(x - mean) / (std + 1e-8)``, unbiased std),
   and take the **mean** cosine similarity (``F.cosine_similarity``) to the database rows.
6. **Selection**: the unlabelled groups in the top ``max(1, int(n * top_k))`` by similarity (``n`` =
   the batch's eligible unlabelled groups) **or** with similarity ``>= threshold`` are kept; the rest are
   dropped. Labelled groups always stay.

The advantage is the ``base`` estimator's (default ``"grpo"``) on the labelled rewards and the pseudo
rewards; a dropped group gets advantage 0. **Differences from the official code:** (a) dropped rows
stay in the batch with advantage 0 (the official trainer removes them, so they are also out of the
loss's token count); (b) the official trajectories are indexed by *epochs* (every prompt seen once per
epoch) and truncated to the database's shortest; here one entry per visit, and a visit is a step in
which the prompt was drawn: with random draws histories grow unevenly, hence the per-query ``T``;
(c) warm-up counts visits, not epochs; (d) the official ``copy_dict_with_validation`` drops *every*
unlabelled database entry when an already-present one is added again (which we read as a bug); here
that entry's snapshot is replaced.

**Labelled flags** come from each problem's ``meta["labeled"]`` (``ctx.extras["problems"]``; a
semi-supervised task sets it), or, with ``unlabeled_fraction`` set, a prompt is unlabelled when a
stable hash of its id falls below the fraction (for experiments that hide labels of a labelled task).
Neither: MissingInputError.

Metrics: ``trapo/labeled_frac``, ``trapo/unlabeled_selected``, ``trapo/unlabeled_dropped``,
``trapo/similarity_selected``, ``trapo/majority_frac`` (unlabelled groups with a unique majority),
``trapo/pseudo_label_accuracy`` (pseudo reward equal to ``ctx.correct`` on unlabelled responses, when
``correct`` is known), ``trapo/database_size``.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import replace
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from rlvr.algos.context import AlgoContext
from rlvr.algos.empo import EQUIVALENCES, Equivalence, answer_key
from rlvr.algos.entropy_advantage import WrapsBase, build_base_component
from rlvr.algos.grpo import seq_rewards
from rlvr.algos.groups import group_index
from rlvr.algos.registry import advantage
from rlvr.algos.seed_grpo import EXTRACT_MODES, ExtractMode, extract_answer
from rlvr.algos.shaping import check_choice, check_positive, response_texts
from rlvr.errors import ConfigError, MissingInputError

TRAPO_REQUIRES = ("rewards", "group_ids", "prompt_ids")


def majority_rewards(keys: Sequence[Any]) -> tuple[list[float], bool]:
    """``(pseudo rewards, found)``: 1 where the key is the unique majority key, else 0; all 0 on a tie.

    ``None`` keys (no answer) never count toward a majority and never match.
    """
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return [0.0] * len(keys), False
    top = max(counts.values())
    leaders = [k for k, c in counts.items() if c == top]
    singles = sum(1 for k in keys if k is None)
    if len(leaders) > 1 or (top == 1 and singles > 0):
        return [0.0] * len(keys), False
    return [1.0 if k == leaders[0] else 0.0 for k in keys], True


def znorm_rows(rows: Tensor) -> Tensor:
    """Each row z-normalised over time: ``(x - mean) / (std + 1e-8)`` with the unbiased std."""
    return (rows - rows.mean(dim=1, keepdim=True)) / (rows.std(dim=1, keepdim=True) + 1e-8)


def trajectory_similarity(query: Sequence[float], database: Sequence[Sequence[float]]) -> float:
    """Mean cosine similarity of the z-normalised ``query`` to the z-normalised database rows, over ``T`` entries.

    ``T = min(len(query), shortest database row)``; each uses its first ``T`` entries.
    """
    if not database:
        raise ValueError("empty trajectory database")
    steps = min(len(query), min(len(row) for row in database))
    q = znorm_rows(torch.tensor([list(query[:steps])], dtype=torch.float64))
    db = znorm_rows(torch.tensor([list(row[:steps]) for row in database], dtype=torch.float64))
    return float(F.cosine_similarity(db, q.expand_as(db), dim=1).mean())


def select_unlabeled(scores: dict[Any, float], top_k: float, threshold: float) -> set[Any]:
    """The union of the top ``max(1, int(n * top_k))`` scores and those ``>= threshold`` (official filters)."""
    if not scores:
        return set()
    k = max(1, int(len(scores) * top_k))
    ranked = sorted(scores, key=lambda key: scores[key], reverse=True)
    return set(ranked[:k]) | {key for key, value in scores.items() if value >= threshold}


def hashed_unlabeled(prompt_id: str, fraction: float) -> bool:
    """A stable pseudo-random split: ``sha256(id)`` mapped to [0, 1) below ``fraction``."""
    digest = hashlib.sha256(str(prompt_id).encode()).hexdigest()
    return int(digest[:12], 16) / float(16**12) < fraction


@advantage.register("trapo", requires=TRAPO_REQUIRES)
class Trapo(WrapsBase):
    """TraPO (arXiv 2512.13106): majority-vote pseudo rewards on unlabelled prompts kept only when their pass-rate trajectory matches the labelled ones.

    Knobs: ``warm_up`` (8 visits), ``top_k`` (0.1), ``threshold`` (0.4), ``update_db`` (True),
    ``extract`` (boxed), ``equivalence`` (exact | expression_value), ``unlabeled_fraction`` (None: read
    ``problem.meta["labeled"]``), ``base`` (``"grpo"``), ``base_kwargs``. State: the pass-rate histories.
    """

    name = "trapo"

    def __init__(
        self,
        *,
        warm_up: int = 8,
        top_k: float = 0.1,
        threshold: float = 0.4,
        update_db: bool = True,
        extract: ExtractMode = "boxed",
        equivalence: Equivalence = "exact",
        unlabeled_fraction: float | None = None,
        base: str = "grpo",
        base_kwargs: dict[str, Any] | None = None,
    ) -> None:
        who = f"advantage '{self.name}'"
        check_positive(who, warm_up=warm_up)
        check_choice(who, "extract", extract, EXTRACT_MODES)
        check_choice(who, "equivalence", equivalence, EQUIVALENCES)
        if not 0.0 <= top_k <= 1.0:
            raise ConfigError(f"{who}: top_k must be in [0, 1], got {top_k}")
        if unlabeled_fraction is not None and not 0.0 <= unlabeled_fraction <= 1.0:
            raise ConfigError(f"{who}: unlabeled_fraction must be in [0, 1], got {unlabeled_fraction}")
        self.warm_up = int(warm_up)
        self.top_k = float(top_k)
        self.threshold = float(threshold)
        self.update_db = bool(update_db)
        self.extract = extract
        self.equivalence = equivalence
        self.unlabeled_fraction = unlabeled_fraction
        self.base = build_base_component(advantage, base, base_kwargs, TRAPO_REQUIRES, who, self.name)
        self.labeled_history: dict[str, list[float]] = {}
        self.unlabeled_history: dict[str, list[float]] = {}
        self.db_unlabeled: dict[str, list[float]] = {}
        self.metrics: dict[str, float] = {}

    def is_labeled(self, ctx: AlgoContext, row: int, prompt_id: str) -> bool:
        if self.unlabeled_fraction is not None:
            return not hashed_unlabeled(prompt_id, self.unlabeled_fraction)
        problems = ctx.extras.get("problems")
        flag = None
        if problems is not None and len(problems) == ctx.batch_size:
            flag = (getattr(problems[row], "meta", None) or {}).get("labeled")
        if not isinstance(flag, bool):
            raise MissingInputError(
                f"advantage '{self.name}' needs a bool meta['labeled'] on every problem (ctx.extras['problems']), or "
                "the knob unlabeled_fraction to hide the labels of a hashed fraction of the prompts"
            )
        return flag

    def database(self) -> list[list[float]]:
        rows = [h for h in self.labeled_history.values() if len(h) >= self.warm_up]
        if self.update_db:
            rows += [h for h in self.db_unlabeled.values() if len(h) >= self.warm_up]
        return rows

    def __call__(self, ctx: AlgoContext) -> Tensor:
        who = f"advantage '{self.name}'"
        rewards = seq_rewards(ctx, who).detach()
        assert ctx.group_ids is not None
        if ctx.prompt_ids is None or len(ctx.prompt_ids) != ctx.batch_size:
            raise MissingInputError(f"{who} needs ctx.prompt_ids (one stable id per response)")
        dense, k = group_index(ctx.group_ids.cpu())
        members: list[list[int]] = [[] for _ in range(k)]
        for i, g in enumerate(dense.tolist()):
            members[g].append(i)
        texts: list[str] | None = None
        new_rewards = rewards.detach().cpu().to(torch.float64).clone()
        labeled_rows, unlabeled_groups, majorities = 0, [], 0
        for rows in members:
            pid = str(ctx.prompt_ids[rows[0]])
            if self.is_labeled(ctx, rows[0], pid):
                labeled_rows += len(rows)
                self.labeled_history.setdefault(pid, []).append(float(new_rewards[rows].mean()))
                continue
            texts = texts if texts is not None else response_texts(ctx, who)
            keys = [answer_key(extract_answer(texts[i], self.extract), self.equivalence) for i in rows]
            pseudo, found = majority_rewards(keys)
            majorities += int(found)
            new_rewards[rows] = torch.tensor(pseudo, dtype=torch.float64)
            self.unlabeled_history.setdefault(pid, []).append(sum(pseudo) / len(pseudo))
            unlabeled_groups.append((pid, rows))
        database = self.database()
        scores: dict[int, float] = {}
        if database:
            for index, (pid, _rows) in enumerate(unlabeled_groups):
                history = self.unlabeled_history[pid]
                if len(history) >= self.warm_up:
                    scores[index] = trajectory_similarity(history, database)
        selected = select_unlabeled(scores, self.top_k, self.threshold)
        keep = torch.ones(ctx.batch_size, dtype=torch.bool)
        for index, (pid, rows) in enumerate(unlabeled_groups):
            if index in selected:
                if self.update_db:
                    self.db_unlabeled[pid] = list(self.unlabeled_history[pid])
            else:
                keep[rows] = False
        shaped = replace(ctx, rewards=new_rewards.to(device=rewards.device, dtype=rewards.dtype))
        adv = self.base(shaped)
        adv = adv * keep.to(device=adv.device, dtype=adv.dtype).unsqueeze(-1)
        self.metrics = self.step_metrics(ctx, new_rewards, labeled_rows, unlabeled_groups, selected, scores, majorities)
        return adv

    def step_metrics(
        self,
        ctx: AlgoContext,
        new_rewards: Tensor,
        labeled_rows: int,
        unlabeled_groups: list[tuple[str, list[int]]],
        selected: set[int],
        scores: dict[int, float],
        majorities: int,
    ) -> dict[str, float]:
        n_unlabeled = len(unlabeled_groups)
        chosen = [scores[i] for i in selected if i in scores]
        out = {
            f"{self.name}/labeled_frac": labeled_rows / max(ctx.batch_size, 1),
            f"{self.name}/unlabeled_selected": float(len(selected)),
            f"{self.name}/unlabeled_dropped": float(n_unlabeled - len(selected)),
            f"{self.name}/similarity_selected": sum(chosen) / len(chosen) if chosen else 0.0,
            f"{self.name}/majority_frac": majorities / n_unlabeled if n_unlabeled else 0.0,
            f"{self.name}/database_size": float(len(self.database())),
        }
        rows = [i for _pid, group in unlabeled_groups for i in group]
        if ctx.correct is not None and rows:
            truth = ctx.correct.detach().cpu().to(torch.float64)[rows]
            out[f"{self.name}/pseudo_label_accuracy"] = float((new_rewards[rows] == truth).double().mean())
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "labeled_history": {k: list(v) for k, v in self.labeled_history.items()},
            "unlabeled_history": {k: list(v) for k, v in self.unlabeled_history.items()},
            "db_unlabeled": {k: list(v) for k, v in self.db_unlabeled.items()},
            "base": self.base.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("labeled_history", "unlabeled_history", "db_unlabeled"):
            setattr(self, key, {str(k): [float(x) for x in v] for k, v in (state.get(key) or {}).items()})
        self.base.load_state_dict(state.get("base", {}))
