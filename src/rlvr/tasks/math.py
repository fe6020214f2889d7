"""Math answers: extraction (``\\boxed{}``, GSM8K ``####``, last number, regex), verification, and the
``math_jsonl`` task over local files, Hugging Face dataset directories and (on request) hub datasets.

Before math-verify parses them, answers are rewritten where it misreads them
(:func:`normalise_answer`: e-notation, trailing-dot decimals, a letter after a brace group), and
two numbers below 1 in size must also agree relatively (:func:`small_numbers_agree`).

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
import csv
import inspect
import io
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, get_args

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


_LAST_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def extract_last_number(text: str) -> str | None:
    """The last number in ``text``, thousands commas removed: ``"... is $1,234.5."`` -> ``"1234.5"``.

    A ``-`` right after a letter or digit is an operator, not a sign (``3-5`` -> ``5``); digits glued
    to a letter are not a number (``x2``). None when there is no number.
    """
    if not isinstance(text, str):
        return None
    found = _LAST_NUMBER.findall(text)
    return found[-1].replace(",", "") if found else None


AnswerExtract = Literal["boxed", "hash", "last_number", "regex"]
ANSWER_EXTRACTS: tuple[str, ...] = get_args(AnswerExtract)

ANSWER_INSTRUCTIONS: dict[str, str] = {
    "boxed": "put your final answer within \\boxed{}",
    "hash": "write your final answer on the last line after ####",
    "last_number": "end your response with the final answer as a number",
}
"""What a prompt asks for, per extraction mode (``regex`` has none: the user's template says it)."""


def _check_extract(how: str) -> None:
    if how not in ANSWER_EXTRACTS:
        raise ConfigError(f"task.answer_extract must be one of {', '.join(ANSWER_EXTRACTS)}, got '{how}'")


def compile_answer_regex(how: str, pattern: str | None, knob: str = "task.answer_regex") -> re.Pattern[str] | None:
    """The compiled ``answer_regex`` for mode ``how``: required for ``regex``, refused otherwise."""
    if how != "regex":
        if pattern is not None:
            raise ConfigError(f"{knob} is only read with answer extraction 'regex' (the mode is '{how}')")
        return None
    if not pattern:
        raise ConfigError(f"{knob}: answer extraction 'regex' needs a pattern, e.g. 'Answer: (.+)'")
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"{knob}: '{pattern}' is not a valid regular expression ({exc})") from None


def extract_final_answer(text: str, how: AnswerExtract, pattern: re.Pattern[str] | None = None) -> str | None:
    """The final answer of a response, by mode (None when there is none).

    ``boxed``: the last ``\\boxed{}``; ``hash``: after the last ``####`` (GSM8K); ``last_number``:
    the last number; ``regex``: the last match of ``pattern``, its first group if it has one.
    """
    _check_extract(how)
    if not isinstance(text, str):
        return None
    if how == "boxed":
        return extract_boxed(text)
    if how == "hash":
        return extract_hash_answer(text)
    if how == "last_number":
        return extract_last_number(text)
    if pattern is None:
        raise ConfigError("answer extraction 'regex' needs answer_regex")
    match = None
    for match in pattern.finditer(text):
        pass
    if match is None:
        return None
    answer = (match.group(1) if pattern.groups else match.group(0)) or ""
    return answer.strip() or None


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

def small_numbers_agree(gold: list, pred: list, texts: str, rtol: float = 1e-5) -> bool:
    """False when math-verify's match of two numbers below 1 in size is only its rounding.

    math-verify compares floats rounded to 6 decimal places, so any two numbers below 5e-7 are
    equal to it (``2.65e-27`` "is" ``1.325e-27``). Real numbers ``a``, ``b`` with
    ``max(|a|, |b|) < 1`` must also satisfy ``|a - b| <= rtol * max(|a|, |b|)`` (at 0.1 and above,
    the 6-decimal rounding already implies it). Anything else (sets, symbols, complex numbers,
    percentages, which math-verify matches leniently on purpose) is left to math-verify.
    ``gold``/``pred`` are math-verify ``parse`` results. Its source is part of the worker program.
    """
    import sympy

    if "%" in texts or not gold or not pred:
        return True
    first, second = gold[0], pred[0]
    try:
        if not all(isinstance(x, sympy.Expr) and x.is_number for x in (first, second)):
            return True
        a, b = complex(first.evalf(30)), complex(second.evalf(30))
    except Exception:  # noqa: BLE001 - not a plain number
        return True
    if a.imag or b.imag:
        return True
    scale = max(abs(a.real), abs(b.real))
    return scale >= 1.0 or abs(a.real - b.real) <= rtol * scale


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
""" + inspect.getsource(small_numbers_agree) + r"""
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
            ok = ok and small_numbers_agree(gold, pred, request["gold"] + request["pred"])
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


