"""Provider wire formats → one `Usage` record. Pure: no I/O, no web framework."""

from fairmeter.usage.model import Usage, UsageReport, UsageStatus

__all__ = ["Usage", "UsageReport", "UsageStatus"]
