"""Multi-process training on CPU: 2 gloo processes spawned here (with a hang guard) against one process.

Each launch runs several jobs in one process group (tests/distributed/worker.py runs ``rlvr train``
through the CLI for each), so imports and the group are paid once per launch.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlvr.train.checkpoint import list_checkpoints
from rlvr.train.config import load_config
from rlvr.train.logging import read_metrics
from rlvr.train.trainer import Trainer

WORKER = Path(__file__).resolve().parent / "worker.py"
HANG_GUARD_S = 240
VOLATILE = ("time/", "throughput/")

BASE = [
    "task=test_checksum",
    "rollout.shards=2",
    "train.steps=2",
    "train.mini_batch_size=8",
    "train.micro_batch_size=4",  # 16 rows: 2 mini-batches of 2 micro-batches = one micro-batch per rank
    "eval.every=1000",
    "train.checkpoint_every=1",
]
SIREN = ["algo.advantage=dr_grpo", "algo.agg_mode=seq-mean-token-sum-norm", "algo.regularizers=[siren]"]
KILL_RUN = ["train.steps=4", *SIREN]
# T1's anchor refresh mixes the sharded reference with the sharded policy shard by shard
T1_ANCHOR = ["algo.regularizers=[{name: kl, coef: 0.1}]", "algo.controllers=[{name: t1_anchor, every: 1, mix: 0.5}]"]
# DRIVE's plan (stage 2 at step 2 from the replicated prompt history) + ADR's instruction halves and mode logits
DRIVE_ADR = [
    "algo.controllers=[{name: drive, switch_step: 1, stage1_length: 0.5, stage2_group_size: 8, hard_max_pass_rate: 1.0}]",
    "algo.reward_shaping=[adr_reward]",
    "algo.regularizers=[{name: adr_switch, short_token: '1', long_token: '2'}]",
]
# Confucius3 RSR (step 2 starts with step 1's overflow groups, seed 1) + HAPO-H adaptive temperature + SPAE probes
ROLLOUT_COMPONENTS = [
    "seed=1",
    "rollout.group_size=2",
    "rollout.dynamic_sampling=true",
    "rollout.recover_overflow=true",
    "rollout.adaptive_temperature.enabled=true",
    "algo.advantage={name: spae, split: length, step_len: 3}",
]
# CURE's branch points come from the learner's rank-split entropy forward; continuations are sampled in shards
CURE = ["rollout.cure.enabled=true", "rollout.cure.min_token_chars=0", "rollout.cure.n2=1", "rollout.group_size=2"]
# R^3: replay buffer and never-solved checks from the replicated history; reflections sampled in shards
R3 = ["rollout.r3.replay=true", "rollout.r3.reflection=true", "rollout.r3.reflection_n=2", "rollout.group_size=2",
      "algo.reward_shaping=[{name: r3_rank, window: 2}]"]  # fmt: skip
COMBINED = [
    "algo.advantage={name: canon, metric: entropy}",
    "algo.policy_loss={name: clip_cov, clip_ratio: 0.2, cov_low: -10.0}",
    "algo.token_weights=[forking_tokens]",
    "rollout.dynamic_sampling=true",
    "rollout.group_size=2",  # half the groups score all-equal: refill rounds happen
    "rollout.max_sampling_rounds=4",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(jobs: list[dict], tmp: Path, world: int = 2, kill: dict[int, tuple[str, int]] | None = None) -> list[subprocess.CompletedProcess]:
    """Run ``jobs`` on ``world`` ranks; kill[rank] = (point, step) makes that rank SIGKILL itself there."""
    spec = tmp / f"jobs-{time.monotonic_ns()}.json"
    spec.write_text(json.dumps(jobs))
    port = _free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
               "PYTHONUNBUFFERED": "1", "RLVR_TEST_COLLECTIVE_TIMEOUT": "60"}  # fmt: skip
        if kill and rank in kill:
            env["RLVR_KILL_AT"], env["RLVR_KILL_STEP"] = kill[rank][0], str(kill[rank][1])
        procs.append(subprocess.Popen([sys.executable, str(WORKER), str(spec)], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))  # fmt: skip
    deadline = time.monotonic() + HANG_GUARD_S
    out = []
    for proc in procs:
        try:
            stdout, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail(f"multi-process run hung for more than {HANG_GUARD_S} s")
        out.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, ""))
    return out


FAST: list[str] = []
"""tests/conftest.py's FAST overrides (set by the autouse fixture below; conftest is not importable here)."""


@pytest.fixture(scope="module", autouse=True)
def _fast_overrides(informative):
    FAST[:] = informative.fast  # FAST + a reward that varies within groups (test_checksum)


