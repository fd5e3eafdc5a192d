"""Names of the records exchanged between the ServerApp and the ClientApps, shared by both sides."""

from __future__ import annotations

#: server -> client, train message
PLAN = "plan"  # ConfigRecord: the LayerPlan
RUN_CONFIG = "run-config"  # ConfigRecord: the flat run config
GLOBAL = "global"  # ArrayRecord: current global values of the parameters the client needs

#: client -> server, train reply
UPDATE = "update"  # ArrayRecord: new minus old, for every uploaded parameter
TRAIN_METRICS = "train-metrics"  # MetricRecord: examples, loss, times, memory, bytes
TRAIN_REPORT = "train-report"  # ConfigRecord: non-numeric facts (personal groups kept...)

#: query "info": the client describes itself
INFO_QUERY = "info"
NODE_INFO = "node-info"  # ConfigRecord: partition-id, num-partitions, device profile

#: node config keys a SuperNode may set (--node-config); simulation sets the first two itself
NODE_PARTITION_ID = "partition-id"
NODE_NUM_PARTITIONS = "num-partitions"
