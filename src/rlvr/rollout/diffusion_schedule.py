"""How many tokens each masked-diffusion decoding step commits, and its EOSER factor (no torch: the config checks it).

ASS and EOSER: arXiv 2509.23924; official yjyddq/EOSER-ASS-RL ``cj-grpo/cj_grpo_trainer_eoser_ass.py``
(``get_block_sizes``, ``get_num_transfer_tokens_ass``, ``ass_sampling``) and
``cj-grpo/cj_grpo_trainer_eoser.py`` (``get_num_transfer_tokens``, ``sampling``). The decoder is
:mod:`rlvr.rollout.mdlm`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlvr.errors import ConfigError

Schedule = Literal["ass", "uniform"]
DEFAULT_GAMMA_MIN: dict[str, float] = {"ass": 0.01, "uniform": 0.4}
"""Official EOSER ``eos_min_gamma`` defaults (``ass_sampling`` and ``sampling``)."""


@dataclass(frozen=True)
class DecodeStep:
    """One decoding step: commit ``count`` tokens among the masked response positions ``< end``."""

    end: int
    count: int
    eos_gamma: float


def _gamma(t: float, gamma_min: float, gamma_max: float) -> float:
    return gamma_min + (gamma_max - gamma_min) * t


def ass_schedule(length: int, block_num: int = 1, gamma_min: float = 0.01, gamma_max: float = 1.0) -> list[DecodeStep]:
    """The ASS steps for ``length`` response tokens (official ``get_block_sizes`` + ``get_num_transfer_tokens_ass``).

    ``S = floor(log2 length)``; step ``i < S-1`` commits ``2^i`` tokens. One block: the last step
    commits the remaining ``length - 2^(S-1) + 1``. ``block_num`` blocks: sizes from the end
    ``2^(S-1) + 1 + (length - 2^S)`` (step ``S-1``), ``2^p`` for ``p = S-2 .. S-block_num+1`` (one
    step each) and the first block ``2^(S-block_num+1) - 1`` (steps ``0 .. S-block_num``). EOSER
    factor of step ``i``: ``gamma_min + (gamma_max - gamma_min) (2^(i+1) - 1) / 2^S``.
    """
    if length < 2:
        raise ConfigError(f"ASS decoding needs at least 2 response tokens, got max_new_tokens={length}")
    steps = length.bit_length() - 1  # floor(log2 length)
    if not 1 <= block_num <= steps:
        raise ConfigError(f"rollout.mdlm.block_num must be between 1 and log2(max_new_tokens)={steps}, got {block_num}")
    first_block_steps = steps - block_num + 1
    ends, counts = [], []
    first_end = length if block_num == 1 else 2**first_block_steps - 1
    for i in range(first_block_steps):
        ends.append(first_end)
        counts.append(2**i if i < steps - 1 else length - (2 ** (steps - 1) - 1))
    end = first_end
    for p in range(first_block_steps, steps):  # one step per later block
        size = 2**p if p < steps - 1 else 2 ** (steps - 1) + 1 + (length - 2**steps)
        end += size
        ends.append(end)
        counts.append(size)
    assert end == length and sum(counts) == length
    gammas = [_gamma((2 ** (i + 1) - 1) / 2**steps, gamma_min, gamma_max) for i in range(steps)]
    return [DecodeStep(e, c, g) for e, c, g in zip(ends, counts, gammas)]


def uniform_schedule(length: int, steps: int, gamma_min: float = 0.4, gamma_max: float = 1.0) -> list[DecodeStep]:
    """``steps`` steps over one block, ``length // steps`` tokens each and one more for the first
    ``length % steps`` (official ``get_num_transfer_tokens``); EOSER ``t = k / (steps - 1)``."""
    if not 1 <= steps <= length:
        raise ConfigError(f"rollout.mdlm.steps must be between 1 and max_new_tokens={length}, got {steps}")
    base, extra = divmod(length, steps)
    return [
        DecodeStep(length, base + (k < extra), _gamma(k / (steps - 1) if steps > 1 else 1.0, gamma_min, gamma_max))
        for k in range(steps)
    ]


def decoding_schedule(
    length: int,
    schedule: Schedule = "ass",
    *,
    steps: int | None = None,
    block_num: int = 1,
    eos_gamma_min: float | None = None,
    eos_gamma_max: float = 1.0,
) -> list[DecodeStep]:
    """The steps of ``schedule`` (``rollout.mdlm``) for ``length`` response tokens."""
    gamma_min = DEFAULT_GAMMA_MIN[schedule] if eos_gamma_min is None else eos_gamma_min
    if schedule == "ass":
        if steps is not None:
            raise ConfigError("rollout.mdlm.steps is for schedule=uniform; ASS takes floor(log2(max_new_tokens)) steps")
        return ass_schedule(length, block_num, gamma_min, eos_gamma_max)
    if schedule == "uniform":
        if block_num != 1:
            raise ConfigError("rollout.mdlm.block_num is for schedule=ass; the uniform schedule decodes one block")
        return uniform_schedule(length, length if steps is None else steps, gamma_min, eos_gamma_max)
    raise ConfigError(f"rollout.mdlm.schedule: unknown schedule '{schedule}'; valid: ass, uniform")
