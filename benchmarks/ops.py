"""Benchmark: chunked LM-head kernels (rlvr.ops) vs full-logit implementations.

For each vocabulary size it runs one forward+backward of

* ``logprobs``: log pi(target) + full-vocab entropy, loss = sum(g1 * logp + g2 * H);
  naive = ``naive_logprobs_entropy`` (full ``N x V`` logits, plain autograd; what verl does
  without fused kernels);
* ``top_p``: SIREN top-p entropy (p=0.8, top_k=10000), loss = sum(g * H_topp); naive = full
  logits + a vectorised transcription of the official ``efficient_top_p_sampling`` algorithm
  (softmax, top-k, cumsum, searchsorted, vocab mask, renormalise) with plain autograd,

with gradients w.r.t. both ``hidden`` (N x D) and ``weight`` (V x D), and prints time and peak
memory side by side with the ratios.

What "peak memory" measures:

* CUDA: ``torch.cuda.max_memory_allocated() - memory_allocated()`` around the call: the peak of
  tensors allocated by PyTorch during forward+backward, including outputs and the gradients.
* CPU: each configuration runs in a fresh subprocess; the kernel's peak resident set size is
  reset (``/proc/self/clear_refs`` = 5, Linux) after the inputs exist, and the reported number is
  ``VmHWM - VmRSS`` (peak RSS during forward+backward minus RSS just before it). It includes the
  gradients, allocator overhead and anything the process touched, so it is an upper bound on the
  tensor memory; if ``clear_refs`` is unavailable it falls back to ``ru_maxrss`` minus the RSS
  before the call (same thing, without the reset).

Time is the wall-clock of forward+backward after a small warm-up on 64 rows (min over
``--repeats``; the memory run is the first repeat). On CPU every run pays the page faults of its
fresh large allocations (glibc returns big blocks to the OS), which is part of the naive cost.

Defaults (N=1024, D=512, chunk 512 / 256, V in 32k/64k/128k/152k) take about 3-4 minutes on 2 CPU
cores.

Usage: ``python benchmarks/ops.py [--n 1024] [--d 512] [--vocab 32000,65536,128256,151936]
[--chunk 512] [--top-p-chunk 256] [--ops logprobs,top_p] [--device cpu|cuda] [--dtype float32]``
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from rlvr.ops import chunked_logprobs_entropy, chunked_top_p_entropy, naive_logprobs_entropy

MiB = 1024 * 1024


# ------------------------------------------------------------------------------------------
# the workloads
# ------------------------------------------------------------------------------------------


def unchunked_top_p(hidden: Tensor, weight: Tensor, *, p: float, top_k: int, temperature: float) -> Tensor:
    """SIREN top-p entropy on full logits (vectorised form of the official algorithm), autograd."""
    logits = (hidden.float() @ weight.float().t()) / temperature
    probs = torch.softmax(logits, dim=-1)
    top_logits, top_idx = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1)
    with torch.no_grad():
        cum = torch.gather(probs, 1, top_idx).cumsum(dim=-1)
        cutoff = torch.searchsorted(cum, torch.full_like(cum[:, :1], p))
        keep_rank = torch.arange(cum.shape[1], device=cum.device)[None, :] < cutoff
        mask = torch.zeros_like(probs).scatter_(1, top_idx, keep_rank.to(probs.dtype))
    del top_logits
    masked = probs * mask
    renorm = masked / (masked.sum(dim=-1, keepdim=True) + 1e-12)
    return -(renorm * torch.log(renorm + 1e-12)).sum(dim=-1)


def make_step(op: str, impl: str, args: argparse.Namespace, hidden: Tensor, weight: Tensor) -> Callable[[], None]:
    """A closure running one forward+backward of ``op`` with implementation ``impl``."""
    n = hidden.shape[0]
    gen = torch.Generator().manual_seed(1)
    targets = torch.randint(0, weight.shape[0], (n,), generator=gen).to(hidden.device)
    g1 = torch.randn(n, generator=gen).to(hidden.device)
    g2 = torch.randn(n, generator=gen).to(hidden.device)
    t = args.temperature

    def clear() -> None:
        hidden.grad = None
        weight.grad = None

    if op == "logprobs":
        fn = chunked_logprobs_entropy if impl == "chunked" else naive_logprobs_entropy

        def step() -> None:
            clear()
            logp, ent = fn(hidden, weight, targets, temperature=t, chunk_size=args.chunk)
            ((g1 * logp).sum() + (g2 * ent).sum()).backward()

    elif op == "top_p":

        def step() -> None:
            clear()
            if impl == "chunked":
                h, _ = chunked_top_p_entropy(
                    hidden, weight, p=args.p, top_k=args.top_k, temperature=t, chunk_size=args.top_p_chunk
                )
            else:
                h = unchunked_top_p(hidden, weight, p=args.p, top_k=args.top_k, temperature=t)
            (g1 * h).sum().backward()

    else:
        raise ValueError(f"unknown op {op!r}")
    return step


# ------------------------------------------------------------------------------------------
# measurement (runs inside the per-configuration subprocess on CPU)
# ------------------------------------------------------------------------------------------


def _proc_status_mib(key: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(op: str, impl: str, vocab: int, args: argparse.Namespace) -> dict[str, float]:
    """Time (s) and peak extra memory (MiB) of one forward+backward."""
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    hidden = torch.randn(args.n, args.d, device=device).to(dtype).requires_grad_()
    weight = (torch.randn(vocab, args.d, device=device) * args.d**-0.5 * 3).to(dtype).requires_grad_()
    # warm-up on a few rows (thread pools, kernel selection); the peak-memory reset below forgets it
    warm = hidden.detach()[: min(args.n, 64)].clone().requires_grad_()
    make_step(op, impl, args, warm, weight)()
    _sync(device)
    del warm
    weight.grad = None
    step = make_step(op, impl, args, hidden, weight)
    times: list[float] = []
    peak = float("nan")
    for i in range(args.repeats):
        if i == 0:
            if device.type == "cuda":
                _sync(device)
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            else:
                have_reset = _reset_peak_rss()
                base = _proc_status_mib("VmRSS") or 0.0
                if not have_reset:
                    base_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                    base = max(base, base_max)
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
        if i == 0:
            if device.type == "cuda":
                peak = (torch.cuda.max_memory_allocated(device) - base) / MiB
            else:
                hwm = _proc_status_mib("VmHWM") if have_reset else None
                if hwm is None:
                    hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                peak = hwm - base
    return {"time_s": min(times), "peak_mib": peak}


def run_config(op: str, impl: str, vocab: int, args: argparse.Namespace) -> dict[str, float]:
    """On CPU: a fresh subprocess per configuration, so RSS baselines are clean."""
    if args.device != "cpu" or args.in_process:
        return measure(op, impl, vocab, args)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", op, impl, str(vocab), *_passthrough(args)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
        return {"time_s": float("nan"), "peak_mib": float("nan"), "error": " | ".join(tail)}  # type: ignore[dict-item]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _passthrough(args: argparse.Namespace) -> list[str]:
    return [
        f"--n={args.n}",
        f"--d={args.d}",
        f"--chunk={args.chunk}",
        f"--top-p-chunk={args.top_p_chunk}",
        f"--p={args.p}",
        f"--top-k={args.top_k}",
        f"--temperature={args.temperature}",
        f"--repeats={args.repeats}",
        f"--device={args.device}",
        f"--dtype={args.dtype}",
        f"--threads={args.threads}",
    ]


# ------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1024, help="tokens (rows)")
    parser.add_argument("--d", type=int, default=512, help="hidden size")
    parser.add_argument("--vocab", default="32000,65536,128256,151936", help="comma-separated vocab sizes")
    parser.add_argument("--chunk", type=int, default=512, help="chunk size for logprobs (library default 1024)")
    parser.add_argument("--top-p-chunk", type=int, default=256, help="chunk size for top-p entropy")
    parser.add_argument("--ops", default="logprobs,top_p", help="comma-separated: logprobs,top_p")
    parser.add_argument("--p", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=10000)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs; the first also measures memory")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: default)")
    parser.add_argument("--in-process", action="store_true", help="CPU: skip the per-config subprocess")
    parser.add_argument("--worker", nargs=3, metavar=("OP", "IMPL", "VOCAB"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _fmt_v(vocab: int) -> str:
    return f"{vocab / 1000:.0f}k"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        op, impl, vocab = args.worker
        print(json.dumps(measure(op, impl, int(vocab), args)))
        return
    vocabs = [int(v) for v in args.vocab.split(",")]
    ops = args.ops.split(",")
    mem_label = "peak alloc MiB" if args.device != "cpu" else "peak RSS delta MiB"
    print(
        f"device={args.device} threads={torch.get_num_threads()} dtype={args.dtype} N={args.n} D={args.d} "
        f"chunk={args.chunk} top_p_chunk={args.top_p_chunk} p={args.p} top_k={args.top_k} T={args.temperature}"
    )
    print(f"memory: {mem_label} during one forward+backward (incl. grads of hidden and weight)")
    header = (
        f"{'op':<9} {'V':>5} | {'naive s':>8} {'chunked s':>9} {'t ratio':>7} | "
        f"{'naive MiB':>9} {'chunked MiB':>11} {'mem ratio':>9}"
    )
    print(header)
    print("-" * len(header))
    for op in ops:
        for vocab in vocabs:
            naive = run_config(op, "naive", vocab, args)
            chunked = run_config(op, "chunked", vocab, args)
            t_ratio = chunked["time_s"] / naive["time_s"]
            m_ratio = chunked["peak_mib"] / naive["peak_mib"]
            print(
                f"{op:<9} {_fmt_v(vocab):>5} | {naive['time_s']:>8.2f} {chunked['time_s']:>9.2f} {t_ratio:>7.2f} | "
                f"{naive['peak_mib']:>9.0f} {chunked['peak_mib']:>11.0f} {m_ratio:>9.2f}",
                flush=True,
            )
            for res in (naive, chunked):
                if "error" in res:
                    print(f"    error: {res['error']}")
    print("t ratio = chunked/naive time; mem ratio = chunked/naive peak memory (lower is better)")


if __name__ == "__main__":
    main()
