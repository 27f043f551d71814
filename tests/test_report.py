"""Bench reports: three files; a JSON that round-trips through load_report and compare; markdown rows for every test;
one self-contained HTML page with three SVG plots and escaped text; nothing overwritten without force."""

from __future__ import annotations

import dataclasses
import html
import re
import shutil
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from lfmq.bench.html import render_html
from lfmq.bench.report import REPORT_FILES, render_markdown, write_report
from lfmq.bench.result import BenchReport, CompareRow, Device, compare, load_report
from lfmq.bench.run import bench
from lfmq.devices.profiles import host_profile
from lfmq.errors import InputError, OutputExistsError

ODD = "odd<&>\"name'-Q4_0.gguf"  # a file name that breaks HTML and markdown unless escaped
LOADERS = {"script", "link", "img", "iframe", "object", "embed", "audio", "video", "source", "base"}
VOID = {"meta", "br", "hr", "img", "link", "input", "wbr"}


@pytest.fixture(scope="module")
def report(small_f16: Path, tmp_path_factory: pytest.TempPathFactory) -> BenchReport:
    from lfmq.quantize import quantize

    folder = tmp_path_factory.mktemp("report-models")
    q4, q8 = (r.path for r in quantize(small_f16, "Q4_0,Q8_0", folder))
    odd = folder / ODD
    shutil.copyfile(q4, odd)
    return bench([odd, q8], profile="rpi5", n_prompt=32, n_gen=8, reps=2, threads=[1])


