#!/usr/bin/env python3
"""Pulse from Python: stubs generated from proto/ at run time, one order end to
end, then the order saga (payment, then stock) to COMPLETED and to FAILED.

What it does, printing each step:
  1. generates Python stubs for proto/pulse/**/*.proto with grpcio-tools into a
     temporary directory (nothing generated is kept or committed);
  2. checks grpc.health.v1.Health/Check is SERVING on both services, for ""
     and for each service's full name (stubs from grpcio-health-checking);
  3. creates an order with an x-correlation-id and a request_id (so that a
     retry cannot make a second order) and checks the id comes back;
  4. polls ListNotifications until the order's notification appears (bounded
     by --timeout) and checks it carries the order's event and correlation id
     ("all checks passed"); an order's saga outcome may add a second one;
  5. the saga, when PaymentService and InventoryService answer: SetStock(
     "<prefix>-SKU", 5) and SetCustomerCredit(customer, EUR, 50.00) for a
     prefix new at every run, then an order of 12.34 EUR for 2 of that sku,
     polled with GetOrder until COMPLETED (the credit then uses 12.34 and the
     stock holds 2 reserved), and one of 80.00 EUR, polled until FAILED with
     FAILURE_REASON_PAYMENT_DECLINED, leaving credit and stock as they were
     ("saga checks passed"). By default the saga runs when both addresses
     answer within 2 s and is skipped otherwise; --saga requires it (waiting
     up to --timeout for them), --no-saga skips it.
Exits 0 when all of that holds, 1 when something does not, 2 on bad usage.

Retry policy (call_with_retry): a call answered UNAVAILABLE is retried, up to
--attempts calls in all and within --timeout, after the delay the server's
google.rpc.RetryInfo detail asks for (read from grpc-status-details-bin), or,
when there is none (the transport failed before any server answered), after an
exponential backoff from 0.2 s to 5 s. Every other code fails at once: retrying
INVALID_ARGUMENT or NOT_FOUND cannot succeed. --no-health-check skips step 2.

Needs: pip install grpcio-tools grpcio-health-checking (ensure-tools.sh puts
them in $PULSE_TOOLS/venv). Addresses: --orders / --notifications /
--payments / --inventory, else ORDERS_ADDR [localhost:50051],
NOTIFICATIONS_ADDR [localhost:50052], PAYMENTS_ADDR [localhost:50053] and
INVENTORY_ADDR [localhost:50054].
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
PAYMENT_SERVICE = "pulse.payments.v1.PaymentService"
INVENTORY_SERVICE = "pulse.inventory.v1.InventoryService"
SAGA_PROBE_SECS = 2.0


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
        "payments": load("pulse.payments.v1.payments_pb2"),
        "payments_grpc": load("pulse.payments.v1.payments_pb2_grpc"),
        "inventory": load("pulse.inventory.v1.inventory_pb2"),
        "inventory_grpc": load("pulse.inventory.v1.inventory_pb2_grpc"),
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
            # The order's creation comes first; its saga's outcome may have added one more.
            created = [n for n in found if n.event_id == response.event_id]
            if len(created) > 1:
                raise Failure(f"expected exactly one notification of event {response.event_id}, got {len(created)}")
            notification = created[0] if created else found[0]
            if notification.event_id != response.event_id or notification.correlation_id != correlation_id:
                raise Failure(
                    f"notification carries event {notification.event_id} / correlation {notification.correlation_id}, "
                    f"expected {response.event_id} / {correlation_id}"
                )
            log(f"notification arrived after {waited:.2f}s ({polls} polls): all checks passed")
            if args.saga != "off":
                run_saga(stubs, args, orders_channel)


def run_saga(stubs, args, orders_channel):
    """Step 5 of the module docstring, when payments and inventory answer (or --saga)."""
    wait = args.timeout if args.saga == "on" else min(SAGA_PROBE_SECS, args.timeout)
    with grpc.insecure_channel(args.payments) as payments_channel, grpc.insecure_channel(
        args.inventory
    ) as inventory_channel:
        for channel, addr in ((payments_channel, args.payments), (inventory_channel, args.inventory)):
            try:
                grpc.channel_ready_future(channel).result(timeout=wait)
            except grpc.FutureTimeoutError:
                if args.saga == "on":
                    needs = "--saga needs payments and inventory"
                    raise Failure(f"cannot connect to {addr} within {wait}s ({needs})") from None
                log(f"no answer from {addr} within {wait}s: saga skipped (pass --saga to require it)")
                return
        if args.health_check:
            check_health(payments_channel, args.payments, ["", PAYMENT_SERVICE], 5)
            check_health(inventory_channel, args.inventory, ["", INVENTORY_SERVICE], 5)
        Saga(stubs, args, orders_channel, payments_channel, inventory_channel).run()


class Saga:
    """One order of a new customer and sku to COMPLETED, one to FAILED (PAYMENT_DECLINED)."""

    def __init__(self, stubs, args, orders_channel, payments_channel, inventory_channel):
        self.pb, self.args = stubs, args
        self.orders = stubs["orders_grpc"].OrderServiceStub(orders_channel)
        self.payments = stubs["payments_grpc"].PaymentServiceStub(payments_channel)
        self.inventory = stubs["inventory_grpc"].InventoryServiceStub(inventory_channel)
        # New at every run, so that a second run starts from a fresh stock and credit.
        prefix = f"py-{uuid.uuid4().hex[:12]}"
        self.sku, self.customer = f"{prefix}-SKU", f"{prefix}-customer"

    def call(self, what, method, request, deadline, metadata=()):
        return call_with_retry(
            what, lambda: method(request, metadata=metadata, timeout=10), self.args.attempts, deadline
        )

    def run(self):
        deadline = time.monotonic() + self.args.timeout
        inventory, payments, orders = self.pb["inventory"], self.pb["payments"], self.pb["orders"]
        request = inventory.SetStockRequest(sku=self.sku, on_hand=5)
        stock = self.call("SetStock", self.inventory.SetStock, request, deadline).stock
        log(f"SetStock: {stock.sku}: {stock.on_hand} on hand, {stock.reserved} reserved")
        request = payments.SetCustomerCreditRequest(customer_id=self.customer, currency="EUR", amount="50.00")
        credit = self.call("SetCustomerCredit", self.payments.SetCustomerCredit, request, deadline).credit
        log(f"SetCustomerCredit: {credit.customer_id}: limit {credit.limit} {credit.currency}, used {credit.used}")
        self.order("12.34", orders.ORDER_STATUS_COMPLETED, orders.FAILURE_REASON_UNSPECIFIED)
        self.expect_held(used="12.34", reserved=2)
        self.order("80.00", orders.ORDER_STATUS_FAILED, orders.FAILURE_REASON_PAYMENT_DECLINED)
        self.expect_held(used="12.34", reserved=2)
        log("saga checks passed")

    def describe(self, order):
        pb = self.pb["orders"]
        lines = ", ".join(f"{line.quantity} x {line.sku}" for line in order.lines)
        failure = f" ({pb.FailureReason.Name(order.failure)})" if order.failure else ""
        return f"{order.amount} {order.currency} for {lines}: {pb.OrderStatus.Name(order.status)}{failure}"

    def order(self, amount, status, failure):
        """Creates an order of amount EUR for 2 of the sku, polls GetOrder
        (bounded by --timeout) until it leaves CREATED, checks how it ended."""
        pb = self.pb["orders"]
        deadline = time.monotonic() + self.args.timeout
        request = pb.CreateOrderRequest(
            customer_id=self.customer, amount=amount, currency="EUR", request_id=str(uuid.uuid4()),
            lines=[pb.OrderLine(sku=self.sku, quantity=2)],
        )
        metadata = [("x-correlation-id", f"py-client-{uuid.uuid4()}")]
        order = self.call("CreateOrder", self.orders.CreateOrder, request, deadline, metadata).order
        log(f"CreateOrder: order {order.order_id}, {self.describe(order)}")
        if order.status != pb.ORDER_STATUS_CREATED:
            raise Failure(f"CreateOrder answered {pb.OrderStatus.Name(order.status)}, expected ORDER_STATUS_CREATED")
        get = pb.GetOrderRequest(order_id=order.order_id)
        started, polls = time.monotonic(), 0
        while order.status == pb.ORDER_STATUS_CREATED:
            if time.monotonic() - started > self.args.timeout:
                raise Failure(f"order {order.order_id} still CREATED after {self.args.timeout}s ({polls} polls)")
            time.sleep(0.2)
            polls += 1
            order = self.call("GetOrder", self.orders.GetOrder, get, deadline).order
        waited = time.monotonic() - started
        log(f"GetOrder: order {order.order_id} after {waited:.2f}s ({polls} polls): {self.describe(order)}")
        if (order.status, order.failure) != (status, failure):
            expected = f"{pb.OrderStatus.Name(status)} / {pb.FailureReason.Name(failure)}"
            raise Failure(f"order {order.order_id} ended {self.describe(order)}, expected {expected}")

    def expect_held(self, used, reserved):
        """The customer's credit uses `used` EUR of 50.00, the sku holds `reserved` of 5."""
        deadline = time.monotonic() + self.args.timeout
        request = self.pb["payments"].GetCustomerCreditRequest(customer_id=self.customer, currency="EUR")
        credit = self.call("GetCustomerCredit", self.payments.GetCustomerCredit, request, deadline).credit
        log(f"GetCustomerCredit: {credit.customer_id}: limit {credit.limit} {credit.currency}, used {credit.used}")
        if (credit.limit, credit.used) != ("50.00", used):
            raise Failure(f"credit limit {credit.limit}, used {credit.used}; expected 50.00, used {used}")
        request = self.pb["inventory"].GetStockRequest(sku=self.sku)
        stock = self.call("GetStock", self.inventory.GetStock, request, deadline).stock
        log(f"GetStock: {stock.sku}: {stock.on_hand} on hand, {stock.reserved} reserved, {stock.available} available")
        if (stock.on_hand, stock.reserved) != (5, reserved):
            raise Failure(f"stock {stock.on_hand} on hand, {stock.reserved} reserved; expected 5, {reserved} reserved")


