#!/usr/bin/env python3
"""Pulse from Python: stubs generated from proto/ at run time, one order end to end.

What it does, printing each step:
  1. generates Python stubs for proto/pulse/**/*.proto with grpcio-tools into a
     temporary directory (nothing generated is kept or committed);
  2. checks grpc.health.v1.Health/Check is SERVING on both services, for ""
     and for each service's full name (stubs from grpcio-health-checking);
  3. creates an order with an x-correlation-id and a request_id (so that a
     retry cannot make a second order) and checks the id comes back;
  4. polls ListNotifications until the order's notification appears (bounded
     by --timeout) and checks it carries the order's event and correlation id.
Exits 0 when all of that holds, 1 when something does not, 2 on bad usage.

Retry policy (call_with_retry): a call answered UNAVAILABLE is retried, up to
--attempts calls in all and within --timeout, after the delay the server's
google.rpc.RetryInfo detail asks for (read from grpc-status-details-bin), or,
when there is none (the transport failed before any server answered), after an
exponential backoff from 0.2 s to 5 s. Every other code fails at once: retrying
INVALID_ARGUMENT or NOT_FOUND cannot succeed. --no-health-check skips step 2.

Needs: pip install grpcio-tools grpcio-health-checking (ensure-tools.sh puts
them in $PULSE_TOOLS/venv). Addresses: --orders / --notifications, else
ORDERS_ADDR [localhost:50051] and NOTIFICATIONS_ADDR [localhost:50052].
"""

import argparse
import importlib
import os
import pathlib
import sys
import tempfile
import time
import uuid

try:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_tools import protoc
except ImportError as err:  # pragma: no cover - depends on the machine
    print(f"pulse_client: {err}: pip install grpcio-tools grpcio-health-checking", file=sys.stderr)
    sys.exit(2)

REPO_PROTO = pathlib.Path(__file__).resolve().parents[2] / "proto"
ORDER_SERVICE = "pulse.orders.v1.OrderService"
NOTIFICATION_SERVICE = "pulse.notifications.v1.NotificationService"


class Failure(Exception):
    """A check that did not hold."""


def log(message):
    print(f"[pulse_client.py] {message}", flush=True)


def generate_stubs(proto_root, out_dir):
    """Runs protoc (bundled with grpcio-tools) over every .proto under proto_root."""
    protos = sorted(str(p.relative_to(proto_root)) for p in proto_root.rglob("*.proto"))
    if not protos:
        raise Failure(f"no .proto files under {proto_root}")
    # grpcio-tools ships the well-known types (google/protobuf/timestamp.proto).
    well_known = pathlib.Path(protoc.__file__).resolve().parent / "_proto"
    args = ["grpc_tools.protoc", f"-I{proto_root}", f"-I{well_known}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}"]
    if protoc.main(args + protos) != 0:
        raise Failure(f"protoc failed on {proto_root}")
    # The generated modules import each other as pulse.orders.v1.orders_pb2: make packages.
    for directory in [out_dir, *(p for p in pathlib.Path(out_dir).rglob("*") if p.is_dir())]:
        (pathlib.Path(directory) / "__init__.py").touch()
    sys.path.insert(0, str(out_dir))
    log(f"generated stubs for {len(protos)} proto files from {proto_root}")
    load = importlib.import_module
    return {
        "orders": load("pulse.orders.v1.orders_pb2"),
        "orders_grpc": load("pulse.orders.v1.orders_pb2_grpc"),
        "notifications": load("pulse.notifications.v1.notifications_pb2"),
        "notifications_grpc": load("pulse.notifications.v1.notifications_pb2_grpc"),
    }


def _wire_fields(buf):
    """(field number, wire type, value) of each field of a protobuf message: enough
    of the wire format to read google.rpc.Status without generated classes."""
    i = 0

    def varint():
        nonlocal i
        value, shift = 0, 0
        while True:
            byte = buf[i]
            i += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7

    while i < len(buf):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            yield number, wire, varint()
        elif wire == 2:
            length = varint()
            yield number, wire, bytes(buf[i : i + length])
            i += length
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unsupported wire type {wire}")


def error_details(err):
    """(ErrorInfo reason or None, RetryInfo delay in seconds or None) of an RpcError,
    from the google.rpc.Status in its grpc-status-details-bin trailer."""
    reason, delay = None, None
    trailers = dict(err.trailing_metadata() or ()) if hasattr(err, "trailing_metadata") else {}
    raw = trailers.get("grpc-status-details-bin")
    if not raw:
        return reason, delay
    for number, wire, detail in _wire_fields(raw):
        if number != 3 or wire != 2:  # google.rpc.Status.details: repeated Any
            continue
        parts = {n: v for n, _, v in _wire_fields(detail)}  # Any: 1 type_url, 2 value
        type_url, value = parts.get(1, b"").decode(), parts.get(2, b"")
        if type_url.endswith("/google.rpc.ErrorInfo"):
            reason = {n: v for n, _, v in _wire_fields(value)}.get(1, b"").decode()
        elif type_url.endswith("/google.rpc.RetryInfo"):
            duration = {n: v for n, _, v in _wire_fields(value)}.get(1, b"")  # retry_delay
            fields = {n: v for n, _, v in _wire_fields(duration)}
            delay = fields.get(1, 0) + fields.get(2, 0) / 1e9
    return reason, delay


