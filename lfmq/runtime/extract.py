"""Schema-constrained extraction: the JSON schema becomes a llama.cpp grammar (through the binding's converter), so
every finished output parses; each is then validated against the schema with jsonschema. Keywords the grammar
cannot enforce (uniqueItems, multipleOf, a number's fraction beyond its bounds, ...) are listed up front, and an
output that breaks one is an item error. Integer bounds are enforced exactly (lfmq/llama/grammar.py)."""

from __future__ import annotations

import json
import re
import sys
import time
import warnings
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TextIO

from lfmq.atomic import atomic_path, check_target
from lfmq.errors import (ContextOverflowError, ExtractionFailed, LfmqError, LfmqWarning, LlamaError, SchemaError,
                         UsageError)
from lfmq.llama.binding import json_schema_grammar
from lfmq.llama.grammar import exact_range
from lfmq.progress import Progress
from lfmq.runtime.generate import stream_generate
from lfmq.runtime.model import Model, load

SYSTEM = ("Extract the information in the user's text as JSON that follows this JSON schema:\n{schema}\n"
          "Answer with the JSON only.")
RANGE_KEYWORDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
UNENFORCED = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minProperties",
              "maxProperties", "uniqueItems", "not", "if", "then", "else", "dependentRequired", "dependentSchemas",
              "contains", "minContains", "maxContains", "patternProperties", "propertyNames", "oneOf",
              "unevaluatedProperties", "unevaluatedItems")
GRAMMAR_FORMATS = ("date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5")
SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")
SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
SUBSCHEMAS = ("items", "additionalProperties", "not", "if", "then", "else", "contains")
# JSON strings may not hold raw control characters; the binding's converter lets them through
CHAR_RULE = re.compile(r'^char ::= \[\^"\\\\\]', re.M)
STRICT_CHAR = r'char ::= [^"\\\x7F\x00-\x1F]'


def fix_char_rule(grammar: str) -> str:
    """No raw control characters in strings, and exponents of at most two digits (1e999999 would be infinity)."""
    grammar = CHAR_RULE.sub(lambda _: STRICT_CHAR, grammar)
    return grammar.replace('([eE] [-+]? integral-part)?', '([eE] [-+]? [0-9] [0-9]?)?')


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text} is out of range")
    return value


@dataclass(frozen=True)
class Schema:
    """A checked JSON schema with its grammar."""

    schema: dict[str, Any]
    grammar: str
    origin: str
    unenforced: tuple[str, ...]   # keywords present that decoding cannot enforce (validation still checks them)


def _subschemas(node: Mapping[str, Any]) -> Iterator[Any]:
    for key in SUBSCHEMA_MAPS:
        if isinstance(node.get(key), Mapping):
            yield from node[key].values()
    for key in SUBSCHEMA_LISTS:
        if isinstance(node.get(key), list):
            yield from node[key]
    for key in SUBSCHEMAS:
        value = node.get(key)
        yield from value if isinstance(value, list) else [value]


def _unenforced(node: Any, found: set[str]) -> set[str]:
    if isinstance(node, Mapping):
        exact = RANGE_KEYWORDS if exact_range(node) else ()  # the grammar spells integer ranges out
        found.update(k for k in UNENFORCED if k in node and k not in exact)
        if isinstance(node.get("format"), str) and node["format"] not in GRAMMAR_FORMATS:
            found.add(f"format: {node['format']}")
        for sub in _subschemas(node):
            _unenforced(sub, found)
    return found


