"""Every built-in method runs inside the real trainer with default knobs (EXTRA: where a knob must
change for it to act on this tiny setting), on a reward that varies within groups: a finite loss,
a gradient well above zero, and a last update that differs from plain GRPO's (same seed, so the
same rollouts up to the first difference) unless SAME_UPDATE lists it with the reason.

Methods that equal GRPO on an on-policy first update (identity at ratio 1 or at initialisation)
are compared under a SETTING where they act: a second PPO epoch or a second step."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from rlvr.algos import REGISTRIES
from rlvr.errors import MissingInputError
from rlvr.train.config import load_config
from rlvr.train.logging import read_metrics
from rlvr.train.trainer import Trainer

SLOT = {
    "advantage": "algo.advantage={}",
    "policy_loss": "algo.policy_loss={}",
    "reward": "algo.reward_shaping=[{}]",
    "token_weight": "algo.token_weights=[{}]",
    "regularizer": "algo.regularizers=[{}]",
    "controller": "algo.controllers=[{}]",
}
EXTRA = {
    "drpo": ["train.shuffle=groups", "train.micro_batch_size=16"],
    "pacs": ["train.shuffle=groups", "train.micro_batch_size=4"],  # whole groups, accumulated over 4 micro-batches
    "entropy_pid": ["algo.controllers=[{name: entropy_pid, target: 0.5}]", "algo.regularizers=[entropy_bonus]"],
    # knobs that make the method act on 16 responses of at most 8 tokens
    "clip_cov": ["algo.policy_loss.clip_ratio=0.2", "algo.policy_loss.cov_low=-10.0"],
    # at min_p 0.02 a near-uniform policy is its own min-p proxy (no token selected)
    "lp_reg": ["algo.policy_loss.neg_ratio=1.0", "algo.policy_loss.min_p=0.3"],
    "kl": ["algo.regularizers=[{name: kl, coef: 0.1}]"],
    "laser": ["algo.reward_shaping.0.target_length=7"],
    "laser_d": ["algo.reward_shaping.0.target_length=7"],
    "laser_de": ["algo.reward_shaping.0.target_length=7"],
    "budget_curriculum": ["algo.reward_shaping.0.b0=6"],
    # at mu 2.5 no negative-advantage token of 16 responses x 8 tokens is that far below the mean
    "clip_b": ["algo.token_weights.0.mu=0.5"],
    # no policy gradient by design: 1-shot RLVR's entropy-only run trains on the entropy bonus alone
    "none": ["algo.regularizers=[{name: entropy_bonus, coef: 1.0}]"],
    # the controller's alpha (here 1.0) replaces the ares reward's fixed 0.5; its reference run has the reward
    # alone. (Its same-batch update moves alpha by at most 0.025 a step, and on a group with two reward values,
    # as this step's medium one, GRPO's normalised advantage does not see it; the update is unit-tested.)
    "ares_alpha": [
        "algo.controllers=[{name: ares_alpha, alpha_init: 1.0}]",
        "algo.reward_shaping=[{name: ares, window: 2, percentile: 50.0}]",
    ],
    # 8-token responses: 2-token windows and the median threshold make the high-window-entropy counts vary
    "ares": ["algo.reward_shaping=[{name: ares, window: 2, percentile: 50.0}]"],
    # every answer of the tiny model differs: EMPO's signal here is the 0 for responses without a parsable
    # answer (entropy filter off, else every all-distinct group is zeroed); see SETTING
    "empo": [
        "algo.reward_shaping=[{name: empo, extract: first_line, equivalence: expression_value, entropy_filter: false}]"
    ],
    "real": ["train.shuffle=groups", "train.micro_batch_size=4"],  # whole groups per micro-batch, as pacs
    # a threshold below the first step's KL (0: the policy is the reference) so that the gated penalty acts
    "safe_kl": ["algo.regularizers=[{name: safe_kl, base_threshold: -0.5, threshold_min: -1.0}]"],
    # countdown has no unlabelled prompts: hide the labels of a hashed half; in its first visit (warm-up) every
    # unlabelled group is dropped (advantage 0)
    "trapo": ["algo.advantage.unlabeled_fraction=0.5", "algo.advantage.extract=first_line"],
    "t1_oversample": ["algo.token_weights=[{name: t1_oversample, keep: 2}]"],  # train on 2 of the 4 samples
    # the anchor moves the kl regularizer's reference to the policy after every step (see SETTING, REFERENCE)
    "t1_anchor": ["algo.controllers=[{name: t1_anchor, every: 1}]", "algo.regularizers=[{name: kl, coef: 0.1}]"],
    # two mode tokens of the char tokenizer; the switching loss needs adr_reward's preferred modes (see REFERENCE)
    "adr_switch": ["algo.regularizers=[{name: adr_switch, short_token: '1', long_token: '2'}]", "algo.reward_shaping=[adr_reward]"],
    # stage 1 (a 0.5 window) for one step, then 2 prompts x 8 from the hard set (every stage-1 prompt qualifies)
    "drive": [
        "algo.controllers=[{name: drive, switch_step: 1, stage1_length: 0.5, stage2_group_size: 8, hard_max_pass_rate: 1.0}]"
    ],
    "hicra": ["algo.advantage.grams=['+']"],  # the default English planning phrases never occur in countdown
    # no ".\n\n" in 8-token countdown answers: steps of 3 tokens, probed after tokens 3 and 6 (the probes' potentials
    # differ, so the shaping term dPhi of the second step is not 0)
    "spae": ["algo.advantage.split=length", "algo.advantage.step_len=3"],
    "cj_grpo": ["model.kind=mdlm"],  # a loss over masked-diffusion trajectories: the tiny MDLM (see REFERENCE)
    # countdown responses have no <think>/<answer> tags (r1 would make every response malformed: RLPR reward 0,
    # and every spliced response the same end text for max_new_tokens=8): the answer goes after the whole response
    "logprob_reward": ["algo.reward_shaping=[{name: logprob_reward, format: append}]"],
    # with threshold_0 most rewards of the tiny policy are 0 (its s_B - s_A is about 0): the unshaped difference
    "rlpr": ["algo.reward_shaping=[{name: rlpr, format: append, shaping: identity}]"],
    # the EMA from step 1, filtering at step 2 (see SETTING); beta 1 drops the groups below the mean std
    "rlpr_std_filter": ["algo.token_weights=[{name: rlpr_std_filter, ema_start_step: 1, start_step: 2, beta: 1.0}]"],
    "answer_entropy_stats": ["algo.controllers=[{name: answer_entropy_stats, extract: first_line}]"],  # countdown's answer
    # 8-token responses are shorter than the 16-token window (L = G, every failed response tied): 2-token windows
    "r3_rank": ["algo.reward_shaping=[{name: r3_rank, window: 2}]"],
}
SETTING = {
    # with 8 new tokens nearly every response of the tiny model is cut by step 3: room to end, so some are kept
    "mask_truncated": ("rollout.max_new_tokens=16",),
    "gspo": ("train.ppo_epochs=2",),  # first update at ratio 1 = PPO-clip's; the second clips per sequence
    "kl_cov": ("train.ppo_epochs=2",),  # beta |log r| has zero gradient at r = 1
    "cispo": ("train.ppo_epochs=2", "train.lr=0.05"),  # equals PPO-clip's gradient until PPO clips
    "kl": ("train.ppo_epochs=2",),  # k3 to the reference has zero gradient while the policy is the reference
    "siren": ("train.steps=2",),  # the anchor is the first step's entropy: no penalty before step 2
    "siren_wo_topp": ("train.steps=2",),
    "prl": ("train.steps=2",),  # the reference model is the first step's policy: no KL term (= GRPO) before step 2
    "empo": ("warmstart.steps=150",),  # about half of the responses are then arithmetic expressions
    "rlpr_std_filter": ("train.steps=2",),  # the first step only records the group stds
    "t1_anchor": ("train.steps=3",),  # the first refresh is after step 1: steps 2-3 see the moved anchor
    "drive": ("train.steps=3",),  # step 1 in stage 1, steps 2-3 in stage 2 (a new pass over the hard set at step 3)
}
"""Run shapes a method is compared under (its reference run uses them too); the last updates are compared."""


NEEDS_TRAINER_INPUT: dict[tuple[str, str], tuple[str, str]] = {}
"""Skip list: methods whose inputs the trainer does not produce yet, ``(ctx key, what it takes)``. They are
not trained here; ``test_method_waiting_for_trainer_input_fails_loudly`` checks that each stops with a
MissingInputError naming the input instead of training as plain GRPO."""


def _builtin_methods() -> list[tuple[str, str]]:
    return [
        (stage, name)
        for stage, registry in REGISTRIES.items()
        for name in registry.names()
        if registry.entry(name).factory.__module__.startswith("rlvr.")
    ]


def _trainable_methods() -> list:
    out = []
    for stage, name in _builtin_methods():
        waiting = NEEDS_TRAINER_INPUT.get((stage, name))
        skip = pytest.mark.skip(reason=f"needs the trainer to provide {waiting[1]}") if waiting else ()
        out.append(pytest.param(stage, name, marks=skip))
    return out


REFERENCE = {
    # the fixed bonus it drives: the controller moves the coefficient before the first update
    "entropy_pid": ("algo.regularizers=[entropy_bonus]",),
    # the reward it drives
    "ares_alpha": ("algo.reward_shaping=[{name: ares, window: 2, percentile: 50.0}]",),
    # the same instruction-halved rollouts and reward, without the switching loss
    "adr_switch": ("algo.reward_shaping=[adr_reward]",),
    # the KL to the initial model, never refreshed
    "t1_anchor": ("algo.regularizers=[{name: kl, coef: 0.1}]",),
    # the same tiny MDLM and its rollouts, trained with PPO-clip's token mean instead of the trajectory loss
    "cj_grpo": ("model.kind=mdlm",),
}
"""What a method's reference run adds to plain GRPO (and its SETTING)."""