@pytest.fixture(scope="module")
def written(report: BenchReport, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    paths = write_report(report, tmp_path_factory.mktemp("report") / "out")
    return {p.name: p for p in paths}


class Page(HTMLParser):
    """Walks the page: counts tags, checks that every element is closed, keeps the text and what could load."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.open: list[str] = []
        self.counts: dict[str, int] = {}
        self.text: list[str] = []
        self.code: list[str] = []      # attribute values, style and script bodies, comments: where a reference lives
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.counts[tag] = self.counts.get(tag, 0) + 1
        self.code += [v or "" for _, v in attrs]
        if tag not in VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.counts[tag] = self.counts.get(tag, 0) + 1
        self.code += [v or "" for _, v in attrs]

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open.pop() != tag:
            self.errors.append(f"unexpected </{tag}>")

    def handle_data(self, data: str) -> None:
        (self.code if self.open and self.open[-1] in ("style", "script") else self.text).append(data)

    def handle_comment(self, data: str) -> None:
        self.code.append(data)


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def test_three_files_and_nothing_else(written: dict[str, Path]):
    assert sorted(written) == sorted(REPORT_FILES)
    folder = written["report.json"].parent
    assert sorted(p.name for p in folder.iterdir()) == sorted(REPORT_FILES)  # no partial files left behind
    assert all(p.stat().st_size > 0 for p in written.values())


def test_json_round_trips_through_load_and_compare(report: BenchReport, written: dict[str, Path]):
    data = load_report(written["report.json"])
    assert data.tests == report.tests
    assert data == report
    rows = compare(written["report.json"], written["report.json"])
    assert len(rows) == len(report.tests)
    assert {r.model for r in rows} == {Path(t.model_filename).name for t in report.tests}
    assert all(r.ts_ratio == 1.0 and r.rss_ratio == 1.0 for r in rows)


def _table(md: str, heading: str) -> list[list[str]]:
    """The first table after a markdown heading, as rows of cells (header and separator dropped)."""
    section = md.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    return [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines[2:]]


def test_markdown_has_a_results_row_for_every_test(report: BenchReport, written: dict[str, Path]):
    md = written["report.md"].read_text(encoding="utf-8")
    rows = _table(md, "Results")
    assert len(rows) == len(report.tests) == 4
    for t, row in zip(report.tests, rows):
        assert row[0] == t.model_type and row[3] == str(t.n_threads) and row[4] == t.name
        assert row[5] == f"{t.avg_ts:.2f} ± {t.stddev_ts:.2f}"
    assert [r[4] for r in rows] == ["pp32", "tg8", "pp32", "tg8"]
    assert "## Predictions (not measurements)" in md and "## Memory budget" in md
    assert ODD not in md  # escaped: < and > would start HTML in a markdown viewer


def test_markdown_says_what_the_models_are(report: BenchReport, written: dict[str, Path]):
    md = written["report.md"].read_text(encoding="utf-8")
    models = _table(md, "Model files")
    assert [r[4] for r in models] == list(dict.fromkeys(t.model_sha256 for t in report.tests))
    assert all(r[5] == "random (lfmq synthetic)" for r in models)
    assert "2 of 4" in md  # the tiny model's attention layers, read from the file
    assert "measured on this machine" not in _table(md, "Predictions (not measurements)")[0][0]


def test_host_profile_puts_measurements_beside_the_predictions(report: BenchReport, tmp_path: Path):
    (_, md, _) = write_report(dataclasses.replace(report, profile=host_profile(10.0)), tmp_path)
    figures = [r[0] for r in _table(md.read_text(encoding="utf-8"), "Predictions (not measurements)")]
    assert figures.count("measured on this machine") == 2 and figures.count("predicted for rpi5") == 2


def test_html_is_one_self_contained_page_with_three_plots(written: dict[str, Path]):
    text = written["report.html"].read_text(encoding="utf-8")
    page = parse(written["report.html"])
    assert not page.errors and not page.open
    assert page.counts.get("svg") == 3
    assert not LOADERS & set(page.counts)
    assert not [c for c in page.code if "://" in c or c.strip().startswith("//") or "url(" in c or "@import" in c]
    assert not re.search(r"https?://", text)
    ET.fromstring(text.split("\n", 1)[1])  # well-formed as XML too, doctype aside
    for title in ("Results", "Predictions (not measurements)", "Memory budget", "predicted", "published (Cactus int8)"):
        assert title in "".join(page.text)


def test_html_escapes_text(written: dict[str, Path]):
    text = written["report.html"].read_text(encoding="utf-8")
    assert ODD not in text and html.escape(ODD) in text
    assert ODD in "".join(parse(written["report.html"]).text)


def test_existing_files_are_not_overwritten_without_force(report: BenchReport, tmp_path: Path):
    paths = write_report(report, tmp_path)
    paths[1].write_text("mine")
    before = {p: p.read_bytes() for p in paths}
    with pytest.raises(OutputExistsError):
        write_report(report, tmp_path)
    assert {p: p.read_bytes() for p in paths} == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "report.html").write_text("mine")
    with pytest.raises(OutputExistsError):
        write_report(report, other)
    assert sorted(p.name for p in other.iterdir()) == ["report.html"]  # refused before writing anything
    write_report(report, tmp_path, force=True)
    assert paths[1].read_text(encoding="utf-8").startswith("# lfmq bench report")


# ---- the report object: one serialization, renderings from the object alone ----

def test_round_trip_write_load_render_compare(report: BenchReport, written: dict[str, Path], tmp_path: Path):
    """What a reader of report.json gets is the report: it renders the same documents and compares as typed rows."""
    loaded = load_report(written["report.json"])
    assert loaded == report and BenchReport.from_dict(report.to_dict()) == report
    assert render_markdown(loaded) == written["report.md"].read_text(encoding="utf-8")
    assert render_html(loaded) == written["report.html"].read_text(encoding="utf-8")
    for m in loaded.models:  # the files are gone: the report still says what they were
        assert m.n_layer == 4 and m.n_attn == 2 and m.synthetic
    b = tmp_path / "b.json"
    dataclasses.replace(report, tests=[dataclasses.replace(t, avg_ts=t.avg_ts / 2) for t in report.tests]).save(b)
    rows = compare(written["report.json"], b)
    assert all(isinstance(r, CompareRow) for r in rows)
    assert [(r.test, r.threads) for r in rows] == [(t.name, t.n_threads) for t in report.tests]
    assert [r.ts_ratio for r in rows] == pytest.approx([0.5] * len(rows))


def test_report_json_shape(report: BenchReport, written: dict[str, Path]):
    import json

    data = json.loads(written["report.json"].read_text(encoding="utf-8"))
    assert data["format"] == 2
    assert {"lfmq_version", "build", "machine", "profile", "tests", "predictions", "models", "created",
            "device"} <= set(data)
    assert data["profile"]["name"] == "rpi5" and data["profile"]["memory"]["bandwidth_gbs"] > 0
    assert data["device"] == {"kind": "local", "name": "", "features": data["machine"]["features"], "build": {},
                              "emulated": False}
    assert data["predictions"][0]["memory"]["weights_mb"] > 0
    assert [m["layers"] for m in data["models"]] == [["conv", "attention", "conv", "attention"]] * 2
    data["tests"][1]["avg_ts"] = "fast"
    with pytest.raises(InputError, match=re.escape("report.tests[1].avg_ts is not a float")):
        BenchReport.from_dict(data)


@pytest.mark.parametrize("content,needle", [
    ("not json", "is not a bench report (JSON)"),
    ('{"tests": []}', "format 1, this lfmq reads format 2"),
    ('{"format": 2, "tests": []}', "report has no 'lfmq_version'"),
    ('[1, 2]', "not a bench report"),
])
def test_a_report_that_does_not_parse(tmp_path: Path, content: str, needle: str):
    path = tmp_path / "r.json"
    path.write_text(content)
    with pytest.raises(InputError, match=re.escape(needle)):
        load_report(path)


def test_emulated_runs_are_never_shown_as_device_speeds(report: BenchReport, tmp_path: Path):
    emulated = dataclasses.replace(report, device=Device(kind="qemu", name="rpi5", features=["neon"], emulated=True))
    assert load_report(emulated.save(tmp_path / "e.json")) == emulated
    md, page = render_markdown(emulated), render_html(emulated)
    assert "measured on" not in md and "measured on" not in page
    assert "Emulated (qemu), not a speed of rpi5, each case" in md  # the results' note
    assert "emulated (qemu), not a speed of rpi5" in page  # the speed chart's bars
    assert "(emulated: not a device speed)" in md.splitlines()[0]
    assert not any(r[0].startswith("emulated") for r in _table(md, "Predictions (not measurements)"))


def test_html_sha256_fits_its_table(report: BenchReport, written: dict[str, Path]):
    """The sha256 column once pushed the model-files table past the page at 1280 px: 16 hex digits show, all 64 are
    the cell's tooltip (and in report.md and report.json)."""
    text = written["report.html"].read_text(encoding="utf-8")
    for digest in {t.model_sha256 for t in report.tests}:
        assert f'title="{digest}">{digest[:16]}…</td>' in text
        assert f">{digest}<" not in text
    assert text.count('<div class="table"><table>') == text.count("<table>")  # every table scrolls inside the page


def test_speed_chart_names_every_type(small_ladder: dict[str, Path]):
    """llama.cpp describes Q4_K_M and Q5_K_M both as "... - Medium"; the chart names the file types."""
    from lfmq.bench.html import speed_figure

    rep = bench([small_ladder["Q4_K_M"], small_ladder["Q5_K_M"]], profile="rpi5", n_prompt=8, n_gen=2, reps=1,
                threads=[1])
    assert [t.model_type.split(" - ")[-1] for t in rep.tests] == ["Medium"] * 4  # what the chart used to show
    labels = re.findall(r"<title>([^<]*)</title>", speed_figure(rep))
    for expected in ("Q4_K_M pp8", "Q4_K_M tg2", "Q5_K_M pp8", "Q5_K_M tg2"):
        assert expected in labels
