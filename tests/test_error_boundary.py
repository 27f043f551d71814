"""The CLI's one error boundary: every LfmqError subclass becomes one line on stderr and the class's exit code, with
no traceback; a quantize failure reaches the user the same way (issue 14: one once arrived as a traceback)."""

from __future__ import annotations

import importlib
import re
import sys
import warnings

import pytest

from conftest import run_cli
from lfmq.errors import DeviceInterrupted, LfmqError, UsageError
from test_defects import _imatrix_for

MESSAGE = "what went wrong [/in brackets]: what to do next"
SYNTH = importlib.import_module("lfmq.convert.synth")  # the module: lfmq.convert.synth the attribute is the function


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


ERRORS = [LfmqError, *_subclasses(LfmqError)]  # a new class joins the table by existing


def test_one_tree_and_its_exit_codes():
    assert {"QuantizeError", "UsageError", "InputError", "BenchError", "DeviceError"} <= {c.__name__ for c in ERRORS}
    for cls in ERRORS:
        assert cls.__module__ == "lfmq.errors", f"{cls.__name__} is declared outside lfmq/errors.py"
        want = 2 if issubclass(cls, UsageError) else 130 if issubclass(cls, DeviceInterrupted) else 1  # Ctrl-C: 130
        assert cls.exit_code == want, cls.__name__


def _main(monkeypatch, capsys, *argv: str) -> tuple[int, str, str]:
    from lfmq.cli import main

    monkeypatch.setattr(sys, "argv", ["lfmq", *argv])
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # main() replaces it for the process
    with pytest.raises(SystemExit) as exit_:
        main()
    captured = capsys.readouterr()
    return exit_.value.code, captured.out, captured.err


@pytest.mark.parametrize("cls", ERRORS, ids=[c.__name__ for c in ERRORS])
def test_every_error_class_is_one_line_and_its_exit_code(cls, monkeypatch, capsys, tmp_path):
    def fail(*args, **kwargs):
        raise cls(MESSAGE)

    monkeypatch.delenv("LFMQ_DEBUG", raising=False)
    monkeypatch.setattr(SYNTH, "synth", fail)
    code, out, err = _main(monkeypatch, capsys, "synth", "tiny", "-o", str(tmp_path / "s"))
    assert (code, out, err) == (cls.exit_code, "", f"error: {MESSAGE}\n")


def test_debug_keeps_the_traceback_and_a_bug_is_not_dressed_up(monkeypatch, capsys, tmp_path):
    from lfmq.cli import main
    from lfmq.errors import QuantizeError

    def fail(*args, **kwargs):
        raise QuantizeError(MESSAGE)

    monkeypatch.setattr(SYNTH, "synth", fail)
    monkeypatch.setattr(sys, "argv", ["lfmq", "synth", "tiny", "-o", str(tmp_path / "s")])
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)
    monkeypatch.setenv("LFMQ_DEBUG", "1")
    with pytest.raises(QuantizeError):
        main()
    monkeypatch.delenv("LFMQ_DEBUG")
    monkeypatch.setattr(SYNTH, "synth", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # not an LfmqError: a bug, which keeps its traceback
        main()


# Real quantize failures through `python -m lfmq`, as a user meets them: before llama.cpp runs, and inside it.

def test_cli_quantize_refuses_an_imatrix_type_without_one(small_f16, tmp_path):
    r = run_cli("quantize", str(small_f16), "-q", "IQ2_XS", "-o", str(tmp_path))
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == ("error: IQ2_XS needs an importance matrix: make one with `lfmq imatrix MODEL.gguf` and pass "
                        "--imatrix\n")
    assert list(tmp_path.iterdir()) == []


def test_cli_quantize_failing_inside_llama_cpp(small_f16, tmp_path):
    """An importance matrix with only the FFN up projections: llama.cpp refuses IQ2_XS for the first weight without
    data, and the user reads which one, on one line, with no file left behind."""
    im = _imatrix_for(small_f16, tmp_path / "im.gguf", only="ffn_up")
    out = tmp_path / "out"
    out.mkdir()
    r = run_cli("quantize", str(small_f16), "-q", "IQ2_XS", "--imatrix", str(im), "-o", str(out))
    assert (r.returncode, r.stdout) == (1, "")
    assert re.fullmatch(r"error: quantizing to IQ2_XS failed: the importance matrix has no data for "
                        r"blk\.\d+\.\w+\.weight, which IQ2_XS needs: recompute it on this model\n", r.stderr), r.stderr
    assert list(out.iterdir()) == []


def test_cli_quantize_with_an_imatrix_of_another_model(small_f16, tiny_f32, tmp_path):
    im = _imatrix_for(tiny_f32, tmp_path / "tiny-im.gguf")
    r = run_cli("quantize", str(small_f16), "-q", "Q4_K_M", "--imatrix", str(im), "-o", str(tmp_path))
    assert (r.returncode, r.stdout) == (1, "")
    assert re.fullmatch(r"error: imatrix tiny-im\.gguf has \d+ values for blk\.\d+\.\w+\.weight, but the "
                        r"model's tensor has \d+ inputs: it was computed for another model\n", r.stderr), r.stderr