_E_NOTATION = re.compile(r"(?<![\w.\\])(\d+)(?:\.(\d*))?[eE]([-+]?\d{1,3})(?!\w|\.\d)")
_DECIMAL_TIMES_POWER = re.compile(
    r"(?<![\w.\\])(\d+)\.(\d*)\s*\\(?:times|cdot)\s*10\^(?:\{\s*([-+]?\d{1,3})\s*\}|(\d))(?![\d^])"
)
_DOT_BEFORE_OPERATOR = re.compile(r"(?<=\d)\.(?=\s*(?:[-+*/^)\]},;]|\\(?:times|cdot|div|right)(?![A-Za-z])))")
_UNIT_LETTER_AFTER_GROUP = re.compile(r"(?<!\\)\}[ \t]*([cdghlmost])[ \t]*(?=$|[}$]|\\[)\]])")
"""A letter math-verify takes for a unit (the one-letter entries of latex2sympy2_extended's ``units``
list, math_normalization.py) after a closing brace, at the end of an answer (end, ``}``, ``$``)."""
_BINDS_TIGHTER = ("/", "^", "_", "\\div")
"""What may not precede a rewritten number: ``3/4.5e33`` is ``3/(4.5e33)``, ``3/45 \\times 10^{32}`` is not."""


def _scientific(match: re.Match[str], digits: str, fraction: str | None, exponent: str) -> str:
    """``digits.fraction x 10^exponent`` with an integer mantissa (``4.5``, ``33`` -> ``45 \\times 10^{32}``)."""
    if match.string[: match.start()].rstrip().endswith(_BINDS_TIGHTER):
        return match.group(0)
    fraction = fraction or ""
    return f"{int(digits + fraction)} \\times 10^{{{int(exponent) - len(fraction)}}}"


def _closes_power_of_ten(text: str, close: int) -> bool:
    """Whether the ``}`` at ``text[close]`` ends the exponent group of ``10^{...}`` (looks back 64 chars)."""
    depth = 0
    for i in range(close, max(close - 64, -1), -1):
        if text[i] == "}":
            depth += 1
        elif text[i] == "{":
            depth -= 1
            if depth == 0:
                return text[:i].rstrip().endswith("10^")
    return False


def _letter_as_factor(match: re.Match[str]) -> str:
    if _closes_power_of_ten(match.string, match.start()):
        return match.group(0)  # 3 \times 10^{8} m: a quantity and its unit, as math-verify reads 5 m
    return "}{" + match.group(1) + "}"


def normalise_answer(text: str) -> str:
    """``text`` rewritten where math-verify 0.9 would misread it (Minerva writes all of these):

    * e-notation: ``4.5e33`` -> ``45 \\times 10^{32}`` (math-verify reads 4.5 * e * 33, Euler's e);
    * scientific notation gets an integer mantissa, ``8.7 \\times 10^{8}`` -> ``87 \\times 10^{7}``:
      math-verify evaluates the float 8.7 times 10^8 as 869999999.99.. and rejects ``870000000``;
    * a trailing-dot decimal before an operator or a closing bracket: ``-3./2`` -> ``-3/2``,
      ``(3., 2)`` -> ``(3, 2)`` (read as -3 and 2);
    * a letter after a brace group at the end of an answer: ``\\frac{1}{m} t`` -> ``\\frac{1}{m}{t}``
      (its unit stripping drops ``t``, leaving 1/m). Not after ``10^{..}``, nor after a digit
      (``5 m``): there the letter is a unit, as math-verify assumes.

    Numbers after ``/``, ``^``, ``_`` or ``\\div`` are left alone (the rewrite would change what they
    bind to), and so is everything else (prose, ``1.5``, ``x2e3``, ``0.\\overline{3}``).
    """
    text = _E_NOTATION.sub(lambda m: _scientific(m, m[1], m[2], m[3]), text)
    text = _DECIMAL_TIMES_POWER.sub(lambda m: _scientific(m, m[1], m[2], m[3] or m[4]), text)
    text = _DOT_BEFORE_OPERATOR.sub("", text)
    return _UNIT_LETTER_AFTER_GROUP.sub(_letter_as_factor, text)


