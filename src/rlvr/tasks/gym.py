"""reasoning-gym: 100+ procedural, offline task generators, each with its own scorer.

``reasoning_gym`` is an optional dependency (``pip install reasoning-gym``), imported when the task is
built. Its ``score_answer`` gives partial credit to some wrong answers (e.g. 0.05 on countdown), so
the reward is binarised: 1.0 when the score reaches ``threshold``, else 0.0.

Problems are items ``0 .. size-1`` of one dataset built with ``seed``; ids are
``reasoning_gym:<dataset>:<sha256 of the question>`` so the held-out split (a hash bucket of the id,
as for countdown) separates by content, even when two indices generate the same question.
"""

from __future__ import annotations

import hashlib
import importlib
import random
import re
from typing import Any, Literal, get_args

from rlvr.errors import ConfigError
from rlvr.tasks.base import Problem, draw_train, is_heldout, tasks
from rlvr.tasks.math import ANSWER_EXTRACTS, ANSWER_INSTRUCTIONS, compile_answer_regex, extract_final_answer

Extractor = Literal["boxed", "answer_tag", "first_line", "raw", "hash", "last_number", "regex"]
EXTRACTORS: tuple[str, ...] = get_args(Extractor)
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_INSTRUCTIONS: dict[str, str] = {
    **ANSWER_INSTRUCTIONS,
    "answer_tag": "put your final answer between <answer> and </answer>",
    "first_line": "give your final answer on the first line",
    "raw": "reply with your final answer only",
}
"""What the default prompt asks for, per ``extract`` mode (``regex``: the user's template says it)."""


def _check_extract(how: str) -> None:
    if how not in EXTRACTORS:
        raise ConfigError(f"task.extract must be one of {', '.join(EXTRACTORS)}, got '{how}'")


def default_prompt_template(extract: Extractor) -> str:
    """``{question}`` followed by the instruction matching ``extract`` (ConfigError for ``regex``)."""
    _check_extract(extract)
    if extract not in _INSTRUCTIONS:
        raise ConfigError(
            "task.prompt_template: with extract 'regex' give a prompt_template that tells the model the answer "
            "format the regex reads (or '{question}' when reasoning-gym's question already says it)"
        )
    instruction = _INSTRUCTIONS[extract]
    return "{question}\n" + instruction[0].upper() + instruction[1:] + "."


DEFAULT_PROMPT_TEMPLATE = default_prompt_template("boxed")
"""``{question}`` is replaced by reasoning-gym's question text; other braces are literal."""


def extract_answer(response: str, how: Extractor, pattern: re.Pattern[str] | None = None) -> str | None:
    """The answer part of ``response``: last ``\\boxed{}``, last ``<answer>..</answer>``, first line,
    all of it, or as math_jsonl reads it (``hash``, ``last_number``, ``regex`` with ``pattern``)."""
    _check_extract(how)
    if how in ANSWER_EXTRACTS:
        return extract_final_answer(response, how, pattern)  # type: ignore[arg-type]
    if how == "answer_tag":
        found = _ANSWER_TAG.findall(response)
        return found[-1].strip() if found else None
    if how == "first_line":
        return response.split("\n", 1)[0].strip()
    return response.strip()


def _import_reasoning_gym() -> Any:
    """The ``reasoning_gym`` module, or a ConfigError telling how to install it."""
    try:
        return importlib.import_module("reasoning_gym")
    except ImportError as exc:
        raise ConfigError(
            "task 'reasoning_gym' needs the reasoning-gym package: pip install reasoning-gym "
            "(or pip install 'rlvr[gym]')"
        ) from exc


