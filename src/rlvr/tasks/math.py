"""Math answers: extraction (``\\boxed{}``, GSM8K ``####``), verification, and a JSONL-backed task.

Verification uses the ``math-verify`` package (``parse`` + ``verify``, sympy underneath). Its own
timeouts are ``signal.alarm`` based, so they only work in the main thread, in whole seconds, and
sympy can still hang inside C code. :func:`verify_math` therefore runs math-verify in a small pool
of helper processes (plain ``python -c`` subprocesses that import only math-verify):

* a request gets a hard deadline in the caller (``timeout_s``); a worker that misses it is killed
  and replaced in the background, and the call returns False;
* inside the worker a float ``setitimer`` interrupts slow sympy work a bit before the deadline, so
  the usual slow case (e.g. ``9^{9^{9^9}}``) returns False without the cost of a restart;
* inputs are size-guarded first (length, brace depth, digit runs), so 1 MB of LaTeX, 100k nested
  braces or a million-digit number return False at once;
* it works from any thread (the trainer scores in a thread pool) and in forked children.

A worker takes about a second to start (importing sympy); the pool starts lazily and the
``math_jsonl`` task warms it up when it is built. Call :func:`shutdown_verifier` to stop it early.
"""

from __future__ import annotations

import atexit
import json
import logging
import math as _math
import os
import random
import re
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Literal, get_args

from rlvr.errors import ConfigError
from rlvr.files import decode_utf8
from rlvr.tasks.base import Problem, stable_hash, tasks

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# Extraction

_BOX_MARKERS = ("\\boxed", "\\fbox")


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``, or ``\\boxed 5``) in ``text``.

    Nested braces are matched (``\\boxed{\\frac{1}{2}}`` -> ``\\frac{1}{2}``). Returns None when
    there is no box or the last one is not closed (a truncated response). Linear in ``len(text)``.
    """
    if not isinstance(text, str):
        return None
    end = len(text)
    while True:
        start, marker = max((text.rfind(m, 0, end), m) for m in _BOX_MARKERS)
        if start < 0:
            return None
        pos = start + len(marker)
        if pos < len(text) and (text[pos].isalpha()):  # e.g. \boxedtext: not a box, look further left
            end = start
            continue
        return _box_content(text, pos)


def _box_content(text: str, pos: int) -> str | None:
    """Content of the braces (or the space-separated token) starting at ``text[pos]``."""
    while pos < len(text) and text[pos] == " ":
        pos += 1
    if pos >= len(text):
        return None
    if text[pos] != "{":
        if pos > 0 and text[pos - 1] == " ":  # "\boxed 5$" form: up to the next space or '$'
            words = text[pos:].split("$", 1)[0].split()
            return words[0] if words else None
        return None
    depth = 0
    for i in range(pos, len(text)):
        char = text[i]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[pos + 1 : i].strip()
    return None


def extract_hash_answer(text: str) -> str | None:
    """GSM8K final answer: what follows the last ``####``, on that line, without commas or spaces.

    ``"... #### 1,234"`` -> ``"1234"``; None when there is no ``####``.
    """
    if not isinstance(text, str) or "####" not in text:
        return None
    tail = text.rsplit("####", 1)[1].split("\n", 1)[0]
    answer = tail.replace(",", "").replace("$", "").strip()
    return answer or None


# --------------------------------------------------------------------------------------------------
# Verification in helper processes

MAX_VERIFY_CHARS = 20_000
"""Inputs longer than this are not verified (False). Extract the answer from long responses first."""
MAX_BRACE_DEPTH = 64
MAX_DIGIT_RUN = 1_000
DEFAULT_WORKERS = 2
"""Helper processes at most; more concurrent callers wait for a free one."""
STARTUP_TIMEOUT_S = 60.0
"""How long a call may wait for a (re)starting worker; not counted in ``timeout_s``."""
WORKER_MEMORY_BYTES = 4 << 30
"""Address-space cap of a worker (RLIMIT_AS), so a pathological expression cannot eat the machine."""

_WORKER_SOURCE = r"""
import json, logging, os, signal, sys
try:
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]), int(sys.argv[1])))
except Exception:
    pass
out = os.fdopen(os.dup(1), "wb", buffering=0)
os.dup2(2, 1)
logging.disable(logging.CRITICAL)
signal.signal(signal.SIGINT, signal.SIG_IGN)

