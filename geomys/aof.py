"""Append-only file (placeholder until persistence lands)."""


class AofError(Exception):
    """The append-only file cannot be used."""


class AppendOnlyFile:
    def __init__(self, *args, **kwargs):
        raise AofError("persistence is not available yet")


def repair(path):
    raise AofError("repair is not available yet")
