"""The ledger's domain: accounts, two-phase transfers, hold outcomes and the books' invariants. Pure."""

from fairmeter.ledger.model import (
    Account,
    HoldRefused,
    Settlement,
    Transfer,
    TransferKind,
    TransferState,
    check_hold,
    settlement_for,
    with_outcomes,
)

__all__ = [
    "Account",
    "HoldRefused",
    "Settlement",
    "Transfer",
    "TransferKind",
    "TransferState",
    "check_hold",
    "settlement_for",
    "with_outcomes",
]
