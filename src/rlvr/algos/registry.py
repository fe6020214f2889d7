"""The six algorithm-stage registries: reward -> advantage -> token_weight -> policy_loss + regularizer,
and controllers. The machinery (typed knobs, the catalog) is :mod:`rlvr.registry`.

Users register their own methods the same way the built-ins do::

    from rlvr.algos import advantage

    @advantage.register("my_adv", requires=("rewards", "group_ids"))
    def my_adv(ctx, *, scale: float = 1.0): ...
"""

from __future__ import annotations

from rlvr.registry import REGISTRIES, Component, Entry, Registry

advantage = REGISTRIES["advantage"]
policy_loss = REGISTRIES["policy_loss"]
regularizer = REGISTRIES["regularizer"]
token_weight = REGISTRIES["token_weight"]
reward = REGISTRIES["reward"]
controller = REGISTRIES["controller"]

__all__ = ["REGISTRIES", "Component", "Entry", "Registry", "advantage", "controller", "policy_loss", "regularizer", "reward", "token_weight"]
