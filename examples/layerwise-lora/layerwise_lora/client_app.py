"""A stock Flower ClientApp that trains only the layer groups its plan names and sends back only those.

The message it receives (built by LayerwiseStrategy): the plan as ConfigRecord "plan" (this client reads
``train_groups``, ``steps``, ``lr`` and ``seed``) and every tunable tensor as ArrayRecord "global". Its
reply: the change of each trained parameter as ArrayRecord "update" (different keys per client) and its
number of examples as MetricRecord "train-metrics".
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedcore.core.layers import LayerMap
from layerwise_lora.task import build_model, load_state, make_data

EXAMPLES = 64
BATCH = 16

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    plan = msg.content.config_records["plan"]
    model = build_model()
    start = msg.content.array_records["global"].to_torch_state_dict()
    load_state(model, start)
    group_of = LayerMap(model).group_of
    groups = set(plan["train_groups"])
    trained = {name: p for name, p in model.named_parameters() if name in start and group_of(name) in groups}
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in trained)
    ids, labels = make_data(seed=int(context.node_config["partition-id"]), examples=EXAMPLES)
    optimizer = torch.optim.Adam(trained.values(), lr=float(plan["lr"]))
    generator = torch.Generator().manual_seed(int(plan["seed"]))
    model.train()
    for _ in range(int(plan["steps"])):
        batch = torch.randint(0, EXAMPLES, (BATCH,), generator=generator)
        loss = model(input_ids=ids[batch], labels=labels[batch]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    update = ArrayRecord({name: p.detach() - start[name] for name, p in trained.items()})
    metrics = MetricRecord({"examples": EXAMPLES, "train_loss": loss.item()})
    return Message(RecordDict({"update": update, "train-metrics": metrics}), reply_to=msg)
