"""Run reports from fake metrics.jsonl files: PNGs, report.md and a self-contained report.html."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from rlvr.cli import main
from rlvr.errors import RLVRError
from rlvr.eval.report import load_runs, pareto_front, unique_labels, write_comparison_report, write_run_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def fake_run(path: Path, steps: int = 12, drift: float = 0.0) -> Path:
    """metrics.jsonl shaped like the trainer's: eval at step 0, every 4 steps and at the end."""
    path.mkdir(parents=True)
    records = []
    for step in range(steps + 1):
        record: dict = {"step": step}
        if step:
            record.update({
                "reward/mean": 0.2 + 0.02 * step + drift, "accuracy": 0.2 + 0.02 * step + drift,
                "entropy/mean": 0.8 - 0.03 * step, "entropy/p10": 0.01, "entropy/p50": 0.7 - 0.03 * step,
                "entropy/p90": 1.2 - 0.02 * step, "response_length/mean": 30 - step,
                "kl/k1_mean": 0.001 * step, "clip_frac": 0.01,
            })
        if step % 4 == 0 or step == steps:
            acc = 0.1 + 0.03 * step + drift
            record.update({
                "eval/accuracy_greedy": acc + 0.05, "eval/accuracy_sampled": acc, "eval/response_length": 32 - step,
                "eval/pass@1": acc, "eval/pass@2": min(1, 1.5 * acc), "eval/pass@4": min(1, 2 * acc),
            })
        records.append(record)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def fake_eval_summary(directory: Path, name: str = "math500") -> None:
    directory.mkdir(parents=True)
    summary = {
        "settings": {"model": "m", "data": name, "n": 4},
        "data": {"name": name, "kind": "shared"},
        "metrics": {"num_prompts": 10.0, "accuracy": 0.3, "pass@1": 0.3, "pass@2": 0.45, "pass@4": 0.6,
                    "maj@4": 0.35, "length/mean": 120.0, "entropy/mean": None, "accuracy_per_1k_tokens": 2.5},
    }
    (directory / "summary.json").write_text(json.dumps(summary))


def embedded_pngs(html_text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in IMG.findall(html_text)]


def test_single_run_report(tmp_path) -> None:
    run = fake_run(tmp_path / "run")
    fake_eval_summary(run / "eval" / "math500")
    md = write_run_report(run)
    assert md == run / "report.md"
    for name in ("curves.png", "passk.png", "pareto.png"):
        assert (run / name).read_bytes().startswith(PNG_MAGIC)
    page = (run / "report.html").read_text()
    pngs = embedded_pngs(page)
    assert len(pngs) == 3 and all(p.startswith(PNG_MAGIC) for p in pngs)
    assert "Held-out evaluation" in page and "Eval summaries" in page and "math500" in page
    text = md.read_text()
    assert "![" in text and "| 12 |" in text


def test_two_run_comparison_via_cli(tmp_path, capsys) -> None:
    a = fake_run(tmp_path / "grpo" / "seed0")
    b = fake_run(tmp_path / "siren" / "seed0", steps=8, drift=0.05)
    out = tmp_path / "cmp"
    assert main(["report", str(a), str(b), "--out", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert len(embedded_pngs(page)) == 3
    assert "grpo/seed0" in page and "siren/seed0" in page and "Runs compared" in page
    assert (out / "curves.png").is_file() and (out / "report.md").is_file()
    assert not (a / "report.html").exists()  # --out leaves the runs alone

    assert main(["report", str(a)]) == 0  # without --out: each run gets its own report
    assert (a / "report.html").is_file() and "report.html" in capsys.readouterr().out


def test_eval_only_directory_and_errors(tmp_path) -> None:
    fake_eval_summary(tmp_path / "ev", "gsm8k")
    html_path = write_comparison_report([tmp_path / "ev"], tmp_path / "out")
    page = html_path.read_text()
    assert "gsm8k" in page and len(embedded_pngs(page)) == 2  # pass@k and Pareto; no training curves
    with pytest.raises(RLVRError, match="run directory"):
        load_runs([tmp_path / "missing"])


def test_helpers() -> None:
    assert unique_labels([Path("/x/grpo/seed0"), Path("/x/siren/seed0")]) == ["grpo/seed0", "siren/seed0"]
    assert unique_labels([Path("/x/a"), Path("/x/b")]) == ["a", "b"]
    points = [(10, 0.5), (20, 0.4), (30, 0.7), (5, 0.1), (30, 0.6)]
    assert pareto_front(points) == [(5, 0.1), (10, 0.5), (30, 0.7)]
