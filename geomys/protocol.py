"""Wire format: MessagePack maps in, MessagePack maps out, no length prefix.

Holds the streaming decoder settings, the packer, and the one place where an
exception becomes an error map. Called from client-handler threads.
"""

import logging

import msgpack

from .errors import AuthRequired, BadRequest, GeomysError, TooLarge

logger = logging.getLogger(__name__)

#: Exceptions raised by the streaming unpacker for bytes that are not MessagePack,
#: or not representable in Python (TypeError: a map whose key is an array or a map).
DECODE_ERRORS = (ValueError, TypeError, msgpack.exceptions.UnpackException)


def new_unpacker(max_request_bytes: int) -> msgpack.Unpacker:
    """Return a streaming decoder that refuses to buffer more than one request's limit.

    Map keys of any type are let through so that a bad field name becomes a
    BAD_REQUEST reply rather than a decoding failure that closes the connection.
    """
    return msgpack.Unpacker(raw=False, max_buffer_size=max_request_bytes, strict_map_key=False)


def new_packer() -> msgpack.Packer:
    """Return an encoder for replies: str stays str, bytes goes out as bin."""
    return msgpack.Packer(use_bin_type=True)


def error_reply(exc: BaseException) -> dict:
    """Turn an exception into the wire's error map; anything unexpected is INTERNAL and logged."""
    if not isinstance(exc, GeomysError):
        logger.exception("internal error while serving a request", exc_info=exc)
        return {"status": "ERROR", "code": "INTERNAL", "message": "internal error: %s" % type(exc).__name__}
    return {"status": "ERROR", "code": exc.code, "message": exc.message}


def not_msgpack_reply() -> dict:
    """The reply sent before closing a connection whose bytes are not MessagePack."""
    return error_reply(BadRequest("request is not valid MessagePack; closing the connection"))


def too_large_reply(limit: int) -> dict:
    """The reply sent before closing a connection whose request passed max_request_bytes."""
    return error_reply(TooLarge("request larger than max_request_bytes (%d); closing the connection" % limit))


def unauthenticated_too_large_reply(limit: int) -> dict:
    """The reply sent before closing a connection that sent a large request before AUTH."""
    return error_reply(AuthRequired("requests before AUTH are limited to %d bytes; closing the connection" % limit))
