"""`lfmq bench`: llama-bench's measurements through lfmq's runtime, with reports and comparisons. The command only
parses flags; measuring, writing and comparing reports belong to lfmq/bench/."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lfmq.cli.app import app
from lfmq.cli.options import DeviceUri, Force, Json, Lora


@app.command()
def bench(
    models: Annotated[Optional[list[Path]], typer.Argument(help="GGUF files to measure.", show_default=False)] = None,
    profile: Annotated[Optional[str], typer.Option(help="Device profile for knobs and predictions (default: host).")] = None,
    n_prompt: Annotated[int, typer.Option("-p", "--n-prompt", help="Prompt tokens (pp test; 0 to skip).")] = 512,
    n_gen: Annotated[int, typer.Option("-n", "--n-gen", help="Generated tokens (tg test; 0 to skip).")] = 128,
    reps: Annotated[int, typer.Option("-r", "--reps", help="Repetitions per test.")] = 5,
    threads: Annotated[Optional[list[int]], typer.Option("-t", "--threads", min=1, help="CPU threads; repeat for a "
                                                         "sweep (-t 1 -t 4). Default: the profile's.")] = None,
    depth: Annotated[int, typer.Option(help="Tokens already in the context before each test.")] = 0,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Also write the results as JSON to FILE.")] = None,
    report: Annotated[Optional[Path], typer.Option(help="Write report.json, report.md and report.html to DIR.")] = None,
    compare: Annotated[Optional[tuple[Path, Path]], typer.Option(help="Compare two report JSON files (B / A).")] = None,
    device: DeviceUri = None,
    lora: Lora = None,
    force: Force = False,
    json: Json = False,
) -> None:
    """Measure prompt processing, generation, time to first token and peak memory, like llama-bench."""
    from lfmq import ui
    from lfmq.bench.result import compare as compare_reports
    from lfmq.bench.run import bench as run_bench
    from lfmq.errors import UsageError
    from lfmq.runtime.model import lora_settings

    if compare:
        rows = compare_reports(*compare)
        ui.print_json(rows) if json else ui.show_compare(rows)
        return
    if not models:
        raise UsageError("give one or more GGUF files to measure (or --compare A.json B.json)")
    with ui.progress_bar("bench") as progress:
        cases = dict(profile=profile, n_prompt=n_prompt, n_gen=n_gen, reps=reps, threads=threads, depth=depth,
                     progress=progress, knobs={"lora": lora_settings(lora)} if lora else None)
        if device and device.strip() != "local":
            from lfmq.bench.device import bench_on_device

            result = bench_on_device(models, device=device, **cases)   # the same cases, run there
        else:
            result = run_bench(models, **cases)
    ui.print_json(result.to_dict()) if json else ui.show_bench(result)  # report.json's shape, from one place
    if output:
        ui.wrote(result.save(output, force))
    if report:
        from lfmq.bench.report import write_report

        for path in write_report(result, report, force):
            ui.wrote(path)
