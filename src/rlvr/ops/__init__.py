"""Memory-efficient LM-head kernels in pure PyTorch (CPU and CUDA).

Everything here works from the final hidden states and the LM-head weight, ``chunk_size`` tokens
at a time, so the full ``tokens x vocab`` logits are never materialised:

* :func:`chunked_logprobs_entropy` -- ``log pi(target)`` and full-vocabulary entropy, exact grads.
* :func:`chunked_top_p_entropy` -- SIREN top-p renormalised entropy (with grad) + full entropy.
* :func:`response_logprobs` / :func:`last_hidden_states` -- the same for Hugging Face causal LMs.
* ``naive_*`` -- full-logit references used as test oracles.
"""

from rlvr.ops.logprobs import (
    chunked_logprobs_entropy,
    default_position_ids,
    last_hidden_states,
    naive_logprobs_entropy,
    output_head_weight,
    response_hidden_states,
    response_logprobs,
)
from rlvr.ops.top_p_entropy import chunked_top_p_entropy, naive_top_p_entropy

__all__ = [
    "chunked_logprobs_entropy",
    "chunked_top_p_entropy",
    "default_position_ids",
    "last_hidden_states",
    "naive_logprobs_entropy",
    "naive_top_p_entropy",
    "output_head_weight",
    "response_hidden_states",
    "response_logprobs",
]
