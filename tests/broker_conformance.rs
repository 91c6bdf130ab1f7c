//! Conformance suite for the [`Broker`] trait: every test is written once and runs on both back
//! ends, the in-process broker and the real RabbitMQ (unique queue and exchange names, deleted at
//! the end).
//!
//! `cargo test --test broker_conformance` runs `embedded::<test>` and `real::<test>` for each.
//! Every wait is bounded, so a broker that never delivers fails the test instead of hanging it.

#[macro_use]
mod common;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use common::{Backend, Env};
use futures_util::FutureExt;
use mess_chat::broker::{Broker, BrokerError, Delivery, DeliveryStream};
use mess_chat::model::{Alias, RoomName};
use tokio::time::timeout;

on_both_backends!(
    an_acked_message_is_gone_for_the_next_consumer,
    messages_come_out_in_publish_order,
    an_unacked_delivery_is_redelivered_after_its_consumer_goes,
    a_rejected_delivery_is_dropped_without_redelivery,
    a_send_reaches_the_room_queue_and_a_fan_out_every_member_inbox,
    an_unbound_member_no_longer_receives_group_messages,
    a_send_to_a_group_room_whose_queue_is_gone_is_unroutable,
    cluster_events_reach_every_subscriber,
    publishing_to_an_undeclared_private_room_is_unroutable,
    consuming_a_deleted_room_fails,
    only_one_consumer_of_a_room_queue_is_active,
    ping_succeeds,
);

/// Longest wait for a delivery that should come.
const DELIVERY_WAIT: Duration = Duration::from_secs(10);
/// How long to watch for a delivery that should not come.
const QUIET: Duration = Duration::from_millis(300);