def call_with_retry(what, call, attempts, deadline):
    """call(), retried on UNAVAILABLE as the module docstring says."""
    backoff = 0.2
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.UNAVAILABLE or attempt == attempts:
                raise
            reason, delay = error_details(err)
            source = "as RetryInfo asks" if delay is not None else "backoff, no RetryInfo"
            if delay is None:
                delay, backoff = backoff, min(backoff * 2, 5.0)
            if time.monotonic() + delay > deadline:
                raise
            log(f"{what}: UNAVAILABLE ({reason or 'no ErrorInfo'}), attempt {attempt}; retrying in {delay:.2f}s ({source})")
            time.sleep(delay)
    raise AssertionError("unreachable")


def check_health(channel, addr, names, timeout):
    stub = health_pb2_grpc.HealthStub(channel)
    for name in names:
        response = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=timeout)
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        log(f"health {addr} {name or '(server)'!r}: {status}")
        if response.status != health_pb2.HealthCheckResponse.SERVING:
            raise Failure(f"{addr} reports {status} for {name!r}")


def run(args):
    deadline_secs = args.timeout
    with tempfile.TemporaryDirectory(prefix="pulse-py-stubs-") as out_dir:
        stubs = generate_stubs(pathlib.Path(args.proto_dir), out_dir)
        with grpc.insecure_channel(args.orders) as orders_channel, grpc.insecure_channel(
            args.notifications
        ) as notifications_channel:
            for channel, addr in ((orders_channel, args.orders), (notifications_channel, args.notifications)):
                try:
                    grpc.channel_ready_future(channel).result(timeout=deadline_secs)
                except grpc.FutureTimeoutError:
                    raise Failure(f"cannot connect to {addr} within {deadline_secs}s") from None
            if args.health_check:
                check_health(orders_channel, args.orders, ["", ORDER_SERVICE], 5)
                check_health(notifications_channel, args.notifications, ["", NOTIFICATION_SERVICE], 5)
            deadline = time.monotonic() + deadline_secs

            correlation_id = f"py-client-{uuid.uuid4()}"
            orders = stubs["orders_grpc"].OrderServiceStub(orders_channel)
            request = stubs["orders"].CreateOrderRequest(
                customer_id=args.customer, amount=args.amount, currency=args.currency, request_id=str(uuid.uuid4())
            )
            response, call = call_with_retry(
                "CreateOrder",
                lambda: orders.CreateOrder.with_call(request, metadata=[("x-correlation-id", correlation_id)], timeout=10),
                args.attempts,
                deadline,
            )
            log(
                f"CreateOrder: order {response.order_id}, event {response.event_id}, "
                f"correlation {response.correlation_id}, amount {response.order.amount} {response.order.currency}"
            )
            if response.correlation_id != correlation_id:
                raise Failure(f"correlation id {response.correlation_id!r}, sent {correlation_id!r}")
            echoed = dict(call.initial_metadata() or ()).get("x-correlation-id")
            if echoed != correlation_id:
                raise Failure(f"response metadata x-correlation-id is {echoed!r}, sent {correlation_id!r}")

            notifications = stubs["notifications_grpc"].NotificationServiceStub(notifications_channel)
            list_request = stubs["notifications"].ListNotificationsRequest(order_id=response.order_id)
            started = time.monotonic()
            polls = 0
            while True:
                polls += 1
                found = call_with_retry(
                    "ListNotifications",
                    lambda: notifications.ListNotifications(list_request, timeout=5),
                    args.attempts,
                    deadline,
                ).notifications
                if found:
                    break
                if time.monotonic() - started > deadline_secs:
                    raise Failure(f"no notification for order {response.order_id} after {deadline_secs}s ({polls} polls)")
                time.sleep(0.2)
            waited = time.monotonic() - started
            for n in found:
                log(f"ListNotifications: {n.notification_id}: {n.message!r} (correlation {n.correlation_id})")
            if len(found) != 1:
                raise Failure(f"expected exactly one notification, got {len(found)}")
            notification = found[0]
            if notification.event_id != response.event_id or notification.correlation_id != correlation_id:
                raise Failure(
                    f"notification carries event {notification.event_id} / correlation {notification.correlation_id}, "
                    f"expected {response.event_id} / {correlation_id}"
                )
            log(f"notification arrived after {waited:.2f}s ({polls} polls): all checks passed")


def main():
    parser = argparse.ArgumentParser(description="Creates an order on Pulse and waits for its notification.")
    parser.add_argument("--orders", default=os.environ.get("ORDERS_ADDR", "localhost:50051"), help="host:port [ORDERS_ADDR]")
    parser.add_argument(
        "--notifications",
        default=os.environ.get("NOTIFICATIONS_ADDR", "localhost:50052"),
        help="host:port [NOTIFICATIONS_ADDR]",
    )
    parser.add_argument("--proto-dir", default=os.environ.get("PULSE_PROTO_DIR", str(REPO_PROTO)), help="the proto/ directory")
    parser.add_argument("--timeout", type=float, default=float(os.environ.get("PULSE_CLIENT_TIMEOUT_SECS", "30")),
                        help="seconds to wait for the servers and for the notification")
    parser.add_argument("--attempts", type=int, default=10, help="calls in all for one request answered UNAVAILABLE")
    parser.add_argument("--no-health-check", dest="health_check", action="store_false",
                        help="skip the health checks (e.g. to see a retry while a database is away)")
    parser.add_argument("--customer", default="c-python")
    parser.add_argument("--amount", default="12.34")
    parser.add_argument("--currency", default="EUR")
    args = parser.parse_args()
    try:
        run(args)
    except Failure as err:
        log(f"FAILED: {err}")
        return 1
    except grpc.RpcError as err:
        log(f"FAILED: {err.code().name}: {err.details()}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
