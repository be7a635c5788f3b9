#!/usr/bin/env node
// Pulse from Node.js: loads proto/ at run time (@grpc/proto-loader, nothing
// generated or committed), takes one order end to end, then runs the order
// saga (payment, then stock) to COMPLETED and to FAILED, printing each step:
//   1. grpc.health.v1.Health/Check is SERVING on both services, for "" and for
//      each service's full name (health.proto from the grpc-health-check package);
//   2. CreateOrder with an x-correlation-id, which must come back in the body
//      and in the response metadata, and a request_id, so a retry cannot make
//      a second order;
//   3. ListNotifications is polled until the order's notification appears
//      (bounded), which must carry the order's event id and correlation id
//      ("all checks passed"); an order's saga outcome may add a second one;
//   4. the saga, when PaymentService and InventoryService answer: SetStock(
//      "<prefix>-SKU", 5) and SetCustomerCredit(customer, EUR, 50.00) for a
//      prefix new at every run, then an order of 12.34 EUR for 2 of that sku,
//      polled with GetOrder until COMPLETED (the credit then uses 12.34 and
//      the stock holds 2 reserved), and one of 80.00 EUR, polled until FAILED
//      with FAILURE_REASON_PAYMENT_DECLINED, leaving credit and stock as they
//      were ("saga checks passed"). By default the saga runs when both
//      addresses answer within 2 s and is skipped otherwise; --saga requires
//      it (waiting up to the timeout for them), --no-saga skips it.
// Exits 0 when all of that holds, 1 otherwise, 2 on bad usage.
//
// Retry policy (callWithRetry): a call answered UNAVAILABLE is retried, up to
// --attempts calls in all and within the timeout, after the delay the server's
// google.rpc.RetryInfo detail asks for (read from grpc-status-details-bin), or,
// when there is none (the transport failed before any server answered), after
// an exponential backoff from 0.2 s to 5 s. Every other code fails at once.
// --no-health-check skips step 1.
//
//   npm ci && node pulse_client.js [--orders host:port] [--notifications host:port]
//     [--payments host:port] [--inventory host:port] [--saga | --no-saga]
// Addresses default to ORDERS_ADDR [localhost:50051], NOTIFICATIONS_ADDR
// [localhost:50052], PAYMENTS_ADDR [localhost:50053] and INVENTORY_ADDR
// [localhost:50054]; PULSE_CLIENT_TIMEOUT_SECS [30] bounds every wait (and
// each saga order's).
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { parseArgs } = require('node:util');

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const ORDER_SERVICE = 'pulse.orders.v1.OrderService';
const NOTIFICATION_SERVICE = 'pulse.notifications.v1.NotificationService';
const PAYMENT_SERVICE = 'pulse.payments.v1.PaymentService';
const INVENTORY_SERVICE = 'pulse.inventory.v1.InventoryService';
const SAGA_PROBE_SECS = 2;
const SERVING = 'SERVING';

class Failure extends Error {}

function log(message) {
  console.log(`[pulse_client.js] ${message}`);
}

function protoFiles(root) {
  const found = [];
  for (const entry of fs.readdirSync(root, { withFileTypes: true, recursive: true })) {
    if (entry.isFile() && entry.name.endsWith('.proto')) {
      // entry.parentPath is node >= 20.12; entry.path is the older name.
      const dir = entry.parentPath ?? entry.path;
      found.push(path.relative(root, path.join(dir, entry.name)));
    }
  }
  return found.sort();
}

function loadPackages(protoDir) {
  const options = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };
  const files = protoFiles(protoDir);
  if (files.length === 0) throw new Failure(`no .proto files under ${protoDir}`);
  // protobufjs resolves google/protobuf/*.proto (well-known types) by itself.
  const pulse = grpc.loadPackageDefinition(protoLoader.loadSync(files, { ...options, includeDirs: [protoDir] }));
  const healthRoot = path.join(path.dirname(require.resolve('grpc-health-check/package.json')), 'proto');
  const health = grpc.loadPackageDefinition(
    protoLoader.loadSync('health/v1/health.proto', { ...options, includeDirs: [healthRoot] }),
  );
  log(`loaded ${files.length} proto files from ${protoDir} and health.proto from grpc-health-check`);
  return { pulse, health };
}

