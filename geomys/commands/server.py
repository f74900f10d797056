"""Server commands: PING, ECHO, INFO, AUTH, COMPACT.

They touch no key, so they run without the store lock; INFO, AUTH and
COMPACT reach the running server through `ctx.engine`.
"""

from ..errors import AuthFailed
from .table import NOAUTH, NOLOCK, OK, CommandSpec, Field, to_str

PONG = {"status": "OK", "message": "PONG"}


def ping(store, ctx):
    """PING -> PONG."""
    return PONG


def echo(store, ctx, message):
    """ECHO message -> the same message."""
    return {"status": "OK", "message": message}


def info(store, ctx):
    """INFO -> a map describing the server."""
    return {"status": "OK", "value": ctx.engine.info()}


def auth(store, ctx, password):
    """AUTH password -> OK, or AUTH_FAILED."""
    if not ctx.engine.check_password(password):
        # Like Redis 6+: a failed AUTH leaves the connection as it was (and a
        # server without requirepass must not lock the client out).
        raise AuthFailed("invalid password" if ctx.engine.requirepass else
                         "AUTH was sent but no password is configured")
    ctx.authenticated = True
    return OK


def compact(store, ctx):
    """COMPACT -> OK once the append-only file is rewritten to the current state."""
    message = ctx.engine.compact()
    return {"status": "OK", "message": message} if message else OK


_LOCAL = frozenset({NOLOCK})

SPECS = (
    CommandSpec("PING", ping, (), frozenset({NOLOCK, NOAUTH}), "check the server answers"),
    CommandSpec("ECHO", echo, (Field("message", to_str),), _LOCAL, "return MESSAGE"),
    CommandSpec("INFO", info, (), _LOCAL, "show the server's state"),
    CommandSpec("AUTH", auth, (Field("value", to_str, metavar="PASSWORD"),), frozenset({NOLOCK, NOAUTH}),
                "authenticate this connection"),
    CommandSpec("COMPACT", compact, (), _LOCAL, "rewrite the append-only file to the current state"),
)
