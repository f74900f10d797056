"""`python -m geomys`: the server, or `python -m geomys cli ...` / `benchmark ...`.

An absolute import, so this file can also be the script the single
executable is built from (scripts/build_binary.sh).
"""

from geomys.launcher import main

if __name__ == "__main__":
    main()
