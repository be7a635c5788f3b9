#!/usr/bin/env node
// Pulse webhooks from Node.js: registers a webhook endpoint, receives the
// signed delivery of an order and verifies it with the `standardwebhooks`
// package, printing each step:
//   1. loads proto/ at run time (as pulse_client.js does);
//   2. starts an HTTP receiver on --listen (default 127.0.0.1, a free port),
//      which answers 200 to a request whose signature verifies and 400 to any other;
//   3. DeliveryService/CreateEndpoint: a webhook endpoint for "order.created"
//      posting to the receiver (--url, when notifications reaches it under
//      another address), keeping the secret the answer shows once;
//   4. CreateOrder with an x-correlation-id;
//   5. waits (bounded by the timeout) for the order's delivery and checks it:
//      new Webhook(secret).verify() of the raw body and the headers passes;
//      the type, the order id, the content type, the correlation id,
//      traceparent, user-agent and webhook-id are as docs/delivery.md
//      describes them; the same request with one byte of the body changed
//      does not verify;
//   6. ListDeliveries of the order until the delivery is DELIVERED, its
//      delivery_id being the webhook-id received ("webhook checks passed");
//   7. DisableEndpoint, so that the endpoint does not outlive the receiver.
// Exits 0 when all of that holds, 1 otherwise, 2 on bad usage.
//
// Notifications must allow webhooks to this machine
// (DELIVERY_ALLOW_PRIVATE_NETWORKS=true, as run-local.sh sets it) and have a
// key for the secrets (DELIVERY_SECRET_KEY).
//
//   npm ci && node webhook_example.js [--orders host:port] [--notifications host:port]
//     [--listen host:port] [--url URL]
// Addresses default to ORDERS_ADDR [localhost:50051] and NOTIFICATIONS_ADDR
// [localhost:50052]; PULSE_CLIENT_TIMEOUT_SECS [30] bounds the whole example.
'use strict';

const crypto = require('node:crypto');
const http = require('node:http');
const path = require('node:path');
const { parseArgs } = require('node:util');

const grpc = require('@grpc/grpc-js');
const { Webhook } = require('standardwebhooks');

const { Failure, loadPackages, unary, callWithRetry, sleep } = require('./pulse_client.js');

function log(message) {
  console.log(`[webhook_example.js] ${message}`);
}

// Verifies every POST with the endpoint's secret; resolves waiters with what arrived.
function startReceiver(host, port) {
  const receiver = { secret: undefined, received: [], waiters: [] };
  receiver.server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => {
      // The raw bytes as received: a re-serialised body would not match.
      const body = Buffer.concat(chunks).toString('utf8');
      let event;
      let error;
      try {
        event = new Webhook(receiver.secret).verify(body, req.headers);
      } catch (err) {
        error = err.message;
      }
      res.writeHead(error === undefined ? 200 : 400, { 'content-length': '0' }).end();
      receiver.received.push({ path: req.url, body, headers: req.headers, event, error });
      for (const wake of receiver.waiters.splice(0)) wake();
    });
  });
  return new Promise((resolve, reject) => {
    receiver.server.once('error', reject);
    receiver.server.listen(port, host, () => resolve(receiver));
  });
}

// The first request about `orderId`; a refused one fails the example.
async function waitForDelivery(receiver, orderId, deadline) {
  for (;;) {
    for (const request of receiver.received.splice(0)) {
      if (request.error !== undefined) throw new Failure(`a request to ${request.path} did not verify: ${request.error}`);
      if (request.event?.data?.order_id === orderId) return request;
      log(`ignored a delivery of another order (${request.headers['webhook-id']})`);
    }
    const left = deadline - Date.now();
    if (left <= 0) throw new Failure(`no webhook for order ${orderId} before the timeout`);
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, left);
      receiver.waiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
}

function expect(what, got, want) {
  if (got !== want) throw new Failure(`${what} is ${JSON.stringify(got)}, expected ${JSON.stringify(want)}`);
}

function checkRequest(request, secret, orderId, correlationId) {
  const { headers, event } = request;
  log(`received ${request.path}: webhook-id ${headers['webhook-id']}, verified with standardwebhooks`);
  expect('type', event.type, 'order.created');
  expect('data.order_id', event.data.order_id, orderId);
  expect('content-type', (headers['content-type'] || '').split(';')[0], 'application/json');
  expect('x-correlation-id', headers['x-correlation-id'], correlationId);
  if (!(headers.traceparent || '').startsWith('00-')) throw new Failure(`traceparent is ${headers.traceparent}`);
  if (!(headers['user-agent'] || '').startsWith('pulse-notifications/')) {
    throw new Failure(`user-agent is ${headers['user-agent']}`);
  }
  const tampered = Buffer.from(request.body, 'utf8');
  tampered[tampered.length - 2] ^= 0x01;
  try {
    new Webhook(secret).verify(tampered.toString('utf8'), headers);
  } catch {
    log('the same request with one byte of the body changed does not verify');
    return;
  }
  throw new Failure('a tampered body verified');
}

