"""Ask a SuperLink's or SuperNode's gRPC health service (``--health-port``) whether it is serving.

For monitoring and container health checks: exit 0 only when the daemon answers SERVING.
"""

from __future__ import annotations

from fedcore.deploy.common import DeployError


def check_health(address: str, timeout_s: float) -> str:
    """``SERVING`` or a DeployError naming what the daemon at ``address`` answered (or that it did not)."""
    import grpc  # installed with flwr; imported here so the other subcommands run without it
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        except grpc.RpcError as exc:
            raise DeployError(
                f"no health answer from {address} ({exc.code().name}): is the daemon running with "
                "--health-port on that port?"
            ) from None
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        raise DeployError(f"{address} answers {status}")
    return status
