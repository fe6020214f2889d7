"""Pure-tensor RLVR algorithms behind one registry per pipeline stage (no I/O here).

Importing this package imports every module in it, so each ``@<stage>.register(...)`` runs once and
all built-in methods are available by name.
"""

import importlib
import pkgutil

from rlvr.algos.context import AlgoContext, LossOutput, RegularizerOutput, TokenWeightOutput
from rlvr.algos.registry import (
    REGISTRIES,
    Component,
    Registry,
    advantage,
    controller,
    policy_loss,
    regularizer,
    reward,
    token_weight,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "AlgoContext",
    "Component",
    "LossOutput",
    "REGISTRIES",
    "RegularizerOutput",
    "Registry",
    "TokenWeightOutput",
    "advantage",
    "controller",
    "policy_loss",
    "regularizer",
    "reward",
    "token_weight",
]