async function run(args) {
  const timeoutSecs = Number(args.timeout);
  const attempts = Number(args.attempts);
  const deadline = Date.now() + timeoutSecs * 1000;
  const [host, port] = [args.listen.slice(0, args.listen.lastIndexOf(':')), args.listen.split(':').pop()];
  const receiver = await startReceiver(host || '127.0.0.1', Number(port || 0));
  const { address, port: bound } = receiver.server.address();
  const url = args.url || `http://${address}:${bound}/pulse-webhook`;
  log(`receiver listening on ${address}:${bound}, endpoint URL ${url}`);
  const { pulse } = loadPackages(args['proto-dir']);
  const orders = new pulse.pulse.orders.v1.OrderService(args.orders, grpc.credentials.createInsecure());
  const delivery = new pulse.pulse.notifications.v1.DeliveryService(
    args.notifications,
    grpc.credentials.createInsecure(),
  );
  let endpointId;
  try {
    const { response: created } = await callWithRetry(
      'CreateEndpoint',
      () =>
        unary(delivery, 'CreateEndpoint', {
          kind: 'ENDPOINT_KIND_WEBHOOK',
          url,
          event_types: ['order.created'],
          description: 'webhook_example.js',
        }),
      attempts,
      deadline,
    );
    endpointId = created.endpoint.endpoint_id;
    if (!created.secret.startsWith('whsec_')) throw new Failure('the secret does not start with whsec_');
    receiver.secret = created.secret;
    log(`CreateEndpoint: endpoint ${endpointId}, ${created.endpoint.url}, secret whsec_… (shown once)`);

    const correlationId = `node-webhook-${crypto.randomUUID()}`;
    const metadata = new grpc.Metadata();
    metadata.set('x-correlation-id', correlationId);
    const order = { customer_id: args.customer, amount: args.amount, currency: args.currency };
    const { response: createdOrder } = await callWithRetry(
      'CreateOrder',
      () => unary(orders, 'CreateOrder', { ...order, request_id: crypto.randomUUID() }, { metadata }),
      attempts,
      deadline,
    );
    const orderId = createdOrder.order_id;
    log(`CreateOrder: order ${orderId}, correlation ${correlationId}`);
    const request = await waitForDelivery(receiver, orderId, deadline);
    checkRequest(request, created.secret, orderId, correlationId);
    const webhookId = request.headers['webhook-id'];

    let ours;
    for (;;) {
      const { response } = await callWithRetry(
        'ListDeliveries',
        () => unary(delivery, 'ListDeliveries', { order_id: orderId }),
        attempts,
        deadline,
      );
      ours = response.deliveries.filter((d) => d.endpoint_id === endpointId);
      if (ours.length > 1) throw new Failure(`${ours.length} deliveries of order ${orderId} to one endpoint`);
      if (ours.length === 1 && ours[0].status === 'DELIVERY_STATUS_DELIVERED') break;
      if (Date.now() > deadline) throw new Failure(`the delivery of order ${orderId} is not DELIVERED`);
      await sleep(200);
    }
    expect('the delivery_id', ours[0].delivery_id, webhookId);
    log(`ListDeliveries: ${webhookId} DELIVERED after ${ours[0].attempts} attempt(s): webhook checks passed`);
  } finally {
    if (endpointId !== undefined) {
      await unary(delivery, 'DisableEndpoint', { endpoint_id: endpointId }, { timeoutSecs: 10 });
      log(`DisableEndpoint: ${endpointId}`);
    }
    receiver.server.close();
    orders.close();
    delivery.close();
  }
}

async function main() {
  const { values } = parseArgs({
    options: {
      orders: { type: 'string', default: process.env.ORDERS_ADDR || 'localhost:50051' },
      notifications: { type: 'string', default: process.env.NOTIFICATIONS_ADDR || 'localhost:50052' },
      listen: { type: 'string', default: '127.0.0.1:0' },
      url: { type: 'string' },
      'proto-dir': {
        type: 'string',
        default: process.env.PULSE_PROTO_DIR || path.join(__dirname, '..', '..', 'proto'),
      },
      timeout: { type: 'string', default: process.env.PULSE_CLIENT_TIMEOUT_SECS || '30' },
      attempts: { type: 'string', default: '10' },
      customer: { type: 'string', default: 'c-node-webhook' },
      amount: { type: 'string', default: '29.99' },
      currency: { type: 'string', default: 'EUR' },
    },
  });
  try {
    await run(values);
    return 0;
  } catch (err) {
    const detail = err instanceof Failure ? err.message : `${err.code !== undefined ? `gRPC ${err.code}: ` : ''}${err.message}`;
    log(`FAILED: ${detail}`);
    return 1;
  }
}

main().then((code) => {
  process.exitCode = code;
});
