"""Supervised warm start: teach the policy the response format from each problem's worked solution.

RL needs a policy that is sometimes right; a model built from a config is never right. A few
hundred steps of next-token training on ``prompt -> solution<eos>`` give it a non-zero, improvable
accuracy. The loss covers the solution tokens only. A masked diffusion model (``model.kind=mdlm``)
is warm-started with LLaDA's masked-token objective instead (:func:`rlvr.models.mdlm.masked_diffusion_loss`).
"""

from __future__ import annotations

import contextlib
import random
from typing import Any, Callable, ContextManager

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlvr.errors import ConfigError
from rlvr.models.mdlm import is_mdlm, mask_token_id, masked_diffusion_loss
from rlvr.rollout.hf import format_prompts
from rlvr.tasks.base import Problem, Task


def with_solutions(problems: list[Problem]) -> list[Problem]:
    """The problems with a prompt and a worked solution; none at all is a configuration error."""
    usable = [p for p in problems if isinstance(p.prompt, str) and p.prompt.strip() and p.solution]
    if not usable:
        raise ConfigError(
            f"warm start needs problems with a prompt and a worked solution, but none of {len(problems)} "
            f"(e.g. '{problems[0].id if problems else '?'}') has one; set warmstart.steps=0 for this task"
        )
    return usable


def sft_batch(
    tokenizer: PreTrainedTokenizerBase, problems: list[Problem], chat_template: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 outside the solution).

    Problems with an empty prompt or no worked solution are skipped; if none is usable the task
    cannot be warm-started at all, which is a configuration error.
    """
    usable = with_solutions(problems)
    prompts = format_prompts(tokenizer, usable, chat_template)
    rows, label_rows = [], []
    for problem, prompt in zip(usable, prompts):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        solution_ids = tokenizer(problem.solution, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append(prompt_ids + solution_ids)
        label_rows.append([-100] * len(prompt_ids) + solution_ids)
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    labels = torch.tensor([r + [-100] * (width - len(r)) for r in label_rows])
    attention = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return input_ids, attention, labels


def mdlm_sft_batch(
    tokenizer: PreTrainedTokenizerBase, problems: list[Problem], chat_template: str, length: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(input_ids, attention_mask, prompt_len)`` for a masked diffusion model's warm start.

    Prompts left-padded as in sampling; each response is ``solution<eos>`` filled with EOS to the
    sampled width ``length`` (``rollout.max_new_tokens``), LLaDA's SFT layout (arXiv 2502.09992).
    """
    usable = with_solutions(problems)
    enc = tokenizer(format_prompts(tokenizer, usable, chat_template), return_tensors="pt", padding=True, add_special_tokens=False)
    eos = tokenizer.eos_token_id
    rows = []
    for problem in usable:
        ids = tokenizer(problem.solution, add_special_tokens=False)["input_ids"] + [eos]
        if len(ids) > length:
            raise ConfigError(
                f"the worked solution of '{problem.id}' takes {len(ids)} tokens with its EOS, more than "
                f"rollout.max_new_tokens={length}, the width a masked diffusion model generates; raise it"
            )
        rows.append(ids + [eos] * (length - len(ids)))
    response = torch.tensor(rows, dtype=enc["input_ids"].dtype)
    input_ids = torch.cat([enc["input_ids"], response], dim=1)
    attention = torch.cat([enc["attention_mask"], torch.ones_like(response)], dim=1)
    return input_ids, attention, enc["input_ids"].shape[1]


class WarmStart:
    """Supervised steps (AdamW, linear decay to 0 over ``steps``) that can stop and resume exactly.

    The forward runs under ``autocast()`` (the run's precision policy, :mod:`rlvr.train.device`).

    ``state_dict`` holds the step, the optimizer, the schedule and the problem-drawing RNG; with the
    model weights and the global RNG states (saved by the trainer) a resumed warm start continues
    the uninterrupted one bit for bit.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        task: Task,
        *,
        steps: int,
        batch_size: int,
        lr: float,
        seed: int,
        chat_template: str = "auto",
        autocast: Callable[[], ContextManager[None]] = contextlib.nullcontext,
        response_length: int | None = None,
    ) -> None:
        self.model, self.tokenizer, self.task = model, tokenizer, task
        self.mdlm = is_mdlm(model)
        if self.mdlm and response_length is None:
            raise ValueError("a masked diffusion model's warm start needs response_length (rollout.max_new_tokens)")
        self.response_length = response_length
        self.autocast = autocast
        self.steps, self.batch_size, self.chat_template = steps, batch_size, chat_template
        self.rng = random.Random(seed)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: 1.0 - s / max(1, steps))
        self.step = 0

    @property
    def done(self) -> bool:
        return self.step >= self.steps

    def train_step(self) -> float:
        """One supervised step on a fresh batch; returns its loss."""
        device = next(self.model.parameters()).device
        self.model.train()
        problems = self.task.train_problems(self.batch_size, self.rng)
        if self.mdlm:
            loss = self._mdlm_loss(problems, device)
        else:
            input_ids, attention, labels = (t.to(device) for t in sft_batch(self.tokenizer, problems, self.chat_template))
            with self.autocast():
                loss = self.model(input_ids=input_ids, attention_mask=attention, labels=labels, use_cache=False).loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.schedule.step()
        self.step += 1
        return float(loss.item())

    def _mdlm_loss(self, problems: list[Problem], device: torch.device) -> torch.Tensor:
        """:func:`rlvr.models.mdlm.masked_diffusion_loss` on the problems' worked solutions."""
        assert self.response_length is not None
        input_ids, attention, prompt_len = mdlm_sft_batch(self.tokenizer, problems, self.chat_template, self.response_length)
        with self.autocast():
            return masked_diffusion_loss(
                self.model, input_ids.to(device), attention.to(device), prompt_len, mask_id=mask_token_id(self.model)
            )

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "rng": self.rng.getstate(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.rng.setstate(state["rng"])

