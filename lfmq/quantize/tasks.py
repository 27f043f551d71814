"""Task agreement: does a quantized model still call the tools and fill the schemas the way its reference does?

A task file holds one JSON case per line: `messages` (the conversation up to the answer), then either `tools` and
`expected` calls (`[{"name": ..., "arguments": {...}}]`, `[]` for no call) or `schema` and the `expected` object.
Each model answers every case through lfmq's runtime, greedily and with a fixed seed: tool cases with `chat` (tool
choice auto, so a malformed call counts), extraction cases with `extract` (schema grammar). A model is scored against
the expected answers (exact calls; schema validity and field-level agreement) and against the reference's own
answers (agreement, and the cases whose correctness flipped)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from lfmq.errors import InputError
from lfmq.progress import Progress

# greedy and deterministic; no repeat penalty (a call repeats its argument names and quotes by design)
GREEDY = {"temperature": 0.0, "repeat_penalty": 1.0, "seed": 0}
MAX_TOKENS = 256
TASK_N_CTX = 2048


@dataclass(frozen=True)
class TaskCase:
    """One case of a task file."""

    line: int
    messages: tuple[Mapping[str, Any], ...]
    tools: tuple[Mapping[str, Any], ...] | None
    schema: Mapping[str, Any] | None
    expected: Any

    @property
    def kind(self) -> str:
        return "extract" if self.schema is not None else "calls"


@dataclass(frozen=True)
class TaskAnswer:
    """What a model answered to one case, normalized for comparison: the calls (or the object), and whether the
    answer was well-formed (calls parsed without error; extraction valid against the schema)."""

    value: Any
    well_formed: bool
    text: str


@dataclass(frozen=True)
class TaskScore:
    """One model's task results; the agreement fields compare with the reference's answers (None for the reference)."""

    cases: int
    correct: float                     # share of all cases answered exactly as expected
    call_cases: int
    call_exact: float                  # tool cases: calls equal to the expected ones (names and arguments)
    call_well_formed: float            # tool cases: a reply whose call block parsed
    extract_cases: int
    schema_valid: float                # extraction cases: output valid against the schema
    field_agreement: float             # extraction cases: expected fields with the expected value
    agreement: float | None = None     # share of cases answered exactly as the reference answered them
    flips: int | None = None           # cases answered differently from the reference
    lost: int | None = None            # cases the reference got right and this model got wrong
    gained: int | None = None          # and the other way round
    seconds: float = 0.0


def _case(line: int, value: Any, where: str) -> TaskCase:
    if not isinstance(value, dict):
        raise InputError(f"{where}: a task case is a JSON object, not {type(value).__name__}")
    messages, tools, schema = value.get("messages"), value.get("tools"), value.get("schema")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) and "role" in m for m in messages):
        raise InputError(f"{where}: 'messages' must be a non-empty list of {{\"role\", \"content\"}} objects")
    if "expected" not in value:
        raise InputError(f"{where}: the case has no 'expected' answer")
    expected = value["expected"]
    if schema is not None:
        if tools is not None:
            raise InputError(f"{where}: give 'tools' or 'schema', not both")
        if not isinstance(schema, dict) or not isinstance(expected, dict):
            raise InputError(f"{where}: an extraction case needs a 'schema' object and an 'expected' object")
        if not any(m["role"] == "user" for m in messages):
            raise InputError(f"{where}: an extraction case needs a user message (the text to extract from)")
        return TaskCase(line, tuple(messages), None, schema, expected)
    if not isinstance(tools, list) or not tools:
        raise InputError(f"{where}: a case needs 'tools' (a list of function definitions) or a 'schema'")
    if not isinstance(expected, list) or not all(isinstance(c, dict) and isinstance(c.get("name"), str)
                                                 and isinstance(c.get("arguments", {}), dict) for c in expected):
        raise InputError(f"{where}: 'expected' calls must be a list of {{\"name\", \"arguments\"}} objects")
    return TaskCase(line, tuple(messages), tuple(tools), None, expected)


def load_tasks(path: str | Path) -> list[TaskCase]:
    """The cases of a JSONL task file; blank lines are skipped, anything malformed is an InputError naming its line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InputError(f"task file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read task file {path}: {getattr(e, 'strerror', None) or e}") from None
    cases = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path.name}:{i}: not JSON ({e.msg} at column {e.colno})") from None
        cases.append(_case(i, value, f"{path.name}:{i}"))
    if not cases:
        raise InputError(f"task file {path} holds no cases")
    return cases


