"""Every command Geomys understands, gathered into one table.

Adding a command is one handler and one `CommandSpec` entry in the module of
its family; the modules are listed here explicitly.
"""

from . import counters, deques, keys, server, strings
from .table import BLOCKING, DENYOOM, NOAUTH, NOLOCK, WRITE, CommandSpec, build_table, lookup

TABLE = build_table(server.SPECS, strings.SPECS, counters.SPECS, deques.SPECS, keys.SPECS)

__all__ = ["TABLE", "CommandSpec", "lookup", "WRITE", "BLOCKING", "NOLOCK", "NOAUTH", "DENYOOM"]
