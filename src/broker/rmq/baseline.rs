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

/// Publishes `body` to a new durable queue `queue` (through the default exchange) for about
/// `duration`, keeping up to `window` confirms in flight, then deletes the queue and closes the
/// connection, whether or not the run succeeded.
pub async fn confirmed_publish_rate(
    url: &str,
    queue: &str,
    body: &[u8],
    window: usize,
    duration: Duration,
) -> Result<PublishRun, BrokerError> {
    let properties = ConnectionProperties::default().with_connection_name("mess-chat-bench".into());
    let connection = tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, properties))
        .await
        .map_err(|_| BrokerError::Unavailable("timed out connecting to RabbitMQ".into()))?
        .map_err(unavailable)?;
    let run = async {
        let admin = connection.create_channel().await.map_err(unavailable)?;
        admin
            .queue_declare(queue.into(), durable(), FieldTable::default())
            .await
            .map_err(unavailable)?;
        let publisher = connection.create_channel().await.map_err(unavailable)?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(unavailable)?;
        let measured = publish_for(&publisher, queue, body, window.max(1), duration).await;
        let deleted = admin
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await;
        let run = measured?;
        deleted.map_err(unavailable)?;
        Ok(run)
    }
    .await;
    let _ = connection.close(200, "bench done".into()).await;
    run
}

async fn publish_for(
    channel: &Channel,
    queue: &str,
    body: &[u8],
    window: usize,
    duration: Duration,
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
    while start.elapsed() < duration {
        if in_flight.len() >= window {
            settle(in_flight.next().await, queue)?;
            confirmed += 1;
        }
        let confirm = channel
            .basic_publish("".into(), queue.into(), options, body, properties.clone())
            .await
            .map_err(unavailable)?;
        in_flight.push(tokio::time::timeout(CONFIRM_TIMEOUT, confirm));
    }
    while let Some(next) = in_flight.next().await {
        settle(Some(next), queue)?;
        confirmed += 1;
    }
    Ok(PublishRun {
        confirmed,
        elapsed: start.elapsed(),
    })
}

fn settle(
    next: Option<Result<lapin::Result<Confirmation>, tokio::time::error::Elapsed>>,
    queue: &str,
) -> Result<(), BrokerError> {
    let Some(next) = next else { return Ok(()) };
    let confirmation = next
        .map_err(|_| BrokerError::Unavailable("timed out waiting for a confirm".into()))?
        .map_err(unavailable)?;
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => Err(BrokerError::Unroutable(queue.to_string())),
        Confirmation::Nack(_) => Err(BrokerError::Nacked),
        Confirmation::NotRequested => Err(BrokerError::Refused("confirms are off".into())),
    }
}
