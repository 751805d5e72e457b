"""`ztpki factory recall`: revoke the temporary certificates of a production batch."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from ztpki.casystem.client import CAClient, parse_address
from ztpki.cli.common import console, print_json
from ztpki.cli.factory import ca_connection_options, check_name, client_credential, factory
from ztpki.errors import ZtpkiError
from ztpki.factory.recall import RecallResult, recall, recall_targets
from ztpki.store.records import RevocationReason

# The reasons a manufacturer recalls devices for; a hold is the customer's business.
RECALL_REASONS = [
    RevocationReason.KEY_COMPROMISE.value,
    RevocationReason.CESSATION_OF_OPERATION.value,
    RevocationReason.AFFILIATION_CHANGED.value,
    RevocationReason.PRIVILEGE_WITHDRAWN.value,
    RevocationReason.UNSPECIFIED.value,
]


@factory.command("recall")
@ca_connection_options
@click.option("--batch", required=True, help="The production batch to recall.")
@click.option(
    "--devices",
    required=True,
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="The batch directory (`factory manufacture --out`).",
)
@click.option(
    "--reason",
    type=click.Choice(RECALL_REASONS),
    default=RevocationReason.KEY_COMPROMISE.value,
    show_default=True,
    help="RFC 5280 reason put on the CRL.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one object per device as JSON.")
def recall_command(
    ca_address: str,
    client_cred: Path,
    client_passphrase_file: Path | None,
    ca_name: str | None,
    batch: str,
    devices: Path,
    reason: str,
    as_json: bool,
) -> None:
    """Revoke the temporary certificates of every device of a batch at the factory CA.

    Customer nodes that fetch the factory CA's CRL then refuse those devices (403, revoked).
    Give the CA-client credential the batch was made with: only it may revoke them. Safe to
    run again: a certificate revoked before keeps its first revocation."""
    check_name(batch, "--batch")
    targets = recall_targets(devices, batch)
    credential = client_credential(client_cred, client_passphrase_file)

    async def run() -> list[RecallResult]:
        client = CAClient(parse_address(ca_address), credential)
        try:
            return await recall(client, targets, ca=ca_name, reason=RevocationReason(reason))
        finally:
            await client.close()

    results = asyncio.run(run())
    if as_json:
        print_json([_as_json(r) for r in results])
    else:
        for result in results:
            console.print(_line(result), markup=False)
    failed = [r for r in results if not r.revoked]
    if failed:
        raise ZtpkiError(
            f"{len(failed)} of {len(results)} device(s) of batch {batch} were not revoked; "
            "run the recall again (revoking is idempotent)"
        )


def _line(result: RecallResult) -> str:
    target, answer = result.target, result.answer
    if answer is None:
        return f"{target.device_id}  FAILED  {result.error}"
    return (
        f"{target.device_id}  revoked  serial {answer.serial}  {answer.reason.value}  "
        f"at {answer.revoked_at.isoformat()}"
    )


def _as_json(result: RecallResult) -> dict[str, object]:
    answer = result.answer
    return {
        "device_id": result.target.device_id,
        "revoked": answer is not None,
        "serial": answer.serial if answer else result.target.serial,
        "reason": answer.reason.value if answer else None,
        "revoked_at": answer.revoked_at.isoformat() if answer else None,
        "error": result.error,
    }
