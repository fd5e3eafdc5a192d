"""Planners decide, per round and per client, what each layer group does (one LayerPlan each).

Every federated method in fedlayer is a planner: ``specs`` lists them, ``registry`` builds the one a run
asks for, ``base`` holds the protocol and the plan every method starts from. The client executor and the
layer-wise aggregator are shared by all of them. (Nothing is imported here, so reading the method table
does not load the planners.)
"""
