"""The shared vocabulary of server and clients: plans, layer groups, the wire, aggregation, seeds, devices."""
