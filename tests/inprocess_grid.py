"""A Flower Grid that answers every message in this process by calling a ClientApp directly.

Server code (strategies, fedlayer's round loop) runs against it unchanged, without Ray, a SuperLink or
subprocesses: each pushed message is handled at once by ``client_app(message, context)`` under the node's
own Context (node config and per-node state kept across rounds, as a SuperNode keeps them).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from uuid import uuid4

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

RUN_ID = 1
#: node ids start here (the SuperLink's own id is 1)
FIRST_NODE_ID = 101


class InProcessGrid(Grid):
    """Nodes from FIRST_NODE_ID on, each with its node config; replies are ready as soon as pushed.

    Messages created outside a client call carry the SuperLink's identity, as in a ServerApp process.
    """

    def __init__(self, client_app: ClientApp, node_configs: list[dict[str, Any]]) -> None:
        self.client_app = client_app
        self.contexts = {
            node_id: Context(RUN_ID, node_id, dict(config), RecordDict(), {})
            for node_id, config in enumerate(node_configs, start=FIRST_NODE_ID)
        }
        _act_as(SUPERLINK_NODE_ID, 0)
        self.replies: dict[str, Message] = {}
        #: every message pushed, in order (tests read what the server sent)
        self.sent: list[Message] = []

    def set_run(self, run: Run) -> None:
        raise NotImplementedError("the in-process grid has one fixed run")

    @property
    def run(self) -> Run:
        return Run.create_empty(RUN_ID)

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message_id = str(uuid4())
            message.metadata.__dict__["_message_id"] = message_id
            self.sent.append(message)
            node_id = message.metadata.dst_node_id
            _act_as(node_id, len(self.sent))
            try:
                self.replies[message_id] = self.client_app(message, self.contexts[node_id])
            finally:
                _act_as(SUPERLINK_NODE_ID, 0)
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self.replies.pop(mid) for mid in message_ids if mid in self.replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


def _act_as(node_id: int, task_id: int) -> None:
    """Set the process's task identity, which Flower reads when it builds a message."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = RUN_ID, node_id, task_id