SAME_UPDATE = {
    ("advantage", "grpo"): "the reference itself (GRPO advantage)",
    ("policy_loss", "ppo_clip"): "the reference itself (PPO-clip loss)",
    ("controller", "hwe_stats"): "logs statistics only",
    ("controller", "answer_entropy_stats"): "logs statistics only",
    ("reward", "hapo"): "no length history for a prompt before its first visit: the shaping term is 0",
    ("reward", "dot"): "penalises length outliers of all-correct groups only; no group is all correct here",
}
"""Methods whose update legitimately equals their reference run's, and why."""

EQUAL_RTOL = 1e-5
"""Relative gradient difference up to which two updates count as equal (float noise: ~1e-6 at most)."""


@pytest.fixture(scope="module")
def last_update(tmp_path_factory, informative):
    """``last_update(extra)``: the gradients of the last optimizer step of FAST + INFORMATIVE + ``extra``, cached."""
    cache: dict[tuple[str, ...], dict] = {}

    def get(extra: tuple[str, ...] = ()) -> dict:
        if extra not in cache:
            run = tmp_path_factory.mktemp("reference") / "run"
            trainer = Trainer(load_config(None, [*informative.fast, *COMMON, *extra, f"output_dir={run}"]), quiet=True)
            grads = informative.capture(trainer)
            trainer.run()
            cache[extra] = grads[-1]
        return cache[extra]

    return get


