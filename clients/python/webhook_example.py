#!/usr/bin/env python3
"""Pulse webhooks from Python: registers a webhook endpoint, receives the signed
delivery of an order and verifies it with the `standardwebhooks` package.

What it does, printing each step:
  1. generates Python stubs for proto/ (as pulse_client.py does);
  2. starts an HTTP receiver on --listen (default 127.0.0.1, a free port),
     which answers 200 to a request whose signature verifies and 400 to any
     other;
  3. DeliveryService/CreateEndpoint: a webhook endpoint for "order.created"
     posting to the receiver (--url, when notifications reaches it under
     another address), and keeps the secret the answer shows once;
  4. CreateOrder with an x-correlation-id;
  5. waits (bounded by --timeout) for the order's delivery and checks it:
     Webhook(secret).verify() of the raw body and the headers passes; the
     type, the order id, the content type, the correlation id, traceparent,
     user-agent and webhook-id are as docs/delivery.md describes them; and
     the same request with one byte of the body changed does not verify;
  6. ListDeliveries of the order until the delivery is DELIVERED, its
     delivery_id being the webhook-id received ("webhook checks passed");
  7. DisableEndpoint, so that the endpoint does not outlive the receiver.
Exits 0 when all of that holds, 1 when something does not, 2 on bad usage.

Notifications must allow webhooks to this machine (DELIVERY_ALLOW_PRIVATE_NETWORKS=true,
as run-local.sh sets it) and have a key for the secrets (DELIVERY_SECRET_KEY).

Needs: pip install grpcio-tools standardwebhooks (ensure-tools.sh puts them in
$PULSE_TOOLS/venv). Addresses: --orders / --notifications, else ORDERS_ADDR
[localhost:50051] and NOTIFICATIONS_ADDR [localhost:50052].
"""

import argparse
import http.server
import json
import os
import pathlib
import queue
import sys
import tempfile
import threading
import time
import uuid

try:
    import grpc
    from standardwebhooks import Webhook, WebhookVerificationError

    from pulse_client import REPO_PROTO, Failure, call_with_retry, generate_stubs
except ImportError as err:  # pragma: no cover - depends on the machine
    print(f"webhook_example: {err}: pip install grpcio-tools grpcio-health-checking standardwebhooks", file=sys.stderr)
    sys.exit(2)


def log(message):
    print(f"[webhook_example.py] {message}", flush=True)


class Receiver(http.server.ThreadingHTTPServer):
    """Verifies every POST with the endpoint's secret and hands it to the example."""

    daemon_threads = True

    def __init__(self, address):
        super().__init__(address, ReceiverHandler)
        self.secret = None
        self.received = queue.Queue()


class ReceiverHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {name.lower(): value for name, value in self.headers.items()}
        verified, error = None, None
        try:
            # The raw bytes as received: a re-serialised body would not match.
            verified = Webhook(self.server.secret).verify(body, headers)
        except WebhookVerificationError as err:
            error = str(err)
        self.send_response(200 if error is None else 400)
        self.send_header("content-length", "0")
        self.end_headers()
        self.server.received.put({"path": self.path, "body": body, "headers": headers, "event": verified, "error": error})

    def log_message(self, *_):
        pass


def expect(what, got, want):
    if got != want:
        raise Failure(f"{what} is {got!r}, expected {want!r}")


