"""Bench reports on disk: `report.json` (`BenchReport.to_dict()`, as `lfmq bench --json` prints it), `report.md`, and
`report.html`, one self-contained page (lfmq.bench.html). Both documents render from the BenchReport alone, through
the sections of lfmq.bench.sections."""

from __future__ import annotations

import re
from pathlib import Path

from lfmq.atomic import atomic_path, check_target
from lfmq.bench.html import render_html
from lfmq.bench.result import BenchReport
from lfmq.bench.sections import NUMERIC, Pairs, Table, sections, title
from lfmq.errors import OutputExistsError

REPORT_FILES = ("report.json", "report.md", "report.html")


def write_report(report: BenchReport, folder: str | Path, force: bool = False) -> list[Path]:
    """Write report.json, report.md and report.html into `folder`; existing report files need force."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputExistsError(f"{folder} is a file: give a folder for the report")
    targets = [folder / name for name in REPORT_FILES]
    for target in targets:  # refuse before writing anything, so a refusal leaves the folder as it was
        check_target(target, force)
    contents = [report.to_json(), render_markdown(report), render_html(report)]
    for target, content in zip(targets, contents):
        with atomic_path(target, force) as tmp:
            tmp.write_text(content, encoding="utf-8")
    return targets


def render_markdown(report: BenchReport) -> str:
    heading, subtitle = title(report)
    out = [f"# {_md(heading)}", "", _md(subtitle)]
    for s in sections(report):
        out += ["", "## " + _md(s.title)]
        for block in s.blocks:
            out += ["", _md_block(block)]
    return "\n".join(out) + "\n"


def _md(text: str) -> str:
    return re.sub(r"([\\`*|<>\[\]])", r"\\\1", str(text))


def _md_block(block: str | Table | Pairs) -> str:
    if isinstance(block, Pairs):
        return "\n".join(f"- **{_md(k)}**: {_md(v)}" for k, v in block.items)
    if isinstance(block, str):
        return _md(block)
    right = [all(NUMERIC.fullmatch(r[i]) for r in block.rows) for i in range(len(block.head))]
    lines = ["| " + " | ".join(_md(h) for h in block.head) + " |",
             "| " + " | ".join("---:" if r else "---" for r in right) + " |"]
    return "\n".join(lines + ["| " + " | ".join(_md(c) for c in row) + " |" for row in block.rows])
