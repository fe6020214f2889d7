"""Supervised warm start: teach the policy the response format from each problem's worked solution.

RL needs a policy that is sometimes right; a model built from a config is never right. A few
hundred steps of next-token training on ``prompt -> solution<eos>`` give it a non-zero, improvable
accuracy. The loss covers the solution tokens only.
"""

from __future__ import annotations

import random
from typing import Callable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlvr.errors import ConfigError
from rlvr.rollout.hf import format_prompts
from rlvr.tasks.base import Problem, Task


def sft_batch(
    tokenizer: PreTrainedTokenizerBase, problems: list[Problem], chat_template: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 outside the solution).

    Problems with an empty prompt or no worked solution are skipped; if none is usable the task
    cannot be warm-started at all, which is a configuration error.
    """
    usable = [p for p in problems if isinstance(p.prompt, str) and p.prompt.strip() and p.solution]
    if not usable:
        raise ConfigError(
            f"warm start needs problems with a prompt and a worked solution, but none of {len(problems)} "
            f"(e.g. '{problems[0].id if problems else '?'}') has one; set warmstart.steps=0 for this task"
        )
    prompts = format_prompts(tokenizer, [p.prompt for p in usable], chat_template)
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


def warm_start(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    rng: random.Random,
    chat_template: str = "auto",
    on_step: Callable[[int, float], None] | None = None,
) -> float:
    """Train ``steps`` supervised steps (AdamW, linear decay); returns the last loss."""
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 - s / max(1, steps))
    model.train()
    loss_value = float("nan")
    for step in range(steps):
        problems = task.train_problems(batch_size, rng)
        input_ids, attention, labels = (t.to(device) for t in sft_batch(tokenizer, problems, chat_template))
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        loss_value = float(loss.item())
        if on_step is not None:
            on_step(step + 1, loss_value)
    return loss_value
