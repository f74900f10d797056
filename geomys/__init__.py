"""Geomys: a small Redis-like key-value server speaking MessagePack over TCP.

`geomys.Client` is the Python client library; `python -m geomys` runs the server.
"""

__version__ = "0.1.0"

from .client import Client, Pipeline  # noqa: E402
from .errors import GeomysError  # noqa: E402

__all__ = ["Client", "Pipeline", "GeomysError", "__version__"]