def main():
    parser = argparse.ArgumentParser(
        description="Creates an order on Pulse and waits for its notification, then runs the order saga."
    )
    parser.add_argument("--orders", default=os.environ.get("ORDERS_ADDR", "localhost:50051"), help="host:port [ORDERS_ADDR]")
    parser.add_argument(
        "--notifications",
        default=os.environ.get("NOTIFICATIONS_ADDR", "localhost:50052"),
        help="host:port [NOTIFICATIONS_ADDR]",
    )
    parser.add_argument(
        "--payments", default=os.environ.get("PAYMENTS_ADDR", "localhost:50053"), help="host:port [PAYMENTS_ADDR]"
    )
    parser.add_argument(
        "--inventory", default=os.environ.get("INVENTORY_ADDR", "localhost:50054"), help="host:port [INVENTORY_ADDR]"
    )
    saga = parser.add_mutually_exclusive_group()
    saga.add_argument("--saga", dest="saga", action="store_const", const="on",
                      help="require the saga (default: run it when payments and inventory answer within 2 s)")
    saga.add_argument("--no-saga", dest="saga", action="store_const", const="off", help="skip the saga")
    parser.set_defaults(saga="auto")
    parser.add_argument("--proto-dir", default=os.environ.get("PULSE_PROTO_DIR", str(REPO_PROTO)), help="the proto/ directory")
    parser.add_argument("--timeout", type=float, default=float(os.environ.get("PULSE_CLIENT_TIMEOUT_SECS", "30")),
                        help="seconds to wait for the servers, for the notification and for each saga order")
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