def _torchrun(rlvr_args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=N -m rlvr ...`` with the test tasks as a plugin (tests/conftest.py)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(WORKER.parents[1]), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={_free_port()}",
           "-m", "rlvr", *rlvr_args]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)


def _job(run: Path, *overrides: str, resume: bool = False) -> dict:
    return {"overrides": [*FAST, *BASE, *overrides, f"output_dir={run}"], "resume": resume}


def _single(run: Path, *overrides: str, resume: bool = False) -> None:
    """The single-process run, on one thread like each rank (a CPU matmul's sum order depends on the thread count)."""
    cfg = load_config(None, [*FAST, *BASE, *overrides, f"output_dir={run}"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        Trainer(cfg, quiet=True).run(resume=resume)
    finally:
        torch.set_num_threads(threads)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "final_model" / "model.safetensors"))


def _max_diff(a: Path, b: Path) -> float:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def _stable(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in read_metrics(run / "metrics.jsonl")]


@pytest.fixture(scope="module")
def dp_runs(tmp_path_factory, _fast_overrides):
    """One 2-rank launch running every exactness job, and the single-process runs to compare with."""
    tmp = tmp_path_factory.mktemp("dp")
    jobs = {
        "siren": SIREN,
        "combined": COMBINED,
        "micro2": [*SIREN, "train.micro_batch_size=2"],
        "rollout": ROLLOUT_COMPONENTS,
        "cure": CURE,
        "r3": R3,
        "fsdp2": [*SIREN, "train.strategy=fsdp2", "train.grad_clip=1e6"],
        "fsdp2-t1": [*T1_ANCHOR, "train.strategy=fsdp2", "train.grad_clip=1e6"],
        "drive-adr": DRIVE_ADR,
    }
    straight = {"straight": KILL_RUN}  # the uninterrupted reference of the kill -9 test
    results = _launch([_job(tmp / f"dp-{name}", *extra) for name, extra in {**jobs, **straight}.items()], tmp)
    for r in results:
        assert r.returncode == 0, r.stdout[-4000:]
    for name, extra in jobs.items():
        single_extra = [x for x in extra if not x.startswith("train.strategy")]
        _single(tmp / f"sp-{name}", *single_extra)
    return tmp


def test_two_ranks_equal_one_process_bit_for_bit_siren(dp_runs, informative):
    informative.assert_learning(read_metrics(dp_runs / "sp-siren" / "metrics.jsonl"))
    assert _max_diff(dp_runs / "dp-siren", dp_runs / "sp-siren") == 0.0
    dp, sp = _stable(dp_runs / "dp-siren"), _stable(dp_runs / "sp-siren")
    for a, b in zip(dp, sp):  # the same rollouts, rewards, entropies, SIREN anchor metrics
        for key in ("reward/mean", "entropy/mean", "siren/anchor", "train/grad_norm"):
            if key in b:
                assert a[key] == b[key], key


def test_two_ranks_equal_one_process_bit_for_bit_combined(dp_runs, informative):
    """CANON (entropy) + Clip-Cov (batch scope) + forking tokens + dynamic sampling with refill."""
    records = read_metrics(dp_runs / "sp-combined" / "metrics.jsonl")
    informative.assert_learning(records)
    assert any(r.get("sampling/rounds", 1) > 1 or r.get("sampling/informative_frac", 1) < 1 for r in records[1:])
    assert _max_diff(dp_runs / "dp-combined", dp_runs / "sp-combined") == 0.0


def test_prompt_history_is_the_single_process_one(dp_runs):
    """Rank 0 writes the replicated per-prompt history; it equals one process's, DRIVE's stage-2 draws included."""
    for name in ("siren", "drive-adr"):
        assert (dp_runs / f"dp-{name}" / "prompt_history.jsonl").read_text() == (dp_runs / f"sp-{name}" / "prompt_history.jsonl").read_text()


def test_drive_and_adaptive_deep_reasoning_equal_one_process(dp_runs, informative):
    records = read_metrics(dp_runs / "sp-drive-adr" / "metrics.jsonl")
    informative.assert_learning(records)
    assert [r["drive/stage"] for r in records if "drive/stage" in r] == [1.0, 2.0]
    assert _max_diff(dp_runs / "dp-drive-adr", dp_runs / "sp-drive-adr") == 0.0