def as_latex(text: str) -> str:
    """``text`` ready for math-verify: :func:`normalise_answer`, then bare answers are wrapped in
    ``$...$`` while delimited text is kept.

    Delimited means it holds ``\\boxed``, ``\\fbox``, ``\\(``, ``\\[`` or an unescaped ``$``
    (``\\$36`` is a bare answer).
    """
    text = normalise_answer(text.strip())
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
        ok = bool(gold_parsed) and bool(pred_parsed) and bool(verify(gold_parsed, pred_parsed, timeout_seconds=seconds))
        return ok and small_numbers_agree(gold_parsed, pred_parsed, gold + pred)
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


def default_prompt_template(answer_extract: AnswerExtract) -> str:
    """The math prompt asking for the answer where ``answer_extract`` reads it (boxed: the default
    template). ``regex`` has none: its template must say the format (ConfigError)."""
    _check_extract(answer_extract)
    if answer_extract not in ANSWER_INSTRUCTIONS:
        raise ConfigError(
            "task.prompt_template: with answer_extract 'regex' give a prompt_template that tells the model "
            "the answer format the regex reads (or '{question}' when the questions already say it)"
        )
    return "{question}\nPlease reason step by step, and " + ANSWER_INSTRUCTIONS[answer_extract] + "."


AnswerFormat = Literal["plain", "boxed", "gsm8k"]
ANSWER_FORMATS: tuple[str, ...] = get_args(AnswerFormat)


def _check_answer_format(answer_format: str) -> None:
    if answer_format not in ANSWER_FORMATS:
        raise ConfigError(f"task.answer_format must be one of {', '.join(ANSWER_FORMATS)}, got '{answer_format}'")


# --------------------------------------------------------------------------------------------------
# Data: local files, Hugging Face dataset directories, hub names

DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
HUB_PREFIX = "hf:"
"""``hf:<owner>/<name>`` (``hf:<owner>/<name>:<config>``): a Hugging Face hub dataset, read with
``datasets.load_dataset``; it needs a network, or the dataset in the local datasets cache."""

QUESTION_FIELDS = ("problem", "question", "prompt", "input", "messages")
ANSWER_FIELDS = ("answer", "final_answer", "solution", "output", "completion", "messages")
"""Fields tried, in order, when ``question_field`` / ``answer_field`` are not given."""
_WORKED_FIELDS = ("solution", "completion", "messages")
"""Answer fields holding a worked solution: its answer is read from the last ``\\boxed{}``."""


@dataclass
class Records:
    """The rows of a data source: ``name`` prefixes the problem ids (``<name>:<row>``)."""

    name: str
    split: str | None
    """The split read from a dataset with several (then part of ``name``), else None."""
    rows: Iterator[tuple[int, Any]]
    """(line number of a file, or row number from 1; the record)."""