def normalize(value: Any) -> Any:
    """A value as JSON would compare it: 3.0 == 3, tuples are lists."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {str(k): normalize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [normalize(v) for v in value]
    return value


def calls_key(calls: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """Calls in a comparable form: order does not matter, argument values compare as JSON values."""
    return tuple(sorted(json.dumps([c["name"], normalize(c.get("arguments") or {})], sort_keys=True) for c in calls))


def answer(model: Any, case: TaskCase, max_tokens: int = MAX_TOKENS) -> TaskAnswer:
    """One model's greedy answer to one case."""
    from lfmq.runtime.chat import chat
    from lfmq.runtime.extract import extract

    if case.schema is not None:
        system = next((m["content"] for m in case.messages if m["role"] == "system"), None)
        text = [m for m in case.messages if m["role"] == "user"][-1]["content"]
        got = extract(model, str(text), case.schema, system=system, max_tokens=max_tokens, **GREEDY)
        return TaskAnswer(normalize(got.data) if got.ok else None, got.ok, json.dumps(got.data) if got.ok else got.error or "")
    reply = chat(model, list(case.messages), tools=list(case.tools or ()), max_tokens=max_tokens, **GREEDY)
    calls = [{"name": c.name, "arguments": c.arguments} for c in reply.tool_calls]
    return TaskAnswer(calls_key(calls), reply.tool_error is None, reply.text)


def answer_all(path: str | Path, cases: Sequence[TaskCase], *, threads: int | None = None,
               progress: Progress | None = None) -> tuple[list[TaskAnswer], float]:
    """Load one GGUF and answer every case; (answers, seconds)."""
    from lfmq.runtime.model import load

    started = time.perf_counter()
    answers = []
    with load(path, n_ctx=TASK_N_CTX, threads=threads) as model:
        for i, case in enumerate(cases):
            answers.append(answer(model, case))
            if progress:
                progress("task cases", i + 1, len(cases))
    return answers, time.perf_counter() - started


def _right(case: TaskCase, a: TaskAnswer) -> bool:
    if case.schema is not None:
        return a.well_formed and a.value == normalize(case.expected)
    return a.well_formed and a.value == calls_key(case.expected)


def _share(hits: Sequence[bool]) -> float:
    return sum(hits) / len(hits) if hits else 0.0


def score(cases: Sequence[TaskCase], answers: Sequence[TaskAnswer], reference: Sequence[TaskAnswer] | None = None,
          seconds: float = 0.0) -> TaskScore:
    """A model's TaskScore from its answers (and the reference's, for agreement and flips)."""
    right = [_right(c, a) for c, a in zip(cases, answers)]
    calls = [i for i, c in enumerate(cases) if c.schema is None]
    extracts = [i for i, c in enumerate(cases) if c.schema is not None]
    fields = []
    for i in extracts:
        expected, got = normalize(cases[i].expected), answers[i].value if answers[i].well_formed else None
        fields += [isinstance(got, dict) and k in got and got[k] == v for k, v in expected.items()]
    out = dict(cases=len(cases), correct=_share(right), call_cases=len(calls),
               call_exact=_share([right[i] for i in calls]),
               call_well_formed=_share([answers[i].well_formed and bool(answers[i].value or not cases[i].expected)
                                        for i in calls]),
               extract_cases=len(extracts), schema_valid=_share([answers[i].well_formed for i in extracts]),
               field_agreement=_share(fields), seconds=seconds)
    if reference is not None:
        same = [a.value == r.value and a.well_formed == r.well_formed for a, r in zip(answers, reference)]
        ref_right = [_right(c, r) for c, r in zip(cases, reference)]
        out.update(agreement=_share(same), flips=same.count(False),
                   lost=sum(r and not m for r, m in zip(ref_right, right)),
                   gained=sum(m and not r for r, m in zip(ref_right, right)))
    return TaskScore(**out)


def evaluate_tasks(models: Sequence[str | Path], reference: str | Path, tasks: str | Path | Sequence[TaskCase], *,
                   threads: int | None = None, progress: Progress | None = None) -> list[TaskScore]:
    """TaskScores of the reference (first) and of each model, on the cases of a task file."""
    cases = load_tasks(tasks) if isinstance(tasks, (str, Path)) else list(tasks)
    paths = [reference, *models]
    total = len(cases) * len(paths)
    scores: list[TaskScore] = []
    ref_answers: list[TaskAnswer] | None = None
    for k, path in enumerate(paths):
        step = (lambda what, i, n, k=k: progress(what, k * len(cases) + i, total)) if progress else None
        answers, seconds = answer_all(path, cases, threads=threads, progress=step)
        scores.append(score(cases, answers, ref_answers, seconds))
        if ref_answers is None:
            ref_answers = answers
    return scores