COMMON = ["train.steps=3", "eval.every=100"]
"""Every method trains 3 steps (its SETTING may ask for more)."""


@pytest.mark.parametrize("stage, name", _trainable_methods(), ids=lambda x: str(x))
def test_method_runs_in_the_trainer(stage, name, fast_overrides, informative, last_update):
    setting = SETTING.get(name, ())
    method = [SLOT[stage].format(name), *EXTRA.get(name, [])]
    cfg = load_config(None, [*fast_overrides, *informative.overrides, *COMMON, *setting, *method])
    trainer = Trainer(cfg, quiet=True)
    grads = informative.capture(trainer)
    trainer.run()
    record = read_metrics(Path(cfg.output_dir) / "metrics.jsonl")[-1]
    assert record["step"] == cfg.train.steps
    assert math.isfinite(record["train/loss"]), record
    assert record["train/updates"] >= 1
    informative.assert_learning([record])
    diff = informative.rel_diff(last_update((*setting, *REFERENCE.get(name, ()))), grads[-1])
    if (stage, name) in SAME_UPDATE:
        assert diff <= EQUAL_RTOL, f"listed as equal ({SAME_UPDATE[stage, name]}) but differs by {diff:.2e}"
    else:
        assert diff > EQUAL_RTOL, f"the update equals the reference run's (relative difference {diff:.2e})"


@pytest.mark.parametrize("stage, name", sorted(NEEDS_TRAINER_INPUT), ids=lambda x: str(x))
def test_method_waiting_for_trainer_input_fails_loudly(stage, name, fast_overrides, informative):
    assert name in REGISTRIES[stage], f"stale skip-list entry {stage} '{name}'"
    key, _what = NEEDS_TRAINER_INPUT[stage, name]
    cfg = load_config(None, [*fast_overrides, *informative.overrides, *COMMON, SLOT[stage].format(name)])
    with pytest.raises(MissingInputError, match=key):
        Trainer(cfg, quiet=True).run()