def _iter_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number or row number, record) for a .jsonl, .json (list), .parquet or .csv file."""
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
    if suffix == ".csv":  # every value stays text (an answer "042" is not the number 42)
        reader = csv.DictReader(io.StringIO(decode_utf8(path.read_bytes(), where), newline=""))
        try:
            for record in reader:
                yield reader.line_num, record
        except csv.Error as exc:
            raise ConfigError(f"{where} line {reader.line_num} is not valid CSV: {exc}") from None
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


def _datasets_module(source: str) -> Any:
    """The ``datasets`` package, or a ConfigError saying that reading ``source`` needs it."""
    try:
        import datasets
    except ImportError as exc:
        raise ConfigError(f"task.path: reading '{source}' needs the datasets package: pip install datasets") from exc
    return datasets


def _load_dataset(source: str) -> tuple[str, Any]:
    """(name, Dataset or DatasetDict) of a local dataset directory or an ``hf:`` hub name."""
    datasets = _datasets_module(source)
    if source.startswith(HUB_PREFIX):
        name, _, config = source[len(HUB_PREFIX) :].partition(":")
        if not name:
            raise ConfigError(f"task.path: '{source}' names no dataset (hf:<owner>/<name>[:<config>])")
        try:
            loaded = datasets.load_dataset(name, config or None)
        except Exception as exc:  # noqa: BLE001 - network, authentication and format errors alike
            raise ConfigError(
                f"task.path: cannot load '{name}' from the Hugging Face hub ({type(exc).__name__}: {exc}); without "
                "a network, save it elsewhere with datasets' save_to_disk and set path to that directory"
            ) from None
        return name.rstrip("/").rsplit("/", 1)[-1], loaded
    path = Path(source).expanduser()
    saved = any((path / marker).is_file() for marker in ("dataset_dict.json", "state.json", "dataset_info.json"))
    try:
        loaded = datasets.load_from_disk(str(path)) if saved else datasets.load_dataset(str(path))
    except Exception as exc:  # noqa: BLE001 - datasets raises many kinds
        raise ConfigError(f"task.path: cannot read '{path}' as a local Hugging Face dataset: {exc}") from None
    return path.resolve().name, loaded


def open_records(
    source: str, split: str | None = None, prefer: tuple[str, ...] = ("train",), split_knob: str = "task.split"
) -> Records:
    """The rows of ``source``: a .jsonl/.json/.parquet/.csv file, a local Hugging Face dataset
    directory (``save_to_disk`` output, or a folder of data files read by ``load_dataset``), or
    ``hf:<name>`` from the hub (never needed: nothing else touches the network).

    A dataset with several splits is read at ``split``, by default the first of ``prefer`` it has,
    else its first split; the split is then part of the ids (``<name>:<split>:<row>``).
    """
    if not isinstance(source, str) or not source:
        raise ConfigError(f"task.path must name a file, a dataset directory or hf:<name>, got {source!r}")
    path = Path(source).expanduser()
    if not source.startswith(HUB_PREFIX) and path.is_file():
        if path.suffix.lower() not in DATA_SUFFIXES:
            raise ConfigError(f"task.path: '{source}' must be a {', '.join(DATA_SUFFIXES)} file or a dataset directory")
        if split is not None:
            raise ConfigError(f"{split_knob}: '{source}' is a single file, it has no splits")
        return Records(path.stem, None, _iter_records(path))
    if not source.startswith(HUB_PREFIX) and not path.is_dir():
        raise ConfigError(
            f"task.path: '{source}' is not a file or a directory; a Hugging Face hub dataset is written "
            f"{HUB_PREFIX}<owner>/<name> (read only when you ask for it so)"
        )
    name, loaded = _load_dataset(source)
    if isinstance(loaded, dict):  # a DatasetDict
        splits = list(loaded.keys())
        if not splits:
            raise ConfigError(f"task.path: '{source}' holds no splits")
        chosen = split if split is not None else next((s for s in prefer if s in splits), splits[0])
        if chosen not in splits:
            raise ConfigError(f"{split_knob}: '{chosen}' is not a split of '{source}'; splits: {', '.join(splits)}")
        rows = loaded[chosen]
        return Records(f"{name}:{chosen}", chosen, ((i + 1, row) for i, row in enumerate(rows)))
    if split is not None:
        raise ConfigError(f"{split_knob}: '{source}' is a single dataset, it has no splits")
    return Records(name, None, ((i + 1, row) for i, row in enumerate(loaded)))


def _chat(value: Any) -> list[dict[str, Any]] | None:
    """``value`` as chat messages (a non-empty list of ``{role, content}`` dicts), else None."""
    if not isinstance(value, (list, tuple)) or not value:
        return None
    if all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        return list(value)
    return None


def _content(message: dict[str, Any]) -> str:
    """A message's text; content given as parts (``[{"type": "text", "text": ...}]``) is joined."""
    content = message["content"]
    if isinstance(content, (list, tuple)):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


def chat_turn(value: Any, role: str, last: bool = True) -> str | None:
    """The content of the last (or first) ``role`` message of chat messages ``value``; None if none."""
    messages = _chat(value) or []
    for message in reversed(messages) if last else messages:
        if message.get("role") == role:
            return _content(message)
    return None


def _field_value(value: Any, role: str) -> Any:
    """A field as text to read: chat messages give their last ``role`` message (None without one)."""
    return chat_turn(value, role) if _chat(value) is not None else value


