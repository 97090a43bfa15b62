"""The error hierarchy. Callers catch the subclass they can act on; the CLI prints the message, no traceback."""

from __future__ import annotations

import re


class TierlakeError(Exception):
    """Root of every error tierlake raises on purpose. Messages name the parameter, the value and the fix."""


class ConfigError(TierlakeError):
    """A configuration value is missing or invalid (the message names file, key, value and fix)."""


class StackError(TierlakeError):
    """A local-stack service failed to start, stop or become healthy (the message names the log to read)."""


class StorageError(TierlakeError):
    """An object-store operation failed."""


class NotFound(StorageError):
    """An object, table or file does not exist."""


class CommitConflict(TierlakeError):
    """A Delta commit lost a race or a second writer tried to claim a table."""


class DataLoss(TierlakeError):
    """A source no longer holds records that the lake has read or has yet to read (the message says which)."""


class IngestFailed(TierlakeError):
    """An entity's ingestion stopped on a batch it could not commit (``report``: what each entity did)."""

    def __init__(self, message: str, *, report: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.report = report or {}


class SchemaMismatch(TierlakeError):
    """A record or table does not match the declared schema."""


class CacheFull(StorageError):
    """The edge cache cannot admit an entry within its byte budget."""


class TapeError(TierlakeError):
    """A tape library, cartridge or LTFS volume operation failed."""


class RetentionViolation(TierlakeError):
    """An operation would delete data still under retention or legal hold."""


class DependencyMissing(TierlakeError):
    """A tool or optional package is not installed (the message says how to install it)."""


_WRAPPERS = ("An error occurred while calling", "An exception was raised by the Python Proxy")


def first_line(exc: BaseException | None, limit: int = 400) -> str:
    """The first line of an exception's message, at most ``limit`` characters: some (Spark's streaming failures)
    carry a whole query plan.

    Py4J wraps a JVM error as "An error occurred while calling X." and a failed ``foreachBatch`` as "An exception
    was raised by the Python Proxy. ... Traceback"; their first line says nothing, so the JVM cause (the first line
    that starts with ": ") or else the last ``SomethingError: ...`` line of the traceback is taken instead.
    """
    lines = str(exc).strip().splitlines() if exc is not None else []
    if lines and lines[0].startswith(_WRAPPERS):
        causes = [line[2:] for line in lines if line.startswith(": ")]
        raised = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Loss|Conflict): ", line)]
        inner = causes[:1] or raised[-1:]
        lines = inner + lines[1:] if inner else lines
    line = lines[0] if lines else ""
    more = len(lines) > 1 or len(line) > limit
    return line[:limit] + (" ..." if more else "")
