//! The delivery limits RabbitMQ 4 would otherwise default (20 on every
//! quorum queue): the poison and dead-letter queues declare theirs, a message
//! returned to the DLQ more often than 20 times stays there, and queues that
//! exist from before the limit still declare.

use inbox::{KEEP_DELIVERY_LIMIT, Topology};
use lapin::{
    BasicProperties, Channel,
    options::{BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

use crate::{amqp::Broker, support::config};

fn quorum(limit: Option<i64>) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(ShortString::from("x-queue-type"), AMQPValue::LongString(LongString::from("quorum")));
    if let Some(limit) = limit {
        args.insert(ShortString::from("x-delivery-limit"), AMQPValue::LongLongInt(limit));
    }
    args
}

/// Declares `queue` with `args` on a channel of its own: whether the broker agreed.
async fn declares(connection: &lapin::Connection, queue: &str, args: FieldTable) -> bool {
    let channel = connection.create_channel().await.unwrap();
    channel.queue_declare(ShortString::from(queue), QueueDeclareOptions::durable(), args).await.is_ok()
}

async fn returned_until_gone(channel: &Channel, queue: &str, returns: usize) -> usize {
    for returned in 0..returns {
        let Some(message) = channel.basic_get(ShortString::from(queue), BasicGetOptions::default()).await.unwrap()
        else {
            return returned;
        };
        let requeue = BasicNackOptions { requeue: true, ..BasicNackOptions::default() };
        channel.basic_nack(message.delivery.delivery_tag, requeue).await.unwrap();
    }
    returns
}

#[tokio::test]
async fn a_dead_letter_returned_more_often_than_rabbitmq_4s_default_limit_is_kept() {
    let broker = Broker::connect().await;
    let topology: Topology = config().topology();
    let _sweep = testkit::consumer::Sweep(topology.clone());
    let connection = testkit::amqp_connection().await;
    topology.declare(&connection).await.expect("the topology declares");
    for queue in [&topology.dead_letter, &topology.poison] {
        assert!(declares(&connection, queue, quorum(Some(KEEP_DELIVERY_LIMIT))).await, "{queue} has its limit");
    }

    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let routing = ShortString::from(topology.dead_letter.as_str());
    let publish = BasicPublishOptions::default();
    let confirm = channel.basic_publish("".into(), routing, publish, b"dead", BasicProperties::default()).await;
    confirm.unwrap().await.unwrap();
    assert_eq!(returned_until_gone(&channel, &topology.dead_letter, 25).await, 25, "returned 25 times, still there");
    let kept = channel.basic_get(ShortString::from(topology.dead_letter.as_str()), BasicGetOptions::default());
    assert_eq!(kept.await.unwrap().expect("the dead letter is kept").delivery.data, b"dead");
    broker.delete(&topology).await;
}

#[tokio::test]
async fn queues_declared_before_their_delivery_limit_still_declare() {
    let broker = Broker::connect().await;
    let topology: Topology = config().topology();
    let _sweep = testkit::consumer::Sweep(topology.clone());
    let connection = testkit::amqp_connection().await;
    // As an earlier version declared them: no delivery limit.
    for queue in [&topology.dead_letter, &topology.poison] {
        assert!(declares(&connection, queue, quorum(None)).await);
    }
    topology.declare(&connection).await.expect("declares over the older queues");
    topology.declare(&connection).await.expect("and again");
    for queue in [&topology.dead_letter, &topology.poison] {
        assert!(declares(&connection, queue, quorum(None)).await, "{queue} is left as it was");
    }
    broker.delete(&topology).await;
}
