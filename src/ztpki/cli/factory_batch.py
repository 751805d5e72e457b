"""`ztpki factory manufacture`: a whole production batch in parallel, with its manifest."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ztpki.casystem.client import CAClient
from ztpki.cli.common import console, err_console, print_json
from ztpki.cli.factory import (
    ca_options,
    check_name,
    client_credential,
    factory,
    load_signer,
    request_options,
    say,
    signed_manifest,
    trust_bundle,
)
from ztpki.credentials import Credential
from ztpki.errors import ConfigurationError, ZtpkiError
from ztpki.factory.batch import (
    DEFAULT_PATTERN,
    BatchReport,
    DeviceResult,
    Manufacturer,
    Outcome,
    ProductionBatch,
    device_ids,
    select_ids,
)
from ztpki.factory.configuration import CAClientConfig
from ztpki.factory.signer import SIGNER_ENV, write_manifest


def _progress_run(
    run: Callable[[Callable[[DeviceResult], None]], Coroutine[Any, Any, BatchReport]], total: int
) -> BatchReport:
    progress = Progress(
        TextColumn("[bold]manufacturing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    )
    with progress:
        task = progress.add_task("batch", total=total, failed=0)
        failed = 0

        def advance(result: DeviceResult) -> None:
            nonlocal failed
            failed += result.outcome is Outcome.FAILED
            progress.update(task, advance=1, failed=failed)

        return asyncio.run(run(advance))


def _print_summary(report: BatchReport, *, manifest: Path | None, as_json: bool) -> None:
    made, failed = report.of(Outcome.MADE), report.of(Outcome.FAILED)
    skipped = report.of(Outcome.SKIPPED)
    if as_json:
        print_json(
            {
                "made": len(made),
                "failed": len(failed),
                "skipped": len(skipped),
                "elapsed_seconds": round(report.elapsed, 3),
                "devices_per_second": round(report.rate, 1),
                "failures": {r.device_id: r.detail for r in failed},
                "manifest": manifest and str(manifest),
            }
        )
        return
    if manifest is not None:
        say(f"signed manifest: {manifest} (CSV view, not signed: {manifest.with_suffix('.csv')})")
    table = Table("made", "failed", "skipped", "seconds", "devices/s")
    table.add_row(
        str(len(made)),
        str(len(failed)),
        str(len(skipped)),
        f"{report.elapsed:.1f}",
        f"{report.rate:.1f}",
    )
    console.print(table)
    for result in failed[:20]:
        say(f"[red]failed[/] {escape(result.detail)}")
    if len(failed) > 20:
        causes = Counter(r.detail.partition(": ")[2] for r in failed)
        console.print(f"... and {len(failed) - 20} more; most common causes:")
        for cause, n in causes.most_common(3):
            console.print(f"  {n} x {cause}", markup=False)


@factory.command("manufacture")
@ca_options
@request_options
@click.option("--count", type=click.IntRange(min=0), help="How many devices the batch has.")
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Directory that receives one device directory per device (and the manifest).",
)
@click.option(
    "--id-pattern",
    help=f"Device ids, with {{n}} and {{batch}} (default: {DEFAULT_PATTERN}, or DEV-{{n:06d}}).",
)
@click.option("--first", "first_n", type=click.IntRange(min=0), default=1, show_default=True)
@click.option("--concurrency", type=click.IntRange(min=1, max=256), default=16, show_default=True)
@click.option("--only", multiple=True, metavar="ID", help="Make only these devices (retry).")
@click.option(
    "--manifest-signer",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="Manifest signer credential (from `factory signer`): write the signed manifest "
    "(JSON) and its CSV view (not signed) into --out.",
)
@click.option(
    "--signer-passphrase-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help=f"Passphrase of the manifest signer key (default: ${SIGNER_ENV}).",
)
@click.option("--manufacturer", help="Manufacturer name in the manifest (default: signer's O).")
@click.option("--order", help="Customer order the manifest is for.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def manufacture_command(
    ca_address: str,
    client_cred: Path,
    client_passphrase_file: Path | None,
    ca_name: str | None,
    trust: Path | None,
    params: tuple[str, ...],
    model: str | None,
    batch: str | None,
    reissue: bool,
    count: int | None,
    out: Path,
    id_pattern: str | None,
    first_n: int,
    concurrency: int,
    only: tuple[str, ...],
    manifest_signer: Path | None,
    signer_passphrase_file: Path | None,
    manufacturer: str | None,
    order: str | None,
    as_json: bool,
) -> None:
    """Make a whole production batch in parallel (one CA-client for many devices)."""
    check_name(batch, "--batch")
    if count is None and not only:
        raise ConfigurationError("give --count N (or --only ID ... to retry single devices)")
    pattern = id_pattern or (DEFAULT_PATTERN if batch else "DEV-{n:06d}")
    ids = select_ids(device_ids(pattern, count=count or 0, batch=batch, start=first_n), only)
    signer = load_signer(manifest_signer, signer_passphrase_file)
    credential = client_credential(client_cred, client_passphrase_file)
    production = ProductionBatch(
        out=out,
        device_ids=ids,
        ca=CAClientConfig(ca_address, client_cred, ca_name, params),
        trust=trust_bundle(trust),
        model=model,
        batch=batch,
        reissue=reissue,
    )

    async def run(on_result: Callable[[DeviceResult], None] | None) -> BatchReport:
        client = CAClient(production.ca.address, credential, pool_size=concurrency)
        try:
            return await Manufacturer(
                production, client, concurrency=concurrency, on_result=on_result
            ).run()
        finally:
            await client.close()

    # One INFO line per device file write drowns the progress bar; the summary says it all.
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger("ztpki.device.memory").setLevel(logging.WARNING)
    report = asyncio.run(run(None)) if as_json else _progress_run(run, len(ids))
    manifest = None
    if signer is not None:
        manifest = _write_batch_manifest(
            out, signer, batch=batch, order=order, manufacturer=manufacturer
        )
    _print_summary(report, manifest=manifest, as_json=as_json)
    failed = report.of(Outcome.FAILED)
    if failed:
        raise ZtpkiError(
            f"{len(failed)} of {len(ids)} device(s) failed; retry them alone with --only ID "
            f"(e.g. --only {failed[0].device_id})"
        )


def _write_batch_manifest(
    out: Path,
    signer: Credential,
    *,
    batch: str | None,
    order: str | None,
    manufacturer: str | None,
) -> Path:
    manifest, signed = signed_manifest(out, signer, batch, order, manufacturer)
    path = out / (f"manifest-{batch}.json" if batch else "manifest.json")
    write_manifest(path, manifest, signed, csv_path=path.with_suffix(".csv"))
    return path
