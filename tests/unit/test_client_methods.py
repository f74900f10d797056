"""The client library's methods stay explicit (like redis-py's), but none is missing.

Every command of the server's table must have a method of geomys.Client
that sends it with the table's field names. The requests are captured
through `_request`, the one method every command method goes through (a
Pipeline overrides it the same way), so no socket is opened.
"""

import inspect

from geomys import Client
from geomys.commands import TABLE
from geomys.commands.table import CONSISTENT

#: Methods of Client that are not one command each.
GENERIC = {"execute", "execute_command", "pipeline", "close"}


class RecordingClient(Client):
    """A Client whose command methods record their request instead of sending it."""

    def __init__(self) -> None:
        super().__init__("127.0.0.1", 1)
        self.sent: list[dict] = []

    def _request(self, request: dict, convert):
        self.sent.append(request)


def requests_of_every_method() -> dict[str, dict]:
    """Method name -> the request it sends, calling it with a word for every parameter (optional ones too)."""
    client = RecordingClient()
    sent = {}
    for name, method in inspect.getmembers(client, inspect.ismethod):
        if name.startswith("_") or name in GENERIC:
            continue
        args = ["1"] * len(inspect.signature(method).parameters)
        client.sent.clear()
        method(*args)
        assert len(client.sent) == 1, name
        sent[name] = client.sent[0]
    return sent


def test_every_command_of_the_table_has_a_client_method():
    specs = {spec.name: spec for spec in TABLE.values()}
    sent = requests_of_every_method()
    assert sorted(request["command"] for request in sent.values()) == sorted(specs)


def test_every_client_method_sends_the_field_names_its_command_declares():
    specs = {spec.name: spec for spec in TABLE.values()}
    for name, request in requests_of_every_method().items():
        spec = specs[request["command"]]
        fields = {field.name for field in spec.fields} | ({CONSISTENT} if spec.is_read else set())
        assert set(request) - {"command"} == fields, name


def test_reads_send_consistent_only_when_asked_by_the_call_or_the_client():
    client = RecordingClient()
    client.get("k")
    client.get("k", consistent=True)
    client.consistent = False
    client.llen("k")
    client.exists("k", consistent=True)
    pipeline = client.pipeline()
    assert pipeline.consistent is False
    assert [r.get(CONSISTENT) for r in client.sent] == [None, True, False, True]
    assert CONSISTENT not in client.sent[0]