def guess_fields(
    record: Any,
    question_field: str | None = None,
    answer_field: str | None = None,
    answer_format: str | None = None,
    *,
    where: str,
    source: str = "task.path",
    flag: Callable[[str], str] = lambda knob: f"task.{knob}",
) -> dict[str, str]:
    """Field mapping of a math dataset: given values win, missing ones are guessed from ``record``.

    The question is the first of :data:`QUESTION_FIELDS` present (for chat messages: with a user
    message), the answer the first of :data:`ANSWER_FIELDS` (for messages: with an assistant
    message). The answer format is ``gsm8k`` when the answer holds ``####``, ``boxed`` when it holds
    ``\\boxed`` or is a worked solution (``solution``, ``completion``, ``messages``), else ``plain``.
    Shared by the ``math_jsonl`` task and ``rlvr eval``; ``source`` and ``flag`` name the setting
    and the knobs in errors.
    """
    if not isinstance(record, dict):
        raise ConfigError(f"{source}: the rows of {where} are not JSON objects")
    fields = ", ".join(sorted(map(str, record))) or "(none)"

    def present(name: str, role: str) -> bool:
        return _field_value(record.get(name), role) is not None

    if question_field is None:
        question_field = next((f for f in QUESTION_FIELDS if present(f, "user")), None)
        if question_field is None:
            raise ConfigError(f"{source}: no question field in {where} (fields: {fields}); set {flag('question_field')}")
    if answer_field is None:
        # the question's own field is the answer only for chat messages (their assistant message)
        candidates = [f for f in ANSWER_FIELDS if f != question_field or _chat(record.get(f)) is not None]
        answer_field = next((f for f in candidates if present(f, "assistant")), None)
        if answer_field is None:
            raise ConfigError(f"{source}: no answer field in {where} (fields: {fields}); set {flag('answer_field')}")
    if answer_format is None:
        value = _field_value(record.get(answer_field), "assistant")
        text = value if isinstance(value, str) else ""
        if "####" in text:
            answer_format = "gsm8k"
        elif "\\boxed" in text or "\\fbox" in text or answer_field in _WORKED_FIELDS:
            answer_format = "boxed"
        else:
            answer_format = "plain"
    _check_answer_format(answer_format)
    return {"question_field": question_field, "answer_field": answer_field, "answer_format": answer_format}


def _field(record: Any, name: str, knob: str, path: str, number: int, role: str) -> Any:
    """``record[name]`` (the last ``role`` message of chat messages); a ConfigError naming the knob,
    field and line when it is missing or null."""
    if not isinstance(record, dict):
        raise ConfigError(f"task.path: '{path}' line {number} is not a JSON object")
    if name not in record or record[name] is None:
        fields = ", ".join(sorted(map(str, record))) or "(none)"
        raise ConfigError(
            f"task.{knob}: field '{name}' is missing in '{path}' line {number}; fields there: {fields}"
        )
    value = _field_value(record[name], role)
    if value is None:
        raise ConfigError(
            f"task.{knob}: the messages in field '{name}' of '{path}' line {number} have no {role} message"
        )
    return value


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
    split: str | None = None,
    prefer_split: tuple[str, ...] = ("train",),
    split_knob: str = "task.split",
    question_field: str | None = None,
    answer_field: str | None = None,
    answer_format: AnswerFormat | None = None,
    solution_field: str | None = None,
    system_prompt: str | None = None,
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    limit: int | None = None,
) -> list[Problem]:
    """Problems from a data source (see :func:`open_records`); ids are ``<name>:<row index>``.

    Fields not given are guessed from the first row (:func:`guess_fields`). A chat-messages
    question is its last user message, and its (first) system message becomes ``meta["system"]``
    unless ``system_prompt`` is given, which then sets it for every problem; the rollout's chat
    template puts it in a system turn (:func:`rlvr.rollout.hf.format_prompts`).
    """
    records = open_records(path, split, prefer_split, split_knob)
    shown = str(Path(path).expanduser()) if not path.startswith(HUB_PREFIX) else path
    problems: list[Problem] = []
    fields: dict[str, str] | None = None
    for index, (number, record) in enumerate(records.rows):
        if limit is not None and index >= limit:
            break
        if fields is None:
            fields = guess_fields(record, question_field, answer_field, answer_format, where=f"'{shown}'")
        question = str(_field(record, fields["question_field"], "question_field", shown, number, "user"))
        system = system_prompt
        if system is None:
            system = chat_turn(record[fields["question_field"]], "system", last=False)
        raw_answer = _field(record, fields["answer_field"], "answer_field", shown, number, "assistant")
        answer = reference_answer(raw_answer, fields["answer_format"])  # type: ignore[arg-type]
        if answer is None:
            raise ConfigError(
                f"task.answer_format: no {fields['answer_format']} answer in field '{fields['answer_field']}' "
                f"of '{shown}' line {number}"
            )
        solution = None
        if solution_field is not None:
            solution = str(_field(record, solution_field, "solution_field", shown, number, "assistant"))
        meta: dict[str, Any] = {"source": shown, "row": index}
        if records.split is not None:
            meta["split"] = records.split
        if system:
            meta["system"] = system
        problems.append(
            Problem(
                id=f"{records.name}:{index}",
                prompt=prompt_template.replace("{question}", question),
                answer=answer,
                solution=solution,
                meta=meta,
            )
        )
    if not problems:
        raise ConfigError(f"task.path: '{path}' holds no problems")
    return problems


