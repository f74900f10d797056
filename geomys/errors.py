"""Error types: one exception class per wire error code.

Imports nothing from Geomys. The server raises these, `protocol` turns them
into `{'status': 'ERROR', 'code': ..., 'message': ...}` maps, and the client
library raises the same classes when it reads such a map.
"""


class GeomysError(Exception):
    """Base class of every error Geomys reports; `code` is the wire code."""

    code = "INTERNAL"

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.code)

    @property
    def message(self) -> str:
        """The human-readable sentence sent on the wire."""
        return str(self)


class BadRequest(GeomysError):
    code = "BAD_REQUEST"


class UnknownCommand(GeomysError):
    code = "UNKNOWN_COMMAND"


class KeyExists(GeomysError):
    code = "KEY_EXISTS"


class NotFound(GeomysError):
    code = "NOT_FOUND"


class WrongType(GeomysError):
    code = "WRONG_TYPE"


class NotInteger(GeomysError):
    code = "NOT_INTEGER"


class Overflow(GeomysError):
    code = "OVERFLOW"


class Timeout(GeomysError):
    code = "TIMEOUT"


class NoLeader(GeomysError):
    code = "NO_LEADER"


class AuthRequired(GeomysError):
    code = "AUTH_REQUIRED"


class AuthFailed(GeomysError):
    code = "AUTH_FAILED"


class TooLarge(GeomysError):
    code = "TOO_LARGE"


class ReadOnly(GeomysError):
    code = "READONLY"


class OutOfMemory(GeomysError):
    code = "OOM"


class InternalError(GeomysError):
    code = "INTERNAL"


#: Wire code -> exception class, for turning an error map back into an exception.
BY_CODE: dict[str, type[GeomysError]] = {
    cls.code: cls
    for cls in (
        BadRequest, UnknownCommand, KeyExists, NotFound, WrongType, NotInteger,
        Overflow, Timeout, NoLeader, AuthRequired, AuthFailed, TooLarge,
        ReadOnly, OutOfMemory, InternalError,
    )
}


def from_code(code: str, message: str) -> GeomysError:
    """Build the exception for a wire error code (unknown codes give the base class)."""
    cls = BY_CODE.get(code)
    if cls is None:
        err = GeomysError(message)
        err.code = code
        return err
    return cls(message)


def describe_key(key) -> str:
    """Render a key for an error message, shortened so a huge key stays readable."""
    text = repr(key)
    return text if len(text) <= 80 else text[:77] + "..."