class Deadline(BaseException):
    pass

armed = False

def on_alarm(signum, frame):
    if armed:
        raise Deadline()

signal.signal(signal.SIGALRM, on_alarm)
from math_verify import parse, verify
out.write(b"ready\n")
for line in sys.stdin.buffer:
    ok = False
    try:
        request = json.loads(line)
        armed = True
        signal.setitimer(signal.ITIMER_REAL, max(float(request["t"]), 0.01), 0.05)
        try:
            gold = parse(request["gold"], parsing_timeout=None)
            pred = parse(request["pred"], parsing_timeout=None)
            ok = bool(gold) and bool(pred) and bool(verify(gold, pred, timeout_seconds=None))
        finally:
            armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)
    except BaseException:
        ok = False
    out.write(b"1\n" if ok else b"0\n")
"""


class _WorkerDied(Exception):
    """The helper process exited or closed its pipe."""


class _WorkerStartFailed(Exception):
    """A helper process could not be started (then verification falls back to in-process)."""


class _Worker:
    """One helper process speaking one-line JSON requests / one-line answers over pipes."""

    def __init__(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_SOURCE, str(WORKER_MEMORY_BYTES)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # no terminal signals (Ctrl-C) reach it; it exits on stdin EOF
            env=env,
        )
        self.ready = False
        self._buffer = b""

    def _read_line(self, deadline: float) -> bytes | None:
        """The next output line, or None at ``deadline``; _WorkerDied if the pipe closed."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        poller = select.poll()  # not select.select: that fails for fd numbers above 1024
        poller.register(fd, select.POLLIN)
        while b"\n" not in self._buffer:
            remaining_ms = max(0, _math.ceil((deadline - time.monotonic()) * 1000))
            if not poller.poll(remaining_ms):
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                raise _WorkerDied("verifier worker exited")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def poll_ready(self) -> bool:
        """Whether the worker has finished starting (non-blocking)."""
        if not self.ready:
            try:
                self.ready = self._read_line(time.monotonic()) == b"ready"
            except _WorkerDied:
                return False
        return self.ready

    def wait_ready(self, timeout_s: float) -> None:
        """Block until the worker has imported math-verify; _WorkerStartFailed if it does not."""
        if self.ready:
            return
        try:
            line = self._read_line(time.monotonic() + timeout_s)
        except _WorkerDied:
            line = None
        if line != b"ready":
            raise _WorkerStartFailed(
                f"verifier worker did not start within {timeout_s:.0f} s (is math-verify importable by {sys.executable}?)"
            )
        self.ready = True

    def verify(self, gold: str, pred: str, timeout_s: float) -> bool | None:
        """True/False from the worker, or None when it missed the deadline (the caller kills it)."""
        assert self.proc.stdin is not None
        request = json.dumps({"gold": gold, "pred": pred, "t": max(0.8 * timeout_s, timeout_s - 0.2)})
        try:
            self.proc.stdin.write(request.encode("utf-8") + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise _WorkerDied(str(exc)) from exc
        line = self._read_line(time.monotonic() + timeout_s)
        return None if line is None else line == b"1"

    def kill(self) -> None:
        """Stop the process (it may be stuck in C code, so no polite request)."""
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except Exception:  # noqa: BLE001 - already gone
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except Exception:  # noqa: BLE001
                pass


class _VerifierPool:
    """Up to ``max_workers`` helper processes shared by all threads of this process."""

    def __init__(self, max_workers: int = DEFAULT_WORKERS) -> None:
        self.pid = os.getpid()
        self.max_workers = max_workers
        self.broken = False
        self._slots = threading.BoundedSemaphore(max_workers)
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._all: list[_Worker] = []

    def _spawn(self) -> _Worker:
        worker = _Worker()
        with self._lock:
            self._all.append(worker)
        return worker

    def _discard(self, worker: _Worker) -> None:
        worker.kill()
        with self._lock:
            if worker in self._all:
                self._all.remove(worker)

    def _replace(self, worker: _Worker) -> None:
        """Kill ``worker`` and start its replacement now, so it is ready by the next call."""
        self._discard(worker)
        replacement = self._spawn()
        with self._lock:
            self._idle.append(replacement)

    def _take_idle(self) -> _Worker | None:
        """An idle worker, preferring one that has finished starting."""
        with self._lock:
            if not self._idle:
                return None
            index = next((i for i, w in enumerate(self._idle) if w.poll_ready()), 0)
            return self._idle.pop(index)

    def warm_up(self) -> None:
        """Start the workers now (without waiting for them) so the first verification is fast."""
        with self._lock:
            missing = self.max_workers - len(self._all)
        for _ in range(max(missing, 0)):
            worker = self._spawn()
            with self._lock:
                self._idle.append(worker)

    def verify(self, gold: str, pred: str, timeout_s: float) -> bool:
        """Verify on a free worker; one that misses the deadline or dies is replaced, giving False."""
        with self._slots:
            worker = self._take_idle()
            if worker is None or worker.proc.poll() is not None:
                if worker is not None:
                    self._discard(worker)
                worker = self._spawn()
            try:
                worker.wait_ready(STARTUP_TIMEOUT_S)
            except _WorkerStartFailed:
                self._discard(worker)
                self.broken = True
                raise
            try:
                result = worker.verify(gold, pred, timeout_s)
            except _WorkerDied:
                result = None
            if result is None:
                self._replace(worker)
                return False
            with self._lock:
                self._idle.append(worker)
            return result

    def shutdown(self) -> None:
        """Kill every worker of this pool."""
        with self._lock:
            workers, self._all, self._idle = list(self._all), [], []
        if os.getpid() == self.pid:
            for worker in workers:
                worker.kill()


_POOL: _VerifierPool | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> _VerifierPool:
    """The process-wide pool (a fresh one in a forked child: the parent's workers are not ours)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL.pid != os.getpid():
            _POOL = _VerifierPool()
        return _POOL


def warm_up_verifier() -> None:
    """Start the verifier processes in the background (returns at once)."""
    try:
        _pool().warm_up()
    except OSError as exc:
        logger.warning("could not start math-verify workers (%s); verification will run in-process", exc)


def shutdown_verifier() -> None:
    """Stop the verifier processes (they are restarted on the next call)."""
    global _POOL
    with _POOL_LOCK:
        pool, _POOL = _POOL, None
    if pool is not None:
        pool.shutdown()


atexit.register(shutdown_verifier)


def input_ok(text: str) -> bool:
    """Cheap guard: not too long, braces not too deep, no absurdly long digit runs."""
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_VERIFY_CHARS:
        return False
    depth = deepest = run = longest = 0
    for char in text:
        if char == "{":
            depth += 1
            deepest = max(deepest, depth)
        elif char == "}":
            depth -= 1
        if char.isdigit():
            run += 1
            longest = max(longest, run)
        else:
            run = 0
    return deepest <= MAX_BRACE_DEPTH and longest <= MAX_DIGIT_RUN


_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")


def as_latex(text: str) -> str:
    """``text`` ready for math-verify: bare answers are wrapped in ``$...$``, delimited text is kept.

    Delimited means it holds ``\\boxed``, ``\\fbox``, ``\\(``, ``\\[`` or an unescaped ``$``
    (``\\$36`` is a bare answer).
    """
    text = text.strip()
    if any(mark in text for mark in ("\\boxed", "\\fbox", "\\(", "\\[")) or _UNESCAPED_DOLLAR.search(text):
        return text
    return f"${text}$"


def clean_answer(answer: str) -> str:
    """A boxed answer without stray unescaped ``$`` (e.g. ``a+$ $b`` in some solutions -> ``a+ b``)."""
    return _UNESCAPED_DOLLAR.sub("", answer).strip()


def _verify_in_process(gold: str, pred: str, timeout_s: float) -> bool:
    """Fallback when no subprocess can be started: math-verify's own (main-thread-only) timeouts."""
    from math_verify import parse, verify

    seconds: int | None = max(1, _math.ceil(timeout_s))
    if threading.current_thread() is not threading.main_thread():
        seconds = None  # signal-based timeouts raise outside the main thread; no timeout then
    try:
        gold_parsed = parse(gold, parsing_timeout=seconds)
        pred_parsed = parse(pred, parsing_timeout=seconds)
        return bool(gold_parsed) and bool(pred_parsed) and bool(verify(gold_parsed, pred_parsed, timeout_seconds=seconds))
    except BaseException:  # noqa: BLE001 - includes math-verify's TimeoutException (a BaseException)
        return False


def verify_math(response: str, reference: str, timeout_s: float = 5.0) -> bool:
    """Whether the answer ``response`` is mathematically equal to ``reference`` (math-verify).

    Both may be bare answers (``\\frac{1}{2}``, ``0.5``, ``(3, \\frac{\\pi}{2})``) or text with
    ``\\boxed{}`` / ``$...$``; ``reference`` is the gold side of math-verify's (asymmetric)
    ``verify``. Never raises. Returns within about ``timeout_s`` once a worker is up; the first call
    of a process may also wait for a worker to start (~1 s, at most :data:`STARTUP_TIMEOUT_S`).
    """
    try:
        if not input_ok(response) or not input_ok(reference):
            return False
        gold, pred = as_latex(reference), as_latex(response)
        timeout_s = max(float(timeout_s), 0.05)
        pool = _pool()
        if not pool.broken and os.name == "posix":
            try:
                return pool.verify(gold, pred, timeout_s)
            except (_WorkerStartFailed, OSError) as exc:
                pool.broken = True
                logger.warning("math-verify workers unavailable (%s); verifying in-process from now on", exc)
        return _verify_in_process(gold, pred, timeout_s)
    except Exception:  # noqa: BLE001 - a verifier must never raise
        return False


# --------------------------------------------------------------------------------------------------
# The math_jsonl task

DEFAULT_PROMPT_TEMPLATE = "{question}\nPlease reason step by step, and put your final answer within \\boxed{}."
"""``{question}`` is replaced by the question; other braces are literal (no ``str.format``)."""

AnswerFormat = Literal["plain", "boxed", "gsm8k"]
ANSWER_FORMATS: tuple[str, ...] = get_args(AnswerFormat)


def _check_answer_format(answer_format: str) -> None:
    if answer_format not in ANSWER_FORMATS:
        raise ConfigError(f"task.answer_format must be one of {', '.join(ANSWER_FORMATS)}, got '{answer_format}'")


def _iter_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number or row number, record) for a .jsonl, .json (list) or .parquet file."""
    suffix = path.suffix.lower()
    where = f"task.path: '{path}'"
    if suffix == ".parquet":
        try:
            import pandas as pd
        except ImportError as exc:
            raise ConfigError(f"task.path: reading '{path}' needs pandas and pyarrow installed") from exc
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises its own error types for bad files
            raise ConfigError(f"{where} is not a readable parquet file ({exc}); copy or export it again") from None
        for i, record in enumerate(frame.to_dict(orient="records")):
            yield i + 1, record
        return
    if suffix == ".json":
        try:
            data = json.loads(decode_utf8(path.read_bytes(), where))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where} line {exc.lineno} is not valid JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(data, list):
            raise ConfigError(f"task.path: '{path}' must hold a JSON list of objects")
        for i, record in enumerate(data):
            yield i + 1, record
        return
    with path.open("rb") as handle:  # bytes, so a non-UTF-8 byte is reported with its line
        for number, raw in enumerate(handle, start=1):
            line = decode_utf8(raw, where, number)  # a BOM is accepted on any line (files joined with cat)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"task.path: '{path}' line {number} is not valid JSON: {exc}") from None
            yield number, record


def _field(record: Any, name: str, knob: str, path: Path, number: int) -> Any:
    """``record[name]``; a ConfigError naming the knob, field and line when it is missing or null."""
    if not isinstance(record, dict):
        raise ConfigError(f"task.path: '{path}' line {number} is not a JSON object")
    if name not in record or record[name] is None:
        fields = ", ".join(sorted(map(str, record))) or "(none)"
        raise ConfigError(
            f"task.{knob}: field '{name}' is missing in '{path}' line {number}; fields there: {fields}"
        )
    return record[name]


def _plain(value: Any) -> str:
    """A reference value as text: integral floats lose ``.0``, lists are comma-joined."""
    if isinstance(value, (list, tuple)):
        return ", ".join(_plain(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def reference_answer(value: Any, answer_format: AnswerFormat) -> str | None:
    """The reference answer held in a field, per ``answer_format`` (None if it cannot be found)."""
    _check_answer_format(answer_format)
    if answer_format == "boxed":
        boxed = extract_boxed(_plain(value))
        if boxed is None:
            return None
        return clean_answer(boxed) or None
    if answer_format == "gsm8k":
        return extract_hash_answer(str(value))
    text = _plain(value)
    return text or None


def load_math_problems(
    path: str,
    *,
    question_field: str = "problem",
    answer_field: str = "answer",
    answer_format: AnswerFormat = "plain",
    solution_field: str | None = None,
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    limit: int | None = None,
) -> list[Problem]:
    """Problems from a local .jsonl / .json / .parquet file; ids are ``<file stem>:<row index>``."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"task.path: '{path}' is not a file")
    problems: list[Problem] = []
    for index, (number, record) in enumerate(_iter_records(file)):
        if limit is not None and index >= limit:
            break
        question = str(_field(record, question_field, "question_field", file, number))
        raw_answer = _field(record, answer_field, "answer_field", file, number)
        answer = reference_answer(raw_answer, answer_format)
        if answer is None:
            raise ConfigError(
                f"task.answer_format: no {answer_format} answer in field '{answer_field}' of '{file}' line {number}"
            )
        solution = None
        if solution_field is not None:
            solution = str(_field(record, solution_field, "solution_field", file, number))
        problems.append(
            Problem(
                id=f"{file.stem}:{index}",
                prompt=prompt_template.replace("{question}", question),
                answer=answer,
                solution=solution,
                meta={"source": str(file), "row": index},
            )
        )
    if not problems:
        raise ConfigError(f"task.path: '{path}' holds no problems")
    return problems


@tasks.register("math_jsonl")
class MathJsonlTask:
    """Math word problems from a local file, scored by math-verify on the last ``\\boxed{}``.

    ``answer_format``: ``plain`` (the field is the answer), ``boxed`` (the answer is the last
    ``\\boxed{}`` of the field, e.g. a worked solution) or ``gsm8k`` (after ``####``). Held-out
    problems: every row of ``heldout_path`` when given (then all of ``path`` trains), else the rows
    whose id hash falls in ``heldout_fraction``. ``prompt_template`` must contain ``{question}``.
    """

    name = "math_jsonl"

    def __init__(
        self,
        *,
        path: str,
        question_field: str = "problem",
        answer_field: str = "answer",
        answer_format: AnswerFormat = "plain",
        solution_field: str | None = None,
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        heldout_fraction: float = 0.1,
        heldout_path: str | None = None,
        limit: int | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        _check_answer_format(answer_format)
        if "{question}" not in prompt_template:
            raise ConfigError("task.prompt_template must contain '{question}'")
        if not 0.0 <= heldout_fraction <= 1.0:
            raise ConfigError(f"task.heldout_fraction must be in [0, 1], got {heldout_fraction}")
        if timeout_s <= 0:
            raise ConfigError(f"task.timeout_s must be > 0, got {timeout_s}")
        try:
            import math_verify  # noqa: F401
        except ImportError as exc:
            raise ConfigError("task 'math_jsonl' needs the math-verify package: pip install math-verify") from exc
        fields = dict(
            question_field=question_field,
            answer_field=answer_field,
            answer_format=answer_format,
            solution_field=solution_field,
            prompt_template=prompt_template,
            limit=limit,
        )
        problems = load_math_problems(path, **fields)
        if heldout_path is not None:
            self._train, self._heldout = problems, load_math_problems(heldout_path, **fields)
        else:
            cut = int(round(heldout_fraction * 10_000))
            held = [stable_hash(p.id) % 10_000 < cut for p in problems]
            self._train = [p for p, h in zip(problems, held) if not h]
            self._heldout = [p for p, h in zip(problems, held) if h]
        self.timeout_s = timeout_s
        warm_up_verifier()

    def train_problems(self, n: int, rng: random.Random) -> list[Problem]:
        """``n`` training rows: a random sample without repeats while ``n`` fits, cycling after."""
        if not self._train:
            raise ConfigError("task: no training problems (heldout_fraction=1 puts every row in the held-out set)")
        out: list[Problem] = []
        while len(out) < n:
            out.extend(rng.sample(self._train, min(n - len(out), len(self._train))))
        return out

    def heldout_problems(self, n: int) -> list[Problem]:
        """The first ``n`` held-out rows in file order."""
        return self._heldout[:n]

    def score(self, problem: Problem, response: str) -> float:
        """1.0 when the last ``\\boxed{}`` of ``response`` verifies against the reference, else 0.0."""
        try:
            answer = extract_boxed(response)
            if answer is None:
                return 0.0
            return 1.0 if verify_math(clean_answer(answer), problem.answer, self.timeout_s) else 0.0
        except Exception:  # noqa: BLE001 - a scorer must never raise
            return 0.0
