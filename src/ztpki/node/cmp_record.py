"""The CMP transaction an enrollment runs in, as the enrollment service carries it.

The transaction's row goes into the register in the same commit as the issuance lease
(begin_issuance), and its issued state in the same commit as the certificate
(complete_issuance): a CMP customization commits as often as an EST one. Where an enrollment
takes another way (a redelivery, a refusal before any lease, an answer ``waiting``), the row
is written on its own, once; ``claim`` hands it out exactly once for that.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ztpki.node.register import AsyncRegister
from ztpki.store.cmp_transactions import CmpIssued, CmpTransaction, TransactionIdTaken


class RowState(enum.Enum):
    IDLE = "idle"  # not in the register, nobody writing it
    IN_FLIGHT = "in-flight"  # handed to a register call that may write it
    WRITTEN = "written"


@dataclass
class CmpRecord:
    """One CMP request's transaction row, the nonce its answer carries, implicitConfirm."""

    transaction: CmpTransaction
    response_nonce: bytes
    confirmed: bool = False
    state: RowState = RowState.IDLE
    polled: bool = False  # a pollReq serving the row of a request answered ``waiting``

    def claim(self) -> CmpTransaction | None:
        """The row, for the register call about to run, unless another call has it (None)."""
        if self.state is not RowState.IDLE:
            return None
        self.state = RowState.IN_FLIGHT
        return self.transaction

    def settle(self, written: bool) -> None:
        """The call that claimed the row wrote it, or (a lease not granted) did not."""
        if self.state is RowState.IN_FLIGHT:
            self.state = RowState.WRITTEN if written else RowState.IDLE

    @property
    def written(self) -> bool:
        return self.state is not RowState.IDLE

    @property
    def issued(self) -> CmpIssued:
        return CmpIssued(
            self.transaction.transaction_id,
            self.response_nonce,
            confirmed=self.confirmed,
            unless_waiting=not self.polled,
        )


async def write_row(register: AsyncRegister, record: CmpRecord | None) -> None:
    """Write the row on its own unless it is written (or being written) already;
    TransactionIdTaken when the transactionID was used before."""
    row = None if record is None else record.claim()
    if row is None:
        return
    assert record is not None
    began = await register.begin_cmp_transaction(row)
    record.settle(began)
    if not began:
        raise TransactionIdTaken(row.transaction_id)
