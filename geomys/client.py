"""Client library (placeholder)."""


class Client:
    pass


class Pipeline:
    pass