// Calls a unary method; resolves with { response, metadata } (the response headers).
function unary(client, method, request, { metadata = new grpc.Metadata(), timeoutSecs = 5 } = {}) {
  return new Promise((resolve, reject) => {
    let headers = new grpc.Metadata();
    const deadline = new Date(Date.now() + timeoutSecs * 1000);
    const call = client[method](request, metadata, { deadline }, (err, response) => {
      if (err) reject(err);
      else resolve({ response, metadata: headers });
    });
    call.on('metadata', (received) => {
      headers = received;
    });
  });
}

function waitForReady(client, addr, timeoutSecs) {
  return new Promise((resolve, reject) => {
    client.waitForReady(new Date(Date.now() + timeoutSecs * 1000), (err) => {
      if (err) reject(new Failure(`cannot connect to ${addr} within ${timeoutSecs}s: ${err.message}`));
      else resolve();
    });
  });
}

async function checkHealth(client, addr, names) {
  for (const name of names) {
    const { response } = await unary(client, 'Check', { service: name });
    log(`health ${addr} '${name || '(server)'}': ${response.status}`);
    if (response.status !== SERVING) throw new Failure(`${addr} reports ${response.status} for '${name}'`);
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// [field number, wire type, value] of each field of a protobuf message: enough
// of the wire format to read google.rpc.Status without generated classes.
function* wireFields(buf) {
  let i = 0;
  const varint = () => {
    let value = 0n;
    let shift = 0n;
    for (;;) {
      const byte = buf[i++];
      value |= BigInt(byte & 0x7f) << shift;
      if (byte < 0x80) return value;
      shift += 7n;
    }
  };
  while (i < buf.length) {
    const key = Number(varint());
    const [number, wire] = [key >> 3, key & 7];
    if (wire === 0) {
      yield [number, wire, varint()];
    } else if (wire === 2) {
      const length = Number(varint());
      yield [number, wire, buf.subarray(i, i + length)];
      i += length;
    } else if (wire === 1 || wire === 5) {
      i += wire === 1 ? 8 : 4;
    } else {
      throw new Error(`unsupported wire type ${wire}`);
    }
  }
}

const fieldsOf = (buf) => new Map([...wireFields(buf)].map(([number, , value]) => [number, value]));

// { reason, delayMs } of a gRPC error: the google.rpc.ErrorInfo reason and the
// google.rpc.RetryInfo delay in its grpc-status-details-bin trailer, if any.
function errorDetails(err) {
  const found = { reason: undefined, delayMs: undefined };
  const raw = err.metadata?.get('grpc-status-details-bin')?.[0];
  if (!raw) return found;
  for (const [number, wire, detail] of wireFields(raw)) {
    if (number !== 3 || wire !== 2) continue; // google.rpc.Status.details: repeated Any
    const any = fieldsOf(detail); // 1 type_url, 2 value
    const typeUrl = Buffer.from(any.get(1) ?? []).toString();
    const value = any.get(2) ?? Buffer.alloc(0);
    if (typeUrl.endsWith('/google.rpc.ErrorInfo')) {
      found.reason = Buffer.from(fieldsOf(value).get(1) ?? []).toString();
    } else if (typeUrl.endsWith('/google.rpc.RetryInfo')) {
      const duration = fieldsOf(fieldsOf(value).get(1) ?? Buffer.alloc(0)); // retry_delay
      found.delayMs = Number(duration.get(1) ?? 0n) * 1000 + Number(duration.get(2) ?? 0n) / 1e6;
    }
  }
  return found;
}

// call(), retried on UNAVAILABLE as the header says.
async function callWithRetry(what, call, attempts, deadline) {
  let backoffMs = 200;
  for (let attempt = 1; ; attempt += 1) {
    try {
      return await call();
    } catch (err) {
      if (err.code !== grpc.status.UNAVAILABLE || attempt >= attempts) throw err;
      const { reason, delayMs } = errorDetails(err);
      const source = delayMs !== undefined ? 'as RetryInfo asks' : 'backoff, no RetryInfo';
      let wait = delayMs;
      if (wait === undefined) {
        wait = backoffMs;
        backoffMs = Math.min(backoffMs * 2, 5000);
      }
      if (Date.now() + wait > deadline) throw err;
      log(
        `${what}: UNAVAILABLE (${reason || 'no ErrorInfo'}), attempt ${attempt}; ` +
          `retrying in ${(wait / 1000).toFixed(2)}s (${source})`,
      );
      await sleep(wait);
    }
  }
}

async function run(args) {
  const timeoutSecs = Number(args.timeout);
  const { pulse, health } = loadPackages(path.resolve(args['proto-dir']));
  const credentials = grpc.credentials.createInsecure();
  const clients = [];
  const make = (Ctor, addr) => {
    const client = new Ctor(addr, credentials);
    clients.push(client);
    return client;
  };
  try {
    const ordersHealth = make(health.grpc.health.v1.Health, args.orders);
    const notificationsHealth = make(health.grpc.health.v1.Health, args.notifications);
    await waitForReady(ordersHealth, args.orders, timeoutSecs);
    await waitForReady(notificationsHealth, args.notifications, timeoutSecs);
    if (!args['no-health-check']) {
      await checkHealth(ordersHealth, args.orders, ['', ORDER_SERVICE]);
      await checkHealth(notificationsHealth, args.notifications, ['', NOTIFICATION_SERVICE]);
    }
    const deadline = Date.now() + timeoutSecs * 1000;
    const attempts = Number(args.attempts);

    const orders = make(pulse.pulse.orders.v1.OrderService, args.orders);
    const correlationId = `node-client-${crypto.randomUUID()}`;
    const metadata = new grpc.Metadata();
    metadata.set('x-correlation-id', correlationId);
    const request = {
      customer_id: args.customer,
      amount: args.amount,
      currency: args.currency,
      request_id: crypto.randomUUID(),
    };
    const created = await callWithRetry(
      'CreateOrder',
      () => unary(orders, 'CreateOrder', request, { metadata, timeoutSecs: 10 }),
      attempts,
      deadline,
    );
    const order = created.response;
    log(
      `CreateOrder: order ${order.order_id}, event ${order.event_id}, correlation ${order.correlation_id}, ` +
        `amount ${order.order.amount} ${order.order.currency}`,
    );
    if (order.correlation_id !== correlationId) {
      throw new Failure(`correlation id '${order.correlation_id}', sent '${correlationId}'`);
    }
    const echoed = created.metadata.get('x-correlation-id')[0];
    if (echoed !== correlationId) {
      throw new Failure(`response metadata x-correlation-id is '${echoed}', sent '${correlationId}'`);
    }

    const notifications = make(pulse.pulse.notifications.v1.NotificationService, args.notifications);
    const started = Date.now();
    let found = [];
    let polls = 0;
    for (;;) {
      polls += 1;
      const listed = await callWithRetry(
        'ListNotifications',
        () => unary(notifications, 'ListNotifications', { order_id: order.order_id }),
        attempts,
        deadline,
      );
      found = listed.response.notifications;
      if (found.length > 0) break;
      if (Date.now() - started > timeoutSecs * 1000) {
        throw new Failure(`no notification for order ${order.order_id} after ${timeoutSecs}s (${polls} polls)`);
      }
      await sleep(200);
    }
    for (const n of found) {
      log(`ListNotifications: ${n.notification_id}: '${n.message}' (correlation ${n.correlation_id})`);
    }
    // The order's creation comes first; its saga's outcome may have added one more.
    const ofCreation = found.filter((n) => n.event_id === order.event_id);
    if (ofCreation.length > 1) {
      throw new Failure(`expected exactly one notification of event ${order.event_id}, got ${ofCreation.length}`);
    }
    const notification = ofCreation[0] ?? found[0];
    if (notification.event_id !== order.event_id || notification.correlation_id !== correlationId) {
      throw new Failure(
        `notification carries event ${notification.event_id} / correlation ${notification.correlation_id}, ` +
          `expected ${order.event_id} / ${correlationId}`,
      );
    }
    const waited = ((Date.now() - started) / 1000).toFixed(2);
    log(`notification arrived after ${waited}s (${polls} polls): all checks passed`);
    if (args.saga !== 'off') await runSaga({ pulse, health, args, orders, make });
  } finally {
    for (const client of clients) client.close();
  }
}

// Step 4 of the header, when payments and inventory answer (or --saga).
async function runSaga({ pulse, health, args, orders, make }) {
  const timeoutSecs = Number(args.timeout);
  const wait = args.saga === 'on' ? timeoutSecs : Math.min(SAGA_PROBE_SECS, timeoutSecs);
  const targets = [
    [args.payments, PAYMENT_SERVICE],
    [args.inventory, INVENTORY_SERVICE],
  ].map(([addr, name]) => ({ addr, name, health: make(health.grpc.health.v1.Health, addr) }));
  for (const { addr, health: client } of targets) {
    try {
      await waitForReady(client, addr, wait);
    } catch (err) {
      if (args.saga === 'on') throw new Failure(`${err.message} (--saga needs payments and inventory)`);
      log(`no answer from ${addr} within ${wait}s: saga skipped (pass --saga to require it)`);
      return;
    }
  }
  if (!args['no-health-check']) {
    for (const { addr, name, health: client } of targets) await checkHealth(client, addr, ['', name]);
  }
  // New at every run, so that a second run starts from a fresh stock and credit.
  const prefix = `node-${crypto.randomUUID().replaceAll('-', '').slice(0, 12)}`;
  const saga = {
    orders,
    payments: make(pulse.pulse.payments.v1.PaymentService, args.payments),
    inventory: make(pulse.pulse.inventory.v1.InventoryService, args.inventory),
    sku: `${prefix}-SKU`,
    customer: `${prefix}-customer`,
    timeoutSecs,
    // One unary call, retried on UNAVAILABLE until `deadline`; resolves with the response.
    call: async (client, method, request, deadline, metadata = new grpc.Metadata()) => {
      const attempts = Number(args.attempts);
      const call = () => unary(client, method, request, { metadata, timeoutSecs: 10 });
      return (await callWithRetry(method, call, attempts, deadline)).response;
    },
  };
  const deadline = Date.now() + timeoutSecs * 1000;
  const { stock } = await saga.call(saga.inventory, 'SetStock', { sku: saga.sku, on_hand: 5 }, deadline);
  log(`SetStock: ${stock.sku}: ${stock.on_hand} on hand, ${stock.reserved} reserved`);
  const limit = { customer_id: saga.customer, currency: 'EUR', amount: '50.00' };
  const { credit } = await saga.call(saga.payments, 'SetCustomerCredit', limit, deadline);
  log(`SetCustomerCredit: ${credit.customer_id}: limit ${credit.limit} ${credit.currency}, used ${credit.used}`);
  await sagaOrder(saga, '12.34', 'ORDER_STATUS_COMPLETED', 'FAILURE_REASON_UNSPECIFIED');
  await expectHeld(saga, '12.34', 2);
  await sagaOrder(saga, '80.00', 'ORDER_STATUS_FAILED', 'FAILURE_REASON_PAYMENT_DECLINED');
  await expectHeld(saga, '12.34', 2);
  log('saga checks passed');
}

function describeOrder(order) {
  const lines = order.lines.map((line) => `${line.quantity} x ${line.sku}`).join(', ');
  const failure = order.failure !== 'FAILURE_REASON_UNSPECIFIED' ? ` (${order.failure})` : '';
  return `${order.amount} ${order.currency} for ${lines}: ${order.status}${failure}`;
}

// Creates an order of `amount` EUR for 2 of the saga's sku, polls GetOrder
// (bounded by the timeout) until it leaves CREATED, checks how it ended.
async function sagaOrder(saga, amount, status, failure) {
  const deadline = Date.now() + saga.timeoutSecs * 1000;
  const metadata = new grpc.Metadata();
  metadata.set('x-correlation-id', `node-client-${crypto.randomUUID()}`);
  const request = {
    customer_id: saga.customer,
    amount,
    currency: 'EUR',
    request_id: crypto.randomUUID(),
    lines: [{ sku: saga.sku, quantity: 2 }],
  };
  let { order } = await saga.call(saga.orders, 'CreateOrder', request, deadline, metadata);
  log(`CreateOrder: order ${order.order_id}, ${describeOrder(order)}`);
  if (order.status !== 'ORDER_STATUS_CREATED') {
    throw new Failure(`CreateOrder answered ${order.status}, expected ORDER_STATUS_CREATED`);
  }
  const started = Date.now();
  let polls = 0;
  while (order.status === 'ORDER_STATUS_CREATED') {
    if (Date.now() - started > saga.timeoutSecs * 1000) {
      throw new Failure(`order ${order.order_id} still CREATED after ${saga.timeoutSecs}s (${polls} polls)`);
    }
    await sleep(200);
    polls += 1;
    ({ order } = await saga.call(saga.orders, 'GetOrder', { order_id: order.order_id }, deadline));
  }
  const waited = ((Date.now() - started) / 1000).toFixed(2);
  log(`GetOrder: order ${order.order_id} after ${waited}s (${polls} polls): ${describeOrder(order)}`);
  if (order.status !== status || order.failure !== failure) {
    throw new Failure(`order ${order.order_id} ended ${describeOrder(order)}, expected ${status} / ${failure}`);
  }
}

// The saga's customer uses `used` EUR of 50.00, its sku holds `reserved` of 5.
async function expectHeld(saga, used, reserved) {
  const deadline = Date.now() + saga.timeoutSecs * 1000;
  const asked = { customer_id: saga.customer, currency: 'EUR' };
  const { credit } = await saga.call(saga.payments, 'GetCustomerCredit', asked, deadline);
  log(`GetCustomerCredit: ${credit.customer_id}: limit ${credit.limit} ${credit.currency}, used ${credit.used}`);
  if (credit.limit !== '50.00' || credit.used !== used) {
    throw new Failure(`credit limit ${credit.limit}, used ${credit.used}; expected 50.00, used ${used}`);
  }
  const { stock } = await saga.call(saga.inventory, 'GetStock', { sku: saga.sku }, deadline);
  log(`GetStock: ${stock.sku}: ${stock.on_hand} on hand, ${stock.reserved} reserved, ${stock.available} available`);
  if (stock.on_hand !== 5 || stock.reserved !== reserved) {
    throw new Failure(`stock ${stock.on_hand} on hand, ${stock.reserved} reserved; expected 5, ${reserved} reserved`);
  }
}

async function main() {
  const { values } = parseArgs({
    options: {
      orders: { type: 'string', default: process.env.ORDERS_ADDR || 'localhost:50051' },
      notifications: { type: 'string', default: process.env.NOTIFICATIONS_ADDR || 'localhost:50052' },
      payments: { type: 'string', default: process.env.PAYMENTS_ADDR || 'localhost:50053' },
      inventory: { type: 'string', default: process.env.INVENTORY_ADDR || 'localhost:50054' },
      saga: { type: 'boolean', default: false },
      'no-saga': { type: 'boolean', default: false },
      'proto-dir': {
        type: 'string',
        default: process.env.PULSE_PROTO_DIR || path.join(__dirname, '..', '..', 'proto'),
      },
      timeout: { type: 'string', default: process.env.PULSE_CLIENT_TIMEOUT_SECS || '30' },
      attempts: { type: 'string', default: '10' },
      'no-health-check': { type: 'boolean', default: false },
      customer: { type: 'string', default: 'c-node' },
      amount: { type: 'string', default: '23.45' },
      currency: { type: 'string', default: 'USD' },
    },
  });
  if (values.saga && values['no-saga']) {
    log('usage: --saga and --no-saga exclude each other');
    return 2;
  }
  try {
    await run({ ...values, saga: values.saga ? 'on' : values['no-saga'] ? 'off' : 'auto' });
    return 0;
  } catch (err) {
    const detail = err instanceof Failure ? err.message : `${err.code !== undefined ? `gRPC ${err.code}: ` : ''}${err.message}`;
    log(`FAILED: ${detail}`);
    return 1;
  }
}

// webhook_example.js reuses the loading and calling helpers.
module.exports = { Failure, loadPackages, unary, callWithRetry, sleep };

if (require.main === module) {
  main().then((code) => {
    process.exitCode = code;
  });
}
