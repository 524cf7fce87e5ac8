"""The DriftError hierarchy.

Contract: every error the engine raises on purpose is a ``DriftError`` subclass whose message says
*what* was wrong and *why* it was refused.  Each class carries the gRPC status code name it maps to
(``grpc_code``), so the server can turn it into a status and the client can turn the status back into
the same class (``error_class``), and the PostgreSQL SQLSTATE it is reported with (``sqlstate``): the FDW
and the ``drift.*`` functions map errors through this one table (``sqlstate_of``).  An error raised for
bad input is raised before anything is written: the store is unchanged.
"""

from __future__ import annotations


class DriftError(Exception):
    """Base class of every error the engine raises deliberately."""

    grpc_code = "INTERNAL"
    sqlstate = "XX000"  # internal_error

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message} (hint: {self.hint})"


# --- bad input (INVALID_ARGUMENT) -------------------------------------------------------------
class InvalidArgumentError(DriftError):
    """A request argument is malformed or out of range."""

    grpc_code = "INVALID_ARGUMENT"
    sqlstate = "22023"  # invalid_parameter_value


class DimensionMismatchError(InvalidArgumentError):
    """A vector's length differs from the collection's dimension."""

    sqlstate = "22023"  # invalid_parameter_value


class InvalidVectorError(InvalidArgumentError):
    """A vector is empty, non-finite (NaN/Inf) or otherwise unusable."""

    sqlstate = "22023"  # invalid_parameter_value


class InvalidParameterError(InvalidArgumentError):
    """A collection or engine parameter is unknown or outside its range."""

    sqlstate = "22023"  # invalid_parameter_value


class InvalidFilterError(InvalidArgumentError):
    """A search filter is not an equality dict over payload keys."""

    sqlstate = "22023"  # invalid_parameter_value


class InvalidPayloadError(InvalidArgumentError):
    """A payload is not a JSON object (dict with string keys and JSON-serialisable values)."""

    sqlstate = "22023"  # invalid_parameter_value


# --- lookups (NOT_FOUND / ALREADY_EXISTS) -----------------------------------------------------
class CollectionNotFoundError(DriftError):
    grpc_code = "NOT_FOUND"
    sqlstate = "42704"  # undefined_object


class CollectionExistsError(DriftError):
    grpc_code = "ALREADY_EXISTS"
    sqlstate = "42710"  # duplicate_object


class DuplicateIdError(DriftError):
    """An insert named an id that already exists and did not ask for replace."""

    grpc_code = "ALREADY_EXISTS"
    sqlstate = "23505"  # unique_violation


# --- limits (RESOURCE_EXHAUSTED) --------------------------------------------------------------
class RequestTooLargeError(DriftError):
    grpc_code = "RESOURCE_EXHAUSTED"
    sqlstate = "54000"  # program_limit_exceeded


# --- state (FAILED_PRECONDITION / UNAVAILABLE) -------------------------------------------------
class EngineClosedError(DriftError):
    grpc_code = "FAILED_PRECONDITION"
    sqlstate = "55000"  # object_not_in_prerequisite_state


class DirectoryLockedError(DriftError):
    """Another engine process already owns the data directory."""

    grpc_code = "FAILED_PRECONDITION"
    sqlstate = "55000"  # object_not_in_prerequisite_state


class WritesStoppedError(DriftError):
    """A durability failure (fsync error) stopped writes; the engine must be reopened."""

    grpc_code = "UNAVAILABLE"
    sqlstate = "55000"  # object_not_in_prerequisite_state


class EngineUnavailableError(DriftError):
    """The engine server cannot be reached (client side)."""

    grpc_code = "UNAVAILABLE"
    sqlstate = "08006"  # connection_failure


# --- integrity (DATA_LOSS) --------------------------------------------------------------------
class CorruptionError(DriftError):
    """On-disk data failed a checksum or a structural check; names the file and where."""

    grpc_code = "DATA_LOSS"
    sqlstate = "XX001"  # data_corrupted


# --- transport-level (client side) ------------------------------------------------------------
class AuthenticationError(DriftError):
    grpc_code = "UNAUTHENTICATED"
    sqlstate = "28000"  # invalid_authorization_specification


class PermissionDeniedError(DriftError):
    grpc_code = "PERMISSION_DENIED"
    sqlstate = "42501"  # insufficient_privilege


class DeadlineExceededError(DriftError):
    grpc_code = "DEADLINE_EXCEEDED"
    sqlstate = "57014"  # query_canceled


class CancelledError(DriftError):
    grpc_code = "CANCELLED"
    sqlstate = "57014"  # query_canceled


class ConflictError(DriftError):
    """A transaction's commit found that another write changed a row it read (write-write conflict), or
    that a row it writes is held by another prepared transaction; nothing of the transaction was written."""

    grpc_code = "ABORTED"
    sqlstate = "40001"  # serialization_failure


class TransactionNotFoundError(DriftError):
    """The transaction id is unknown to the engine: never staged, already committed or aborted, or dropped
    (abort, idle timeout, engine restart)."""

    grpc_code = "FAILED_PRECONDITION"
    sqlstate = "40000"  # transaction_rollback


ALL_ERRORS: tuple[type[DriftError], ...] = (
    DriftError,
    InvalidArgumentError,
    DimensionMismatchError,
    InvalidVectorError,
    InvalidParameterError,
    InvalidFilterError,
    InvalidPayloadError,
    CollectionNotFoundError,
    CollectionExistsError,
    DuplicateIdError,
    RequestTooLargeError,
    EngineClosedError,
    DirectoryLockedError,
    WritesStoppedError,
    EngineUnavailableError,
    CorruptionError,
    AuthenticationError,
    PermissionDeniedError,
    DeadlineExceededError,
    CancelledError,
    ConflictError,
    TransactionNotFoundError,
)

_BY_NAME = {cls.__name__: cls for cls in ALL_ERRORS}


def sqlstate_of(exc: BaseException) -> str:
    """The SQLSTATE to report ``exc`` with in PostgreSQL (XX000 for anything that is not a DriftError)."""
    return exc.sqlstate if isinstance(exc, DriftError) else "XX000"


def error_class(name: str, grpc_code: str | None = None) -> type[DriftError]:
    """The DriftError subclass called ``name``; falls back to the base class of ``grpc_code``."""
    cls = _BY_NAME.get(name)
    if cls is not None:
        return cls
    for candidate in ALL_ERRORS:
        if candidate.grpc_code == grpc_code and candidate.__bases__[0] is DriftError:
            return candidate
    return DriftError
