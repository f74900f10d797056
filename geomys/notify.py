"""systemd's readiness protocol: one datagram to the Unix socket named by $NOTIFY_SOCKET.

Under a unit with Type=notify, systemd counts the service as started when
READY=1 arrives and as stopping on STOPPING=1. Outside systemd the variable is
unset and nothing is sent. Standard library only; imports nothing from Geomys.
"""

import logging
import os
import socket

logger = logging.getLogger(__name__)


def notify(*fields: str) -> bool:
    """Send "NAME=value" fields to $NOTIFY_SOCKET in one datagram; return whether one was sent.

    A name starting with "@" is an abstract socket. A failure is logged, never
    raised: the server works the same without its supervisor's attention.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall("\n".join(fields).encode())
        return True
    except OSError as exc:
        logger.warning("could not notify systemd through %s: %s", os.environ["NOTIFY_SOCKET"], exc)
        return False
