//! The broker baseline of `mess-chat bench`: persistent, mandatory publishes straight through
//! lapin on one confirm-mode channel, with a window of confirms in flight, and no service in the
//! way. It tells how fast this RabbitMQ confirms messages, the ceiling for acknowledged sends.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

use super::{CONFIRM_TIMEOUT, CONNECT_TIMEOUT, durable};
use crate::broker::BrokerError;

/// What one baseline run measured.
#[derive(Debug, Clone, Copy)]
pub struct PublishRun {
    /// Messages the broker confirmed (positively).
    pub confirmed: u64,
    /// From the first publish to the last confirm.
    pub elapsed: Duration,
}

fn unavailable(e: lapin::Error) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

/// Publishes `body` to new durable queues (through the default exchange), each message to the
/// next queue in turn, for about `duration`, keeping up to `window` confirms in flight, then
/// deletes the queues and closes the connection, whether or not the run succeeded. Over many
/// queues it tells what the broker itself pays when the traffic is spread (every queue keeps its
/// own index and syncs it for its own confirms). The queues are declared and deleted
/// [`DECLARES_AT_ONCE`] at a time and, when there are several, each given a first message, all
/// outside the timing.
pub async fn confirmed_publish_rate(
    url: &str,
    queues: &[String],
    body: &[u8],
    window: usize,
    duration: Duration,
) -> Result<PublishRun, BrokerError> {
    if queues.is_empty() {
        return Err(BrokerError::Refused("no queue to publish to".into()));
    }
    let properties = ConnectionProperties::default().with_connection_name("mess-chat-bench".into());
    let connection = tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, properties))
        .await
        .map_err(|_| BrokerError::Unavailable("timed out connecting to RabbitMQ".into()))?
        .map_err(unavailable)?;
    let run = async {
        let admin = connection.create_channel().await.map_err(unavailable)?;
        let declared = each_queue(queues, |queue| {
            let admin = admin.clone();
            async move {
                admin
                    .queue_declare(queue.into(), durable(), FieldTable::default())
                    .await
                    .map(|_| ())
            }
        })
        .await;
        let measured = match declared {
            Ok(()) => {
                async {
                    let publisher = connection.create_channel().await.map_err(unavailable)?;
                    publisher
                        .confirm_select(ConfirmSelectOptions::default())
                        .await
                        .map_err(unavailable)?;
                    // A queue's first message costs far more than the next ones (RabbitMQ opens its
                    // index files then): one each first, outside the timing, as the rooms' first
                    // sends are outside the service's.
                    if queues.len() > 1 {
                        let warm = Until::Sent(queues.len() as u64);
                        publish_for(&publisher, queues, body, window.max(1), warm).await?;
                    }
                    let timed = Until::Elapsed(duration);
                    publish_for(&publisher, queues, body, window.max(1), timed).await
                }
                .await
            }
            Err(e) => Err(e),
        };
        let deleted = each_queue(queues, |queue| {
            let admin = admin.clone();
            async move {
                admin
                    .queue_delete(queue.into(), QueueDeleteOptions::default())
                    .await
                    .map(|_| ())
            }
        })
        .await;
        let run = measured?;
        deleted?;
        Ok(run)
    }
    .await;
    let _ = connection.close(200, "bench done".into()).await;
    run
}

/// Declares or deletes queues at once on one channel, at most this many in flight.
const DECLARES_AT_ONCE: usize = 64;

/// Runs `operation` on every queue, [`DECLARES_AT_ONCE`] at a time; the first error, once all
/// have run.
async fn each_queue<'a, F, Fut>(queues: &'a [String], operation: F) -> Result<(), BrokerError>
where
    F: Fn(&'a str) -> Fut,
    Fut: std::future::Future<Output = lapin::Result<()>>,
{
    let outcomes: Vec<lapin::Result<()>> = futures_util::stream::iter(queues)
        .map(|queue| operation(queue.as_str()))
        .buffer_unordered(DECLARES_AT_ONCE)
        .collect()
        .await;
    outcomes
        .into_iter()
        .collect::<lapin::Result<Vec<()>>>()
        .map(|_| ())
        .map_err(unavailable)
}

/// When [`publish_for`] stops publishing.
#[derive(Clone, Copy)]
enum Until {
    /// Once this long has passed.
    Elapsed(Duration),
    /// Once this many messages were published.
    Sent(u64),
}

/// Publishes to `queues` in turn until `until`, with up to `window` confirms in flight, and waits
/// for the last confirms.
async fn publish_for(
    channel: &Channel,
    queues: &[String],
    body: &[u8],
    window: usize,
    until: Until,
) -> Result<PublishRun, BrokerError> {
    let options = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into());
    let mut in_flight = FuturesUnordered::new();
    let mut confirmed = 0;
    let start = Instant::now();
    let mut next = queues.iter().cycle();
    let mut sent = 0;
    while match until {
        Until::Elapsed(duration) => start.elapsed() < duration,
        Until::Sent(count) => sent < count,
    } {
        if in_flight.len() >= window {
            settle(in_flight.next().await)?;
            confirmed += 1;
        }
        let queue = next.next().expect("at least one queue");
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                options,
                body,
                properties.clone(),
            )
            .await
            .map_err(unavailable)?;
        in_flight.push(tokio::time::timeout(CONFIRM_TIMEOUT, confirm));
        sent += 1;
    }
    while let Some(next) = in_flight.next().await {
        settle(Some(next))?;
        confirmed += 1;
    }
    Ok(PublishRun {
        confirmed,
        elapsed: start.elapsed(),
    })
}

fn settle(
    next: Option<Result<lapin::Result<Confirmation>, tokio::time::error::Elapsed>>,
) -> Result<(), BrokerError> {
    let Some(next) = next else { return Ok(()) };
    let confirmation = next
        .map_err(|_| BrokerError::Unavailable("timed out waiting for a confirm".into()))?
        .map_err(unavailable)?;
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(returned)) => Err(BrokerError::Unroutable(
            returned.delivery.routing_key.to_string(),
        )),
        Confirmation::Nack(_) => Err(BrokerError::Nacked),
        Confirmation::NotRequested => Err(BrokerError::Refused("confirms are off".into())),
    }
}
