"""One entry point for Geomys's three programs, so one executable can carry them all.

`geomys [options]` runs the server, `geomys cli ...` the client and
`geomys benchmark ...` the load generator; a copy or link of the executable
named geomys-cli or geomys-benchmark runs that program. Each program is
imported only when chosen, so the server never loads the client's REPL.
"""

import os
import sys
from typing import Optional, Sequence

SUBCOMMANDS = ("cli", "benchmark")
BY_NAME = {"geomys-cli": "cli", "geomys-benchmark": "benchmark"}


def choose(program_name: str, args: list) -> tuple:
    """Return (program, its arguments) from the name the executable was called by and its arguments."""
    program = BY_NAME.get(os.path.basename(program_name))
    if program is None and args and args[0] in SUBCOMMANDS:
        return args[0], args[1:]
    return program or "server", args


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Entry point of the `geomys` command and of the single executable."""
    program, args = choose(sys.argv[0], list(sys.argv[1:] if argv is None else argv))
    if program == "cli":
        from . import cli
        sys.exit(cli.main(args))
    if program == "benchmark":
        from . import benchmark
        sys.exit(benchmark.main(args))
    from . import app
    app.main(args)
