//! One order, one trace, across the four processes: the caller's
//! `traceparent` continues through every hop of the saga (the order's
//! commands, the participants' replies, the outcome and its notification),
//! each message published under a producer span and processed under a
//! consumer span of that same trace, in the service that sent or took it.

use std::time::Duration;

use contracts::orders::v1::OrderStatus;
use testkit::otlp::{Collected, Receiver, attribute, hex};

use crate::support::{SagaSystem, api, saga};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const INCOMING: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Each hop: who publishes it, who processes it, its routing key.
const HOPS: [(&str, &str, &str); 6] = [
    ("orders", "payments", "payment.process"),
    ("payments", "orders", "payment.processed"),
    ("orders", "inventory", "inventory.reserve"),
    ("inventory", "orders", "inventory.reserved"),
    ("orders", "notifications", "order.created"),
    ("orders", "notifications", "order.completed"),
];

/// The `operation` span (`publish` or `process`) of `service` for `key`, in the trace.
fn find<'a>(spans: &'a [Collected], service: &str, operation: &str, key: &str) -> Option<&'a Collected> {
    spans.iter().find(|c| {
        c.service == service
            && hex(&c.span.trace_id) == TRACE_ID
            && attribute(&c.span, "messaging.operation.name").as_deref() == Some(operation)
            && attribute(&c.span, "messaging.rabbitmq.destination.routing_key").as_deref() == Some(key)
    })
}

/// The hops not (yet) seen whole: a publish span and a process span each.
fn missing(spans: &[Collected]) -> Vec<String> {
    let mut missing = Vec::new();
    for (from, to, key) in HOPS {
        if find(spans, from, "publish", key).is_none() {
            missing.push(format!("{from} publish {key}"));
        }
        if find(spans, to, "process", key).is_none() {
            missing.push(format!("{to} process {key}"));
        }
    }
    missing
}

#[tokio::test(flavor = "multi_thread")]
async fn saga_one_order_is_one_trace_across_the_four_services() {
    let (receiver, otlp) = Receiver::start().await;
    let endpoint = format!("http://{otlp}");
    let system = SagaSystem::start_with(|spec| spec.env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint), |spec| spec).await;
    saga::set_stock(system.inventory.addr(), "SKU-TRACE", 5).await;

    let mut request = tonic::Request::new(saga::request("c-trace", "10.00", &[("SKU-TRACE", 1)]));
    request.metadata_mut().insert("traceparent", INCOMING.parse().expect("ascii"));
    let response = api::orders(system.orders.addr()).create_order(request).await.expect("CreateOrder").into_inner();
    let order_id = response.order.expect("order").order_id;
    let order = saga::ended(system.orders.addr(), &order_id, Duration::from_secs(30)).await;
    assert_eq!(order.status(), OrderStatus::Completed);
    api::notification_messages(system.notifications.addr(), &order_id, 2, Duration::from_secs(30)).await;

    // Spans leave each process in batches: wait (bounded) for every hop's two.
    let receiver = &receiver;
    let whole =
        testkit::eventually(Duration::from_secs(30), || async move { missing(&receiver.collected()).is_empty() }).await;
    let spans = receiver.collected();
    assert!(whole, "hops missing from trace {TRACE_ID}: {:?}", missing(&spans));
    // Each consumer span is a child of its message's producer span.
    for (from, to, key) in HOPS {
        let publish = find(&spans, from, "publish", key).expect("publish span");
        let process = find(&spans, to, "process", key).expect("process span");
        assert_eq!(
            process.span.parent_span_id, publish.span.span_id,
            "{to} processing {key} continues {from}'s publish"
        );
    }
}
