"""Every command Geomys understands, gathered into one table.

Adding a command is one handler and one `CommandSpec` entry in the module of
its family; the modules are listed here explicitly. geomys-cli takes its
words, usage lines and help from this same table. (The client library's
methods are written out by hand, and tests/unit/test_client_methods.py
checks that every command here has one.)
"""

from . import counters, deques, keys, server, strings
from .table import BLOCKING, DENYOOM, NOAUTH, NOLOCK, WRITE, CommandSpec, build_table, lookup

TABLE = build_table(server.SPECS, strings.SPECS, counters.SPECS, deques.SPECS, keys.SPECS)

__all__ = ["TABLE", "CommandSpec", "lookup", "WRITE", "BLOCKING", "NOLOCK", "NOAUTH", "DENYOOM"]