@tasks.register("reasoning_gym")
class ReasoningGymTask:
    """One reasoning-gym dataset (e.g. ``chain_sum``, ``basic_arithmetic``, ``countdown``).

    ``config`` holds extra keyword arguments of the dataset's config class (e.g. ``{"min_terms": 2}``).
    The answer is taken from the response with ``extract`` (``boxed`` by default; also
    ``answer_tag``, ``first_line``, ``raw``, ``hash``, ``last_number``, ``regex`` with
    ``answer_regex``) and scored with the dataset's ``score_answer``. ``prompt_template`` defaults
    to the question followed by an instruction matching ``extract`` (``regex`` needs one given).
    """

    name = "reasoning_gym"

    def __init__(
        self,
        *,
        dataset: str = "chain_sum",
        size: int = 100_000,
        seed: int = 0,
        threshold: float = 1.0,
        config: dict[str, Any] | None = None,
        prompt_template: str | None = None,
        extract: Extractor = "boxed",
        answer_regex: str | None = None,
    ) -> None:
        _check_extract(extract)
        self.answer_pattern = compile_answer_regex(extract, answer_regex)
        if prompt_template is None:
            prompt_template = default_prompt_template(extract)
        if "{question}" not in prompt_template:
            raise ConfigError("task.prompt_template must contain '{question}'")
        if size < 1:
            raise ConfigError(f"task.size must be >= 1, got {size}")
        rg = _import_reasoning_gym()
        from reasoning_gym.factory import DATASETS

        if dataset not in DATASETS:
            raise ConfigError(f"task.dataset: unknown reasoning-gym dataset '{dataset}'; valid: {', '.join(sorted(DATASETS))}")
        try:
            self.dataset = rg.create_dataset(dataset, size=size, seed=seed, **(config or {}))
        except (TypeError, ValueError, AssertionError) as exc:
            raise ConfigError(f"task.config: reasoning-gym '{dataset}' rejected {config or {}}: {exc}") from exc
        self.dataset_name = dataset
        self.size = size
        self.threshold = threshold
        self.prompt_template = prompt_template
        self.extract = extract

    def _format_solution(self, answer: str) -> str:
        """The reference answer written the way ``extract`` reads it (used by the warm start)."""
        if self.extract == "boxed":
            return f"\\boxed{{{answer}}}"
        if self.extract == "answer_tag":
            return f"<answer>{answer}</answer>"
        if self.extract == "hash":
            return f"#### {answer}"
        return answer

    def _problem(self, index: int) -> Problem:
        """Item ``index`` of the dataset as a Problem (the item itself is regenerated when scoring)."""
        entry = self.dataset[index]
        question = str(entry["question"])
        digest = hashlib.sha256(question.encode("utf-8")).hexdigest()[:16]
        return Problem(
            id=f"reasoning_gym:{self.dataset_name}:{digest}",
            prompt=self.prompt_template.replace("{question}", question),
            answer=str(entry["answer"]),
            solution=self._format_solution(str(entry["answer"])),
            meta={"index": index},
        )

    def train_problems(self, n: int, rng: random.Random) -> list[Problem]:
        """``n`` random items outside the held-out split (repeats are possible)."""
        return draw_train(lambda r: self._problem(r.randrange(self.size)), n, rng, f"reasoning_gym:{self.dataset_name}")

    def heldout_problems(self, n: int) -> list[Problem]:
        """The first ``n`` distinct held-out items in index order."""
        out: list[Problem] = []
        seen: set[str] = set()
        for index in range(self.size):
            if len(out) >= n:
                break
            problem = self._problem(index)
            if problem.id not in seen and is_heldout(problem.id):
                seen.add(problem.id)
                out.append(problem)
        return out

    def score(self, problem: Problem, response: str) -> float:
        """1.0 when the dataset's ``score_answer`` on the extracted answer reaches ``threshold``."""
        try:
            answer = extract_answer(response, self.extract, self.answer_pattern)
            if answer is None:
                return 0.0
            entry = self.dataset[int(problem.meta["index"])]
            value = float(self.dataset.score_answer(answer=answer, entry=entry))
            return 1.0 if value >= self.threshold else 0.0
        except Exception:  # noqa: BLE001 - a scorer must never raise
            return 0.0