def test_fsdp2_reference_refresh_equals_one_process(dp_runs):
    """T1's refresh on FSDP2 shards (after each step: ref <- (ref + pi) / 2) against one process."""
    records = read_metrics(dp_runs / "sp-fsdp2-t1" / "metrics.jsonl")
    assert [r["t1_anchor/refreshed"] for r in records if "t1_anchor/refreshed" in r] == [1.0, 1.0]
    assert _max_diff(dp_runs / "dp-fsdp2-t1", dp_runs / "sp-fsdp2-t1") <= 1e-7
    dp = [r["kl/k1_mean"] for r in read_metrics(dp_runs / "dp-fsdp2-t1" / "metrics.jsonl") if "kl/k1_mean" in r]
    sp = [r["kl/k1_mean"] for r in records if "kl/k1_mean" in r]
    assert dp == pytest.approx(sp, abs=1e-7) and abs(sp[1]) > 0  # step 2's KL is to the refreshed anchor


def test_rollout_stage_components_equal_one_process(dp_runs, informative):
    """Recovered overflow groups, per-token temperatures, SPAE probe potentials, CURE branches and R^3's
    reflections on 2 ranks."""
    records = read_metrics(dp_runs / "sp-rollout" / "metrics.jsonl")
    informative.assert_learning(records)
    assert records[2]["sampling/recovered_groups"] > 0 and records[2]["adaptive_temperature/mean"] != 1.0
    assert all(r["spae_probe/probes"] > 0 for r in records[1:])
    assert all(r["cure/continuation_frac"] == 0.5 for r in read_metrics(dp_runs / "sp-cure" / "metrics.jsonl")[1:])
    r3 = read_metrics(dp_runs / "sp-r3" / "metrics.jsonl")
    assert sum(r.get("r3/reflected_frac", 0) for r in r3) > 0
    keys = ("sampling/recovered_groups", "adaptive_temperature/mean", "spae/potential_mean", "cure/branch_mean", "reward/mean",
            "r3/reflected_frac", "r3/replayed_frac", "r3/reflections", "r3_rank/mean_bonus")  # fmt: skip
    for name in ("rollout", "cure", "r3"):
        assert _max_diff(dp_runs / f"dp-{name}", dp_runs / f"sp-{name}") == 0.0, name
        for a, b in zip(_stable(dp_runs / f"dp-{name}"), _stable(dp_runs / f"sp-{name}")):
            assert {k: a.get(k) for k in keys} == {k: b.get(k) for k in keys}, name


def test_several_micro_batches_per_rank_within_1e_5(dp_runs):
    """Two micro-batches per rank: the gradient sum is ordered differently ((g0 + g2) + (g1 + g3))."""
    assert _max_diff(dp_runs / "dp-micro2", dp_runs / "sp-micro2") <= 1e-5


def test_fsdp2_equals_one_process(dp_runs):
    """FSDP2 (sharded parameters, gradients reduce-scattered as a sum) against one process.

    Not bitwise here: 3.7e-9 max abs after 2 steps on this CPU with one micro-batch per rank, where
    the replicate strategy is bitwise (the cause was not isolated: the unsharded parameters live in
    FSDP2's all-gather buffers, and CPU kernels may round differently with another memory layout).
    """
    assert _max_diff(dp_runs / "dp-fsdp2", dp_runs / "sp-fsdp2") <= 1e-7


def test_kill_9_of_a_rank_then_resume_in_two_and_in_one_process(tmp_path, dp_runs):
    """Rank 1 dies entering step 3: rank 0 stops with a clear error in bounded time; --resume with 2
    ranks reproduces the uninterrupted 2-rank run, and the 2-rank checkpoint resumes in one process."""
    steps = KILL_RUN
    straight = dp_runs / "dp-straight"
    t0 = time.monotonic()
    victim = _launch([_job(tmp_path / "b", *steps)], tmp_path, kill={1: ("step", 2)})
    assert victim[1].returncode == -signal.SIGKILL
    assert victim[0].returncode != 0 and "another rank probably died" in victim[0].stdout, victim[0].stdout[-3000:]
    assert time.monotonic() - t0 < 120
    assert [p.name for p in list_checkpoints(tmp_path / "b" / "checkpoints")][-1] == "step_000002"
    resumed = _torchrun(["train", "--quiet", "--resume", f"output_dir={tmp_path / 'b'}", "plugins=[conftest]"])
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert _stable(tmp_path / "b") == _stable(straight)
    assert _max_diff(tmp_path / "b", straight) == 0.0
    # the 2-rank step-2 checkpoint, resumed by one process (rollout.shards fixes the sampling)
    import shutil

    single = tmp_path / "single"
    shutil.copytree(tmp_path / "b", single)
    for ckpt in list_checkpoints(single / "checkpoints"):
        if ckpt.name > "step_000002":
            shutil.rmtree(ckpt)
    _single(single, *steps, resume=True)
    assert _stable(single) == _stable(straight)
    assert _max_diff(single, straight) == 0.0