def _read_schema(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SchemaError(f"cannot read schema {path}: {getattr(e, 'strerror', None) or e}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise SchemaError(f"schema {path} is not JSON (line {e.lineno} column {e.colno}: {e.msg})") from None


def load_schema(schema: str | Path | Mapping[str, Any]) -> Schema:
    """Read (if a path), check against the JSON Schema meta-schema, and convert to a grammar."""
    import jsonschema

    origin = "schema" if isinstance(schema, Mapping) else str(schema)
    value = dict(schema) if isinstance(schema, Mapping) else _read_schema(Path(schema))
    if not isinstance(value, dict):
        raise SchemaError(f"{origin}: a schema must be a JSON object, not {type(value).__name__}")
    try:
        jsonschema.validators.validator_for(value).check_schema(value)
    except jsonschema.SchemaError as e:
        where = "/".join(str(p) for p in e.path)
        raise SchemaError(f"{origin} is not a valid JSON Schema{f' at {where}' if where else ''}: {e.message}") from None
    try:
        grammar = fix_char_rule(json_schema_grammar(value, origin))
    except LfmqError:
        raise
    except Exception as e:  # the converter asserts, raises KeyError, ValueError ... on what it cannot express
        raise SchemaError(f"{origin}: lfmq cannot turn this schema into a grammar ({type(e).__name__}: {e})") from None
    return Schema(value, grammar, origin, tuple(sorted(_unenforced(value, set()))))


@dataclass(frozen=True)
class Extraction:
    """One input's result: data that validates against the schema, or the reason there is none."""

    source: str
    data: Any = None
    error: str | None = None
    tokens: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json_line(self) -> str:
        body = {"source": self.source, "data": self.data} if self.ok else {"source": self.source, "error": self.error}
        return json.dumps(body, ensure_ascii=False, allow_nan=False)


def _check(text: str, schema: Schema, finish: str, max_tokens: int | None) -> tuple[Any, str | None]:
    import jsonschema

    if finish != "stop":
        return None, (f"the model did not finish the JSON ({finish}, max_tokens={max_tokens}): raise max_tokens "
                      "or bound the schema (maxLength, maxItems)")
    try:
        data = json.loads(text, parse_float=_finite)
    except json.JSONDecodeError as e:
        return None, f"output is not JSON ({e.msg} at column {e.colno})"
    except ValueError as e:
        return None, f"output is not usable JSON ({e})"
    error = jsonschema.exceptions.best_match(jsonschema.validators.validator_for(schema.schema)(schema.schema)
                                             .iter_errors(data))
    if error is not None:
        return None, f"output breaks the schema at {error.json_path}: {error.message}"
    return data, None


class _Prompter:
    """Prompt tokens for each input; the system part (schema and instruction) is shared, so it is snapshotted."""

    def __init__(self, model: Model, schema: Schema, system: str | None) -> None:
        self.model = model
        content = (system or SYSTEM).replace("{schema}", json.dumps(schema.schema, ensure_ascii=False))
        self.system = {"role": "system", "content": content}
        self.prefix_text = model.render([self.system], add_generation_prompt=False)
        self.prefix = model.tokenize(self.prefix_text)

    def __call__(self, text: str) -> tuple[list[int], int]:
        full = self.model.render([self.system, {"role": "user", "content": text}])
        if full.startswith(self.prefix_text):  # the split falls on <|im_start|>, a control token
            return self.prefix + self.model.tokenize(full[len(self.prefix_text):]), len(self.prefix)
        return self.model.tokenize(full), 0


def _banned(model: Model) -> tuple[int, ...]:
    """Chat and tool markers have no place in JSON; byte pieces of split characters would fool the grammar's counts
    (characters the vocabulary only has as pieces can still be written as \\u escapes)."""
    return model.control_tokens() + model.split_utf8_tokens()


def _one(model: Model, prompter: _Prompter, source: str, text: str, schema: Schema, max_tokens: int | None,
         overrides: dict[str, Any]) -> Extraction:
    started = time.perf_counter()
    tokens, shared = prompter(text)
    out: list[int] = []
    finish = "stop"
    try:
        for chunk in stream_generate(model, tokens, grammar=schema.grammar, ban_tokens=_banned(model),
                                     max_tokens=max_tokens, snapshot_at=shared, **overrides):
            out.extend(chunk.tokens)
            finish = chunk.stats.finish_reason if chunk.stats else finish
    except ContextOverflowError as e:
        return Extraction(source, error=str(e), seconds=time.perf_counter() - started)
    data, error = _check(model.detokenize(out), schema, finish, max_tokens)
    return Extraction(source, data, error, len(out), time.perf_counter() - started)


def extract(model: Model, text: str, schema: Schema | str | Path | Mapping[str, Any], *, source: str = "<text>",
            system: str | None = None, max_tokens: int | None = 1024, **overrides: Any) -> Extraction:
    """Extract JSON that validates against `schema` from one text."""
    spec = schema if isinstance(schema, Schema) else load_schema(schema)
    return _one(model, _Prompter(model, spec, system), source, text, spec, max_tokens, overrides)


@dataclass(frozen=True)
class Input:
    """One item of a batch: its text, or why it could not be read."""

    source: str
    text: str | None
    error: str | None = None


def read_inputs(paths: Sequence[str | Path], *, lines: bool = False, stdin: TextIO | None = None) -> list[Input]:
    """Inputs from files ("-" is stdin); with lines=True each non-blank line is its own input (source file:N)."""
    items: list[Input] = []
    for p in paths:
        source = "<stdin>" if str(p) == "-" else str(p)
        try:
            text = (stdin or sys.stdin).read() if str(p) == "-" else Path(p).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            items.append(Input(source, None, f"{source} is not UTF-8 text"))
            continue
        except OSError as e:
            items.append(Input(source, None, f"cannot read {source}: {e.strerror or e}"))
            continue
        if lines:
            items += [Input(f"{source}:{i}", line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
        else:
            items.append(Input(source, text))
    return items


def check_parallel(parallel: int) -> int:
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise UsageError(f"parallel must be a whole number of at least 1, not {parallel!r}")
    return parallel


def extract_many(model: Model, inputs: Iterable[Input | tuple[str, str]], schema: Schema | str | Path | Mapping[str, Any],
                 *, system: str | None = None, max_tokens: int | None = 1024, parallel: int = 1,
                 **overrides: Any) -> Iterator[Extraction]:
    """Extract from each input in turn; a failed item yields an Extraction with its error and the batch goes on.

    parallel=N decodes N inputs at once as N sequences of the model's context (re-created to hold them: N times the
    KV cells), each under its own grammar; results still come in the inputs' order. If llama.cpp cannot hold N
    sequences of the model, an LfmqWarning says why and the inputs go one at a time."""
    check_parallel(parallel)
    spec = schema if isinstance(schema, Schema) else load_schema(schema)
    prompter = _Prompter(model, spec, system)
    if parallel > 1:
        try:
            model.hold_sequences(parallel)
        except LlamaError as e:
            warnings.warn(f"{e}: extracting one input at a time", LfmqWarning, stacklevel=2)
        else:
            yield from _extract_parallel(model, prompter, inputs, spec, parallel, max_tokens, overrides)
            return
    for item in inputs:
        item = item if isinstance(item, Input) else Input(item[0], item[1])
        if item.text is None:
            yield Extraction(item.source, error=item.error or "unreadable input")
        else:
            yield _one(model, prompter, item.source, item.text, spec, max_tokens, overrides)


def _extract_parallel(model: Model, prompter: _Prompter, inputs: Iterable[Input | tuple[str, str]], schema: Schema,
                      parallel: int, max_tokens: int | None, overrides: dict[str, Any]) -> Iterator[Extraction]:
    """extract_many's batched path: unreadable inputs keep their place in the output order."""
    from lfmq.runtime.batch import Job, generate_many
    from lfmq.runtime.generate import resolve_sampling

    if max_tokens is not None and max_tokens < 1:
        raise UsageError(f"max_tokens must be at least 1, not {max_tokens}")
    sampling, ban = resolve_sampling(None, **overrides), _banned(model)
    order: deque[Extraction | str] = deque()  # a finished error, or the source of the next job

    def jobs() -> Iterator[Job]:
        for item in inputs:
            item = item if isinstance(item, Input) else Input(item[0], item[1])
            if item.text is None:
                order.append(Extraction(item.source, error=item.error or "unreadable input"))
                continue
            order.append(item.source)
            yield Job(tuple(prompter(item.text)[0]), sampling, schema.grammar, ban, max_tokens)

    for done in generate_many(model, jobs(), parallel, prefix=prompter.prefix):
        while isinstance(order[0], Extraction):
            yield order.popleft()  # type: ignore[misc]
        source = str(order.popleft())
        if done.finish == "overflow":
            yield Extraction(source, error=done.error, seconds=done.seconds)
            continue
        data, error = _check(model.detokenize(done.tokens), schema, done.finish, max_tokens)
        yield Extraction(source, data, error, len(done.tokens), done.seconds)
    while order:
        yield order.popleft()  # type: ignore[misc]


@dataclass(frozen=True)
class ExtractSummary:
    """How a batch went, and where its lines are."""

    total: int
    ok: int
    failed: int
    output: str

    def check(self) -> ExtractSummary:
        """Raise ExtractionFailed if any input failed (their lines say why); else return self."""
        if self.failed:
            raise ExtractionFailed(f"{self.failed} of {self.total} inputs failed: the 'error' field of their lines "
                                   "says why")
        return self


class ExtractionInterrupted(KeyboardInterrupt):
    """Ctrl-C during a batch: the lines of the inputs finished so far are kept, each one whole."""

    def __init__(self, done: int, total: int, output: str) -> None:
        super().__init__(f"interrupted after {done} of {total} inputs: their lines are in {output}")
        self.done, self.total, self.output = done, total, output


def _write_lines(model: Model, items: Sequence[Input], schema: Schema, out: TextIO, name: str,
                 progress: Progress | None, kwargs: dict[str, Any]) -> ExtractSummary:
    """extract_many, one JSON line per input, flushed at once (an interrupt loses no finished line)."""
    ok = done = 0
    try:
        for result in extract_many(model, items, schema, **kwargs):
            out.write(result.to_json_line() + "\n")
            out.flush()
            done += 1
            ok += result.ok
            if progress:
                progress("inputs", done, len(items))
    except KeyboardInterrupt:
        raise ExtractionInterrupted(done, len(items), name) from None
    return ExtractSummary(len(items), ok, done - ok, name)


def extract_files(model: Model | str | Path | Callable[[], Model], inputs: Sequence[str | Path] | None,
                  schema: Schema | str | Path | Mapping[str, Any], output: str | Path | None = None, *,
                  lines: bool = False, force: bool = False, system: str | None = None,
                  max_tokens: int | None = 1024, progress: Progress | None = None,
                  stdin: TextIO | None = None, stdout: TextIO | None = None, **overrides: Any) -> ExtractSummary:
    """Extract from each input file ("-" or none: stdin; lines=True: each non-blank line is an input) and write one
    JSON line per input to `output` (under a temporary name, renamed at the end) or, when output is None, to stdout.

    The schema, the output and the inputs are checked before the model is loaded: `model` may be a GGUF path or a
    function that opens one (a Model passed in stays open). Ctrl-C raises ExtractionInterrupted, a KeyboardInterrupt
    that says how many inputs finished; their lines are kept in `output`. Failed items are lines with an error, not
    exceptions: ExtractSummary.check() raises ExtractionFailed for them."""
    check_parallel(overrides.get("parallel", 1))
    spec = schema if isinstance(schema, Schema) else load_schema(schema)
    if spec.unenforced:
        warnings.warn(f"decoding cannot enforce {', '.join(spec.unenforced)}: outputs that break them become item "
                      "errors", LfmqWarning, stacklevel=2)
    target = None if output is None else Path(output)
    if target is not None:
        check_target(target, force)
    stdin = stdin or sys.stdin
    if not inputs and stdin.isatty():
        raise UsageError("no input: give text files, or pipe text into stdin")
    items = read_inputs(inputs or ["-"], lines=lines, stdin=stdin)
    m = model if isinstance(model, Model) else model() if callable(model) else load(model)
    kwargs = dict(system=system, max_tokens=max_tokens, **overrides)
    try:
        if target is None:
            return _write_lines(m, items, spec, stdout or sys.stdout, "<stdout>", progress, kwargs)
        stopped = None
        with atomic_path(target, force) as tmp, open(tmp, "w", encoding="utf-8") as f:
            try:
                summary = _write_lines(m, items, spec, f, str(target), progress, kwargs)
            except ExtractionInterrupted as e:  # keep the finished lines: let the file be renamed, then re-raise
                stopped = e
        if stopped is not None:
            raise stopped
        return summary
    finally:
        if m is not model:
            m.close()
