"""`ztpki demo`: the main job on embedded defaults (SQLite, loopback)."""

from __future__ import annotations

from pathlib import Path

import click

from ztpki.cli.common import console


@click.command("demo")
@click.option(
    "--workdir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Work directory (default: a new temporary directory, printed).",
)
@click.option("--devices", type=click.IntRange(1, 100_000), default=20, show_default=True)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 1024),
    default=32,
    show_default=True,
    help="Devices customizing at the same instant.",
)
@click.option(
    "--keep-running",
    is_flag=True,
    help="Leave the services and the web console up; print commands to try.",
)
@click.option(
    "--hsm",
    is_flag=True,
    help="Keep the factory's and the customer's CA keys in SoftHSM2 tokens (PKCS#11).",
)
@click.option(
    "--verbose",
    is_flag=True,
    help="Show log lines on the terminal too (always in WORKDIR/logs/).",
)
@click.option("--wide", is_flag=True, help="Identity table with issuers and full fingerprints.")
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the summary as JSON.",
)
def demo(
    workdir: Path | None,
    devices: int,
    concurrency: int,
    keep_running: bool,
    hsm: bool,
    verbose: bool,
    wide: bool,
    json_path: Path | None,
) -> None:
    """Factory CA, customer CA and node as processes; manufacture; plug in; prove."""
    from ztpki.demo.runner import DemoSettings, default_workdir, run_demo

    settings = DemoSettings(
        workdir=(workdir or default_workdir()).resolve(),
        devices=devices,
        concurrency=concurrency,
        keep_running=keep_running,
        hsm=hsm,
        verbose=verbose,
        wide=wide,
    )
    settings.workdir.mkdir(parents=True, exist_ok=True)
    status = run_demo(settings, console=console, json_path=json_path)
    if status:
        raise SystemExit(status)