def wait_for_delivery(receiver, order_id, deadline):
    """The first request about `order_id`; refused ones fail the example."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Failure(f"no webhook for order {order_id} before the timeout")
        try:
            request = receiver.received.get(timeout=left)
        except queue.Empty:
            continue
        if request["error"] is not None:
            raise Failure(f"a request to {request['path']} did not verify: {request['error']}")
        if (request["event"].get("data") or {}).get("order_id") == order_id:
            return request
        log(f"ignored a delivery of another order ({request['headers'].get('webhook-id')})")


def check_request(request, secret, order_id, correlation_id):
    headers, event = request["headers"], request["event"]
    log(f"received {request['path']}: webhook-id {headers.get('webhook-id')}, verified with standardwebhooks")
    expect("type", event.get("type"), "order.created")
    expect("data.order_id", event["data"].get("order_id"), order_id)
    expect("content-type", headers.get("content-type", "").split(";")[0], "application/json")
    expect("x-correlation-id", headers.get("x-correlation-id"), correlation_id)
    if not headers.get("traceparent", "").startswith("00-"):
        raise Failure(f"traceparent is {headers.get('traceparent')!r}")
    if not headers.get("user-agent", "").startswith("pulse-notifications/"):
        raise Failure(f"user-agent is {headers.get('user-agent')!r}")
    tampered = bytearray(request["body"])
    tampered[-2] ^= 0x01
    try:
        Webhook(secret).verify(bytes(tampered), headers)
    except WebhookVerificationError:
        log("the same request with one byte of the body changed does not verify")
    else:
        raise Failure("a tampered body verified")


def run(args):
    host, _, port = args.listen.rpartition(":")
    receiver = Receiver((host or "127.0.0.1", int(port or 0)))
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    url = args.url or f"http://{receiver.server_address[0]}:{receiver.server_address[1]}/pulse-webhook"
    log(f"receiver listening on {receiver.server_address[0]}:{receiver.server_address[1]}, endpoint URL {url}")
    deadline = time.monotonic() + args.timeout
    with tempfile.TemporaryDirectory(prefix="pulse-py-stubs-") as out_dir:
        stubs = generate_stubs(pathlib.Path(args.proto_dir), out_dir)
        notifications_pb = stubs["notifications"]
        with grpc.insecure_channel(args.orders) as orders_channel, grpc.insecure_channel(
            args.notifications
        ) as notifications_channel:
            delivery = stubs["notifications_grpc"].DeliveryServiceStub(notifications_channel)
            orders = stubs["orders_grpc"].OrderServiceStub(orders_channel)
            created = call_with_retry(
                "CreateEndpoint",
                lambda: delivery.CreateEndpoint(
                    notifications_pb.CreateEndpointRequest(
                        kind=notifications_pb.ENDPOINT_KIND_WEBHOOK,
                        url=url,
                        event_types=["order.created"],
                        description="webhook_example.py",
                    ),
                    timeout=10,
                ),
                args.attempts,
                deadline,
            )
            endpoint_id = created.endpoint.endpoint_id
            if not created.secret.startswith("whsec_"):
                raise Failure(f"the secret does not start with whsec_: {created.secret[:6]!r}")
            receiver.secret = created.secret
            log(f"CreateEndpoint: endpoint {endpoint_id}, {created.endpoint.url}, secret whsec_… (shown once)")
            try:
                correlation_id = f"py-webhook-{uuid.uuid4()}"
                order = call_with_retry(
                    "CreateOrder",
                    lambda: orders.CreateOrder(
                        stubs["orders"].CreateOrderRequest(
                            customer_id=args.customer, amount=args.amount, currency=args.currency,
                            request_id=str(uuid.uuid4()),
                        ),
                        metadata=[("x-correlation-id", correlation_id)],
                        timeout=10,
                    ),
                    args.attempts,
                    deadline,
                )
                log(f"CreateOrder: order {order.order_id}, correlation {correlation_id}")
                request = wait_for_delivery(receiver, order.order_id, deadline)
                check_request(request, created.secret, order.order_id, correlation_id)
                webhook_id = request["headers"]["webhook-id"]

                while True:
                    deliveries = call_with_retry(
                        "ListDeliveries",
                        lambda: delivery.ListDeliveries(
                            notifications_pb.ListDeliveriesRequest(order_id=order.order_id), timeout=5
                        ),
                        args.attempts,
                        deadline,
                    ).deliveries
                    ours = [d for d in deliveries if d.endpoint_id == endpoint_id]
                    if len(ours) > 1:
                        raise Failure(f"{len(ours)} deliveries of order {order.order_id} to one endpoint")
                    if ours and ours[0].status == notifications_pb.DELIVERY_STATUS_DELIVERED:
                        break
                    if time.monotonic() > deadline:
                        raise Failure(f"the delivery of order {order.order_id} is not DELIVERED: {ours}")
                    time.sleep(0.2)
                expect("the delivery_id", ours[0].delivery_id, webhook_id)
                log(f"ListDeliveries: {webhook_id} DELIVERED after {ours[0].attempts} attempt(s): webhook checks passed")
            finally:
                delivery.DisableEndpoint(notifications_pb.DisableEndpointRequest(endpoint_id=endpoint_id), timeout=10)
                log(f"DisableEndpoint: {endpoint_id}")
                receiver.shutdown()


def main():
    parser = argparse.ArgumentParser(
        description="Registers a webhook endpoint on Pulse, creates an order and verifies its signed delivery."
    )
    parser.add_argument("--orders", default=os.environ.get("ORDERS_ADDR", "localhost:50051"), help="host:port [ORDERS_ADDR]")
    parser.add_argument(
        "--notifications",
        default=os.environ.get("NOTIFICATIONS_ADDR", "localhost:50052"),
        help="host:port [NOTIFICATIONS_ADDR]",
    )
    parser.add_argument("--listen", default="127.0.0.1:0", help="the receiver's host:port (port 0: any free one)")
    parser.add_argument("--url", help="the endpoint's URL, when notifications reaches the receiver under another address")
    parser.add_argument("--proto-dir", default=os.environ.get("PULSE_PROTO_DIR", str(REPO_PROTO)), help="the proto/ directory")
    parser.add_argument("--timeout", type=float, default=float(os.environ.get("PULSE_CLIENT_TIMEOUT_SECS", "30")),
                        help="seconds for the whole example")
    parser.add_argument("--attempts", type=int, default=10, help="calls in all for one request answered UNAVAILABLE")
    parser.add_argument("--customer", default="c-python-webhook")
    parser.add_argument("--amount", default="19.99")
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
