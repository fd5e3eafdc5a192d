"""Flower ClientApp entry points: the train handler and the info query.

A deployed SuperNode starts a fresh process per message: the training stack (torch, transformers, data)
is imported by the train handler only, so the start-up info query answers without it.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client_app.cpu_share import wait_passively
from client_app.info import node_info, simulated
from fedcore.config import RunConfig
from fedcore.core import wire
from fedcore.core.wire import config_to_dict

wait_passively()  # before the train handler first loads torch
app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    from client_app.executor import execute_train

    return Message(execute_train(msg.content, dict(context.node_config)), reply_to=msg)


@app.query(wire.INFO_QUERY)
def info(msg: Message, context: Context) -> Message:
    cfg = RunConfig.from_flat(config_to_dict(msg.content.config_records[wire.RUN_CONFIG]))
    return Message(node_info(dict(context.node_config), cfg, simulated(msg.content)), reply_to=msg)
