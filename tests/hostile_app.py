"""A ClientApp whose replies Flower cannot decode: it lists one tensor name twice, pointing at two arrays.

Shipped as a Flower app of its own by the deployment tests (the SuperNode imports it as ``hostile_app:app``).
The node with partition-id 1 breaks its train replies, the node with partition-id 2 its start-up answer;
every other node is the real client.
"""

from __future__ import annotations

import json

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.clientapp import ClientApp
from flwr.supercore.inflatable.inflatable_object import add_header_to_object_body

from client_app.app import info, train
from fedcore.core import wire


class DuplicatedName(ArrayRecord):
    """An ArrayRecord that serialises its first name twice, the second time for a different array."""

    def __init__(self, record: ArrayRecord) -> None:
        super().__init__(dict(record.items()))
        first = next(iter(record.values()))
        self.twin = Array(np.asarray(first.numpy()) + 1.0)

    @property
    def children(self) -> dict[str, Array]:
        return {**super().children, self.twin.object_id: self.twin}

    def deflate(self) -> bytes:
        refs = [(name, array.object_id) for name, array in self.items()]
        refs.append((refs[0][0], self.twin.object_id))
        body = "{" + ", ".join(f"{json.dumps(name)}: {json.dumps(ref)}" for name, ref in refs) + "}"
        return add_header_to_object_body(body.encode(), self)


DuplicatedName.__qualname__ = "ArrayRecord"  # Flower decodes objects by their class name

app = ClientApp()


def _partition(context: Context) -> int:
    return int(context.node_config[wire.NODE_PARTITION_ID])


@app.train()
def duplicated_update(msg: Message, context: Context) -> Message:
    reply = train(msg, context)
    if _partition(context) == 1 and not reply.has_error():
        reply.content.array_records[wire.UPDATE] = DuplicatedName(reply.content.array_records[wire.UPDATE])
    return Message(reply.content, reply_to=msg)


@app.query(wire.INFO_QUERY)
def duplicated_info(msg: Message, context: Context) -> Message:
    reply = info(msg, context)
    if _partition(context) == 2:
        reply.content["junk"] = DuplicatedName(ArrayRecord({"x": Array(np.zeros(4, dtype=np.float32))}))
    return Message(reply.content, reply_to=msg)