/// Runs `test` with `backend`'s broker, then deletes the rooms' queues and exchanges and the
/// aliases' inboxes (even if the test panicked).
async fn with_broker<F, Fut>(
    backend: Backend,
    rooms: &[(RoomName, bool)],
    aliases: &[Alias],
    test: F,
) where
    F: FnOnce(Arc<dyn Broker>) -> Fut,
    Fut: Future<Output = ()>,
{
    let env = Env::new(backend);
    let outcome = AssertUnwindSafe(test(env.broker.clone()))
        .catch_unwind()
        .await;
    env.cleanup(rooms, aliases).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// The next delivery, which must come within [`DELIVERY_WAIT`].
async fn next_delivery(stream: &mut Box<dyn DeliveryStream>) -> Delivery {
    timeout(DELIVERY_WAIT, stream.next())
        .await
        .expect("a delivery in time")
        .expect("the consumer is still open")
        .expect("the delivery is not an error")
}

/// Asserts that nothing is delivered for [`QUIET`] (and that the consumer stays open).
async fn assert_quiet(stream: &mut Box<dyn DeliveryStream>, what: &str) {
    match timeout(QUIET, stream.next()).await {
        Err(_elapsed) => {}
        Ok(Some(Ok(delivery))) => panic!(
            "{what}: unexpected delivery {:?}",
            String::from_utf8_lossy(&delivery.body)
        ),
        Ok(other) => panic!("{what}: the consumer ended: {other:?}"),
    }
}

/// The next delivery, which must carry `body`.
async fn expect_body(stream: &mut Box<dyn DeliveryStream>, body: &[u8]) -> Delivery {
    let delivery = next_delivery(stream).await;
    assert_eq!(
        String::from_utf8_lossy(&delivery.body),
        String::from_utf8_lossy(body)
    );
    delivery
}

/// The next delivery must be `body`, delivered for the first time; it is acked.
async fn expect_fresh(stream: &mut Box<dyn DeliveryStream>, body: &[u8]) {
    let delivery = expect_body(stream, body).await;
    assert!(
        !delivery.redelivered,
        "a first delivery is not marked redelivered"
    );
    delivery.ack().await.expect("ack");
}

/// The next delivery must be the marker published after the previous consumer went away; it is
/// acked. Its redelivered flag is not checked: RabbitMQ closes a dropped consumer's channel in the
/// background, and may have pushed the marker to it first (and then requeued it).
async fn expect_marker(stream: &mut Box<dyn DeliveryStream>) {
    expect_body(stream, MARKER)
        .await
        .ack()
        .await
        .expect("ack marker");
}

/// Published after a consumer went away: what the next consumer must see first.
const MARKER: &[u8] = b"marker";

async fn an_acked_message_is_gone_for_the_next_consumer(backend: Backend) {
    let room = common::room("ack");
    with_broker(
        backend,
        &[(room.clone(), false)],
        &[],
        |broker| async move {
            broker.declare_room(&room, false).await.expect("declare");
            // Not JSON, not UTF-8: the broker carries bytes as they are.
            let body = b"hello \x00\xff\xfe \xc3\xa9".to_vec();
            broker.publish(&room, body.clone()).await.expect("publish");

            let mut first = broker.consume(&room).await.expect("consume");
            let delivery = next_delivery(&mut first).await;
            assert_eq!(delivery.body, body);
            assert!(!delivery.redelivered);
            delivery.ack().await.expect("ack");
            drop(first);

            // A marker published after the ack must be the next consumer's first delivery: were the
            // acked message still queued, it would come first.
            broker
                .publish(&room, MARKER.to_vec())
                .await
                .expect("publish marker");
            let mut second = broker.consume(&room).await.expect("consume again");
            expect_marker(&mut second).await;
            assert_quiet(&mut second, "after the ack").await;
        },
    )
    .await
}

async fn messages_come_out_in_publish_order(backend: Backend) {
    let room = common::room("order");
    with_broker(
        backend,
        &[(room.clone(), false)],
        &[],
        |broker| async move {
            broker.declare_room(&room, false).await.expect("declare");
            let bodies: Vec<Vec<u8>> = (1..=50)
                .map(|i| format!("message {i}").into_bytes())
                .collect();
            // Transient and persistent messages, taking turns, keep one order.
            for (i, body) in bodies.iter().enumerate() {
                if i % 2 == 0 {
                    broker.publish(&room, body.clone()).await.expect("publish");
                } else {
                    let publish = broker.publish_in_memory(&room, body.clone());
                    publish.await.expect("publish in memory");
                }
            }

            let mut stream = broker.consume(&room).await.expect("consume");
            let mut received = Vec::new();
            for _ in &bodies {
                let delivery = next_delivery(&mut stream).await;
                received.push(delivery.body.clone());
                delivery.ack().await.expect("ack");
            }
            assert_eq!(received, bodies);
            assert_quiet(&mut stream, "after all 50").await;
        },
    )
    .await
}

async fn an_unacked_delivery_is_redelivered_after_its_consumer_goes(backend: Backend) {
    let room = common::room("redeliver");
    with_broker(
        backend,
        &[(room.clone(), false)],
        &[],
        |broker| async move {
            broker.declare_room(&room, false).await.expect("declare");
            broker
                .publish(&room, b"keep me".to_vec())
                .await
                .expect("publish");

            let mut first = broker.consume(&room).await.expect("consume");
            let unacked = expect_body(&mut first, b"keep me").await;
            assert!(!unacked.redelivered);
            // Neither acked nor rejected: dropping the consumer hands the message back. (RabbitMQ
            // closes the channel in the background; the next delivery's bounded wait covers that.)
            drop(unacked);
            drop(first);

            let mut second = broker.consume(&room).await.expect("consume again");
            let again = expect_body(&mut second, b"keep me").await;
            assert!(again.redelivered, "a redelivery is marked as such");
            again.ack().await.expect("ack");
            assert_quiet(&mut second, "after acking the redelivery").await;
        },
    )
    .await
}

async fn only_one_consumer_of_a_room_queue_is_active(backend: Backend) {
    let room = common::room("single");
    with_broker(
        backend,
        &[(room.clone(), false)],
        &[],
        |broker| async move {
            broker.declare_room(&room, false).await.expect("declare");
            let mut active = broker.consume(&room).await.expect("consume");
            let one = {
                broker
                    .publish(&room, b"one".to_vec())
                    .await
                    .expect("publish");
                expect_body(&mut active, b"one").await
            };
            let mut standby = broker.consume(&room).await.expect("second consumer");
            broker
                .publish(&room, b"two".to_vec())
                .await
                .expect("publish");
            assert_quiet(&mut standby, "a standby consumer while the first is active").await;
            expect_fresh(&mut active, b"two").await;
            // The active consumer goes with "one" unacked: the standby takes over, from "one".
            drop(one);
            drop(active);
            let again = expect_body(&mut standby, b"one").await;
            assert!(again.redelivered);
            again.ack().await.expect("ack");
            assert_quiet(&mut standby, "after the takeover").await;
        },
    )
    .await
}

async fn a_rejected_delivery_is_dropped_without_redelivery(backend: Backend) {
    let room = common::room("reject");
    with_broker(
        backend,
        &[(room.clone(), false)],
        &[],
        |broker| async move {
            broker.declare_room(&room, false).await.expect("declare");
            broker
                .publish(&room, b"poison".to_vec())
                .await
                .expect("publish");

            let mut first = broker.consume(&room).await.expect("consume");
            let poison = expect_body(&mut first, b"poison").await;
            assert!(!poison.redelivered);
            poison.reject().await.expect("reject");
            assert_quiet(&mut first, "after the reject").await;
            drop(first);

            broker
                .publish(&room, MARKER.to_vec())
                .await
                .expect("publish marker");
            let mut second = broker.consume(&room).await.expect("consume again");
            expect_marker(&mut second).await;
            assert_quiet(&mut second, "after the marker").await;
        },
    )
    .await
}

async fn a_send_reaches_the_room_queue_and_a_fan_out_every_member_inbox(backend: Backend) {
    let room = common::room("group");
    let (a, b) = (common::alias("ann"), common::alias("bob"));
    let aliases = [a.clone(), b.clone()];
    with_broker(
        backend,
        &[(room.clone(), true)],
        &aliases,
        |broker| async move {
            broker.declare_room(&room, true).await.expect("declare");
            broker.bind_member(&room, &a).await.expect("bind a");
            broker.bind_member(&room, &b).await.expect("bind b");
            // Declaring and binding again changes nothing (idempotent).
            broker
                .declare_room(&room, true)
                .await
                .expect("declare again");
            broker.bind_member(&room, &a).await.expect("bind a again");

            broker
                .publish(&room, b"sent".to_vec())
                .await
                .expect("publish");
            broker
                .fan_out(&room, vec![b"stored 1".to_vec(), b"stored 2".to_vec()])
                .await
                .expect("fan out");

            let mut room_queue = broker.consume(&room).await.expect("consume room");
            expect_fresh(&mut room_queue, b"sent").await;
            assert_quiet(
                &mut room_queue,
                "room queue (fan-out copies are for inboxes)",
            )
            .await;
            for (what, mut stream) in [
                (
                    "inbox a",
                    broker.consume_inbox(&a).await.expect("consume a"),
                ),
                (
                    "inbox b",
                    broker.consume_inbox(&b).await.expect("consume b"),
                ),
            ] {
                expect_fresh(&mut stream, b"stored 1").await;
                expect_fresh(&mut stream, b"stored 2").await;
                assert_quiet(&mut stream, what).await;
            }
        },
    )
    .await
}

async fn a_send_to_a_group_room_whose_queue_is_gone_is_unroutable(backend: Backend) {
    let room = common::room("noqueue");
    let a = common::alias("ann");
    let aliases = [a.clone()];
    with_broker(
        backend,
        &[(room.clone(), true)],
        &aliases,
        |broker| async move {
            broker.declare_room(&room, true).await.expect("declare");
            broker.bind_member(&room, &a).await.expect("bind a");
            // Only the room's queue goes (the exchange and the member's inbox stay): a send must
            // not be confirmed just because some other queue could take a copy.
            broker
                .delete_room(&room, false)
                .await
                .expect("delete the queue");
            match broker.publish(&room, b"lost?".to_vec()).await {
                Err(BrokerError::Unroutable(name)) => assert_eq!(name, room.as_str()),
                other => panic!("expected Unroutable, got {other:?}"),
            }
            let mut inbox = broker.consume_inbox(&a).await.expect("consume a");
            assert_quiet(&mut inbox, "the inbox of a member").await;
            // Declared again, the room takes sends again.
            broker
                .declare_room(&room, true)
                .await
                .expect("declare again");
            broker
                .publish(&room, b"found".to_vec())
                .await
                .expect("publish after declaring");
            let mut room_queue = broker.consume(&room).await.expect("consume room");
            expect_fresh(&mut room_queue, b"found").await;
        },
    )
    .await
}

async fn cluster_events_reach_every_subscriber(backend: Backend) {
    with_broker(backend, &[], &[], |broker| async move {
        let mut one = broker.subscribe_events().await.expect("subscribe one");
        let mut two = broker.subscribe_events().await.expect("subscribe two");
        // Events of other tests may pass through; look for ours.
        let ours = format!("event {}", common::unique("e")).into_bytes();
        broker.publish_event(ours.clone()).await.expect("publish");
        for stream in [&mut one, &mut two] {
            let deadline = tokio::time::Instant::now() + DELIVERY_WAIT;
            loop {
                let delivery = timeout(deadline - tokio::time::Instant::now(), stream.next())
                    .await
                    .expect("our event in time")
                    .expect("open")
                    .expect("no error");
                if delivery.body == ours {
                    break;
                }
            }
        }
        // A subscription that ends leaves nothing behind; the other goes on.
        drop(one);
        let later = format!("event {}", common::unique("e")).into_bytes();
        broker.publish_event(later.clone()).await.expect("publish");
        let deadline = tokio::time::Instant::now() + DELIVERY_WAIT;
        loop {
            let delivery = timeout(deadline - tokio::time::Instant::now(), two.next())
                .await
                .expect("the later event in time")
                .expect("open")
                .expect("no error");
            if delivery.body == later {
                break;
            }
        }
    })
    .await
}

async fn an_unbound_member_no_longer_receives_group_messages(backend: Backend) {
    let room = common::room("unbind");
    let (a, b) = (common::alias("ann"), common::alias("bob"));
    let aliases = [a.clone(), b.clone()];
    with_broker(
        backend,
        &[(room.clone(), true)],
        &aliases,
        |broker| async move {
            broker.declare_room(&room, true).await.expect("declare");
            broker.bind_member(&room, &a).await.expect("bind a");
            broker.bind_member(&room, &b).await.expect("bind b");
            let mut inbox_a = broker.consume_inbox(&a).await.expect("consume a");
            let mut inbox_b = broker.consume_inbox(&b).await.expect("consume b");

            broker
                .fan_out(&room, vec![b"before".to_vec()])
                .await
                .expect("fan out");
            for stream in [&mut inbox_a, &mut inbox_b] {
                expect_fresh(stream, b"before").await;
            }

            broker.unbind_member(&room, &b).await.expect("unbind b");
            broker
                .fan_out(&room, vec![b"after".to_vec()])
                .await
                .expect("fan out");
            expect_fresh(&mut inbox_a, b"after").await;
            assert_quiet(&mut inbox_b, "inbox of the unbound member").await;
        },
    )
    .await
}

async fn publishing_to_an_undeclared_private_room_is_unroutable(backend: Backend) {
    let room = common::room("nowhere");
    with_broker(
        backend,
        &[(room.clone(), false)],
        &[],
        |broker| async move {
            match broker.publish(&room, b"lost".to_vec()).await {
                Err(BrokerError::Unroutable(name)) => assert_eq!(name, room.as_str()),
                other => panic!("expected Unroutable, got {other:?}"),
            }
            match broker.publish_in_memory(&room, b"lost".to_vec()).await {
                Err(BrokerError::Unroutable(name)) => assert_eq!(name, room.as_str()),
                other => panic!("expected Unroutable in memory too, got {other:?}"),
            }
            // The broker is still usable afterwards.
            broker.declare_room(&room, false).await.expect("declare");
            broker
                .publish(&room, b"found".to_vec())
                .await
                .expect("publish after declaring");
            let mut stream = broker.consume(&room).await.expect("consume");
            expect_fresh(&mut stream, b"found").await;
        },
    )
    .await
}

async fn consuming_a_deleted_room_fails(backend: Backend) {
    let room = common::room("deleted");
    with_broker(
        backend,
        &[(room.clone(), false)],
        &[],
        |broker| async move {
            broker.declare_room(&room, false).await.expect("declare");
            broker
                .publish(&room, b"doomed".to_vec())
                .await
                .expect("publish");
            broker.delete_room(&room, false).await.expect("delete");

            let consumed = timeout(DELIVERY_WAIT, broker.consume(&room))
                .await
                .expect("consume answers in time");
            assert!(
                consumed.is_err(),
                "consuming a deleted room must fail, not wait"
            );
            // Its messages went with it: publishing there is now unroutable.
            assert!(matches!(
                broker.publish(&room, b"late".to_vec()).await,
                Err(BrokerError::Unroutable(_))
            ));
        },
    )
    .await
}

async fn ping_succeeds(backend: Backend) {
    with_broker(backend, &[], &[], |broker| async move {
        timeout(DELIVERY_WAIT, broker.ping())
            .await
            .expect("ping answers in time")
            .expect("ping");
    })
    .await
}