@tasks.register("math_jsonl")
class MathJsonlTask:
    """Math problems from a local file, a Hugging Face dataset directory or ``hf:<name>``, scored by
    math-verify on the answer read with ``answer_extract``.

    Data: ``path`` is a .jsonl/.json/.parquet/.csv file, a dataset directory (``save_to_disk``
    output or a folder of data files; ``split`` picks a split, default ``train``) or ``hf:<name>``
    (hub; needs a network). ``question_field`` / ``answer_field`` / ``answer_format`` are guessed
    from the first row when not given, as by ``rlvr eval``; records may be chat ``messages``
    (question: the last user message; answer: the last assistant message). ``answer_format``:
    ``plain`` (the field is the answer), ``boxed`` (the answer is the last ``\\boxed{}`` of the
    field, e.g. a worked solution) or ``gsm8k`` (after ``####``).

    Prompts: ``prompt_template`` (with ``{question}``) defaults to one asking for the answer where
    ``answer_extract`` reads it: the last ``\\boxed{}`` (``boxed``), after ``####`` (``hash``), the
    last number (``last_number``); ``regex`` (the last match of ``answer_regex``, its first group
    if any) needs a template. ``system_prompt`` is sent as the chat system message of every prompt
    (a row's own system message is used when it is not set).

    Held-out problems: every row of ``heldout_path`` (at ``heldout_split``) when given, the
    ``heldout_split`` of ``path`` when only that is given (then ``path`` trains at ``split``),
    else the rows whose id hash falls in ``heldout_fraction``.
    """

    name = "math_jsonl"

    def __init__(
        self,
        *,
        path: str,
        split: str | None = None,
        question_field: str | None = None,
        answer_field: str | None = None,
        answer_format: AnswerFormat | None = None,
        solution_field: str | None = None,
        system_prompt: str | None = None,
        prompt_template: str | None = None,
        answer_extract: AnswerExtract = "boxed",
        answer_regex: str | None = None,
        heldout_fraction: float = 0.1,
        heldout_path: str | None = None,
        heldout_split: str | None = None,
        limit: int | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        if answer_format is not None:
            _check_answer_format(answer_format)
        _check_extract(answer_extract)
        self.answer_extract = answer_extract
        self.answer_pattern = compile_answer_regex(answer_extract, answer_regex)
        if prompt_template is None:
            prompt_template = default_prompt_template(answer_extract)
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
        fields: dict[str, Any] = dict(
            question_field=question_field,
            answer_field=answer_field,
            answer_format=answer_format,
            solution_field=solution_field,
            system_prompt=system_prompt,
            prompt_template=prompt_template,
            limit=limit,
        )
        problems = load_math_problems(path, split=split, **fields)
        heldout_source = heldout_path if heldout_path is not None else (path if heldout_split is not None else None)
        if heldout_source is not None:
            heldout = load_math_problems(
                heldout_source,
                split=heldout_split,
                prefer_split=("test", "validation"),
                split_knob="task.heldout_split",
                **fields,
            )
            if {p.id for p in problems} & {p.id for p in heldout}:
                raise ConfigError(
                    f"task.heldout_split: the held-out rows of '{heldout_source}' are training rows too; "
                    "choose another split (task.split / task.heldout_split)"
                )
            self._train, self._heldout = problems, heldout
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

    def final_answer(self, response: str) -> str | None:
        """The answer ``score`` verifies: read from ``response`` with ``answer_extract``, stray ``$`` removed."""
        answer = extract_final_answer(response, self.answer_extract, self.answer_pattern)
        return (clean_answer(answer) or None) if answer is not None else None

    def score(self, problem: Problem, response: str) -> float:
        """1.0 when the answer read from ``response`` (:meth:`final_answer`) verifies against the reference."""
        try:
            answer = self.final_answer(response)
            if answer is None:
                return 0.0
            return 1.0 if verify_math(answer, problem.answer, self.timeout_s) else 0.0
        except Exception:  # noqa: BLE001 - a scorer must never raise
            return 0.0
