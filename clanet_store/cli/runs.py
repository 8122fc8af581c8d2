"""The ``run`` and ``demo`` commands: a declared pipeline, stage by stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from clanet_store.cli.app import emit, format_option, main
from clanet_store.cli.progress import progress_bars
from clanet_store.runs.config import STAGES

stage_choice = click.Choice(STAGES)


def _options(command):
    """Options shared by ``run`` and ``demo``."""
    for option in reversed(
        [
            click.option(
                "--set",
                "overrides",
                multiple=True,
                metavar="STAGE.KEY=VALUE",
                help="override a config value, e.g. --set train.repeats=3 (repeatable)",
            ),
            click.option(
                "--from",
                "start_from",
                type=stage_choice,
                help="re-run this stage and every later one even if up to date",
            ),
            click.option("--until", type=stage_choice, help="stop after this stage"),
            format_option,
        ]
    ):
        command = option(command)
    return command


def _run(
    config_path: Path,
    out: Path,
    store: Path | None,
    export: Path | None,
    overrides: tuple[str, ...],
    start_from: str | None,
    until: str | None,
    fmt: str,
) -> None:
    from clanet_store.runs.config import load_config
    from clanet_store.runs.runner import run_pipeline

    config = load_config(config_path, overrides)
    click.echo(f"pipeline {config.name} ({config.path}) -> {out.resolve()}", err=True)
    with progress_bars("step") as update:
        r = run_pipeline(config, out, store, export, start_from, until, update, _event)
    lines = [_stage_line(s) for s in r.stages]
    chosen = next((s for s in r.stages if s["stage"] == "choose_encoder"), None)
    for choice in chosen["summary"]["choices"] if chosen else []:
        lines.append(f"models of {choice['split']} trained on {choice['reason']}")
    lines.append(f"total {_duration(r.seconds)}; store {r.store}")
    if r.report:
        lines.append(f"report: {r.report}")
    emit(fmt, r.as_dict(), "\n".join(lines))


def _duration(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)} min {rest:04.1f} s" if minutes else f"{seconds:.1f} s"


def _stage_line(item: dict[str, Any]) -> str:
    status = "up to date, skipped" if item["status"] == "up to date" else _duration(item["seconds"])
    return f"[{item['number']}/{item['of']}] {item['stage']:<14} {status}"


def _event(event: dict[str, Any]) -> None:
    """Stage starts and ends (and notes) on stderr as they happen; stdout keeps the result."""
    if event["event"] == "start":
        click.echo(f"[{event['number']}/{event['of']}] {event['stage']} ...", err=True)
    elif event["event"] == "end":
        click.echo(_stage_line(event), err=True)
    else:
        click.echo(f"    {event['text']}", err=True)


@main.command("run")
@click.argument("config", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--export",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="the export to ingest (default: the config's synthetic export)",
)
@click.option(
    "--store",
    type=click.Path(file_okay=False, path_type=Path),
    help="store directory (default: OUT/store)",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="where models, the report and the run state go (default: STORE/runs/NAME)",
)
@_options
def run(
    config: Path,
    export: Path | None,
    store: Path | None,
    out: Path | None,
    overrides: tuple[str, ...],
    start_from: str | None,
    until: str | None,
    fmt: str,
) -> None:
    """Run a declared pipeline (pipelines/*.toml), skipping stages that are up to date."""
    if out is None:
        if store is None:
            raise click.UsageError("give --out or --store")
        out = store / "runs" / config.stem
    _run(config, out, store, export, overrides, start_from, until, fmt)


@main.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default="clanet-demo",
    show_default=True,
    help="where the export, store, models and report go",
)
@click.option(
    "--data",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="a real export to use instead of the synthetic one",
)
@_options
def demo(
    out: Path,
    data: Path | None,
    overrides: tuple[str, ...],
    start_from: str | None,
    until: str | None,
    fmt: str,
) -> None:
    """The whole pipeline (pipelines/demo.toml): synth, ingest, ssl-train, encode, index, train,
    evaluate, search, report."""
    from clanet_store.runs.runner import PIPELINE_DIR

    _run(PIPELINE_DIR / "demo.toml", out, None, data, overrides, start_from, until, fmt)
