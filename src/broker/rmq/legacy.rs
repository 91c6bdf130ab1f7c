//! The RabbitMQ topology of earlier versions, taken apart by `mess-chat migrate`.
//!
//! Earlier versions published a group room's messages to its fanout exchange `R`, bound to the
//! room's queue `R` and to every member's inbox, a queue named after the alias itself. Today a
//! send goes straight to the room's queue and only numbered copies go through `R`, to inboxes
//! named `inbox.<alias>` ([`super::inbox_queue`]). Left in place, the old binding `R → R` would
//! feed the room's own numbered copies back to its queue, and an old inbox `<alias>` would keep
//! collecting copies nobody reads and would take the name of a room called like the alias (the
//! course's private room named after its recipient). This removes both: it unbinds `R` from `R`
//! and each member's old inbox from `R`, then deletes each old inbox that has no consumer, unless
//! a room now bears its name. Run with every instance stopped; running it again changes nothing.

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};

use super::bounded;
use crate::broker::BrokerError;
use crate::model::{Alias, RoomName};

/// A group room as the store knows it.
pub struct LegacyRoom {
    pub name: RoomName,
    pub members: Vec<Alias>,
}

/// What [`upgrade`] changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Upgraded {
    /// Bindings removed (a room's queue to its exchange, or an old inbox to a room's exchange).
    pub unbound: usize,
    /// Old inboxes (`<alias>` queues) deleted.
    pub deleted: usize,
    /// Old inboxes kept because a consumer still reads them (an instance of the earlier version
    /// is running): run again once it is stopped.
    pub in_use: Vec<String>,
}

/// Takes the earlier topology of `rooms` apart; `is_room` tells whether a name is a room's today
/// (its queue is that room's, never deleted).
pub async fn upgrade(
    url: &str,
    rooms: &[LegacyRoom],
    is_room: impl Fn(&str) -> bool,
) -> Result<Upgraded, BrokerError> {
    let connect = |node: String| async move {
        let properties =
            ConnectionProperties::default().with_connection_name("mess-chat-migrate".into());
        Connection::connect(&node, properties).await
    };
    let (_, connection) = super::first_node(&super::node_urls(url), 0, connect).await?;
    let result = take_apart(&connection, rooms, is_room).await;
    let _ = connection.close(200, "migrated".into()).await;
    result
}

async fn take_apart(
    connection: &Connection,
    rooms: &[LegacyRoom],
    is_room: impl Fn(&str) -> bool,
) -> Result<Upgraded, BrokerError> {
    let mut upgraded = Upgraded::default();
    let mut old_inboxes = std::collections::BTreeSet::new();
    for room in rooms {
        let exchange = room.name.as_str();
        // A missing exchange or queue closes the channel with 404: one channel per question.
        if !exists(connection, exchange, Kind::Exchange).await? {
            continue;
        }
        let queues = std::iter::once(exchange).chain(room.members.iter().map(Alias::as_str));
        for queue in queues {
            if exists(connection, queue, Kind::Queue).await? {
                let channel = channel(connection).await?;
                let unbind = channel.queue_unbind(
                    queue.into(),
                    exchange.into(),
                    "".into(),
                    FieldTable::default(),
                );
                bounded(unbind).await?.map_err(unavailable)?;
                let _ = channel.close(200, "unbound".into()).await;
                upgraded.unbound += 1;
                if queue != exchange {
                    old_inboxes.insert(queue.to_string());
                }
            }
        }
    }
    for inbox in old_inboxes.into_iter().filter(|q| !is_room(q)) {
        let channel = channel(connection).await?;
        let options = QueueDeleteOptions {
            if_unused: true,
            ..QueueDeleteOptions::default()
        };
        match bounded(channel.queue_delete(inbox.as_str().into(), options)).await? {
            Ok(_) => {
                let _ = channel.close(200, "deleted".into()).await;
                upgraded.deleted += 1;
            }
            Err(e) if is_precondition_failed(&e) => upgraded.in_use.push(inbox),
            Err(e) => return Err(unavailable(e)),
        }
    }
    Ok(upgraded)
}

#[derive(Clone, Copy)]
enum Kind {
    Queue,
    Exchange,
}

/// Whether a queue or exchange of that name exists (a passive declare on a channel of its own).
async fn exists(connection: &Connection, name: &str, kind: Kind) -> Result<bool, BrokerError> {
    let channel = channel(connection).await?;
    let answer = match kind {
        Kind::Queue => {
            let options = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            bounded(async {
                channel
                    .queue_declare(name.into(), options, FieldTable::default())
                    .await
                    .map(|_| ())
            })
            .await?
        }
        Kind::Exchange => {
            let options = lapin::options::ExchangeDeclareOptions {
                passive: true,
                ..lapin::options::ExchangeDeclareOptions::default()
            };
            let declare = channel.exchange_declare(
                name.into(),
                lapin::ExchangeKind::Fanout,
                options,
                FieldTable::default(),
            );
            bounded(declare).await?
        }
    };
    match answer {
        Ok(()) => {
            let _ = channel.close(200, "checked".into()).await;
            Ok(true)
        }
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(unavailable(e)),
    }
}

async fn channel(connection: &Connection) -> Result<Channel, BrokerError> {
    bounded(connection.create_channel())
        .await?
        .map_err(unavailable)
}

fn is_not_found(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 404)
}

fn is_precondition_failed(e: &lapin::Error) -> bool {
    matches!(
        e.kind(),
        lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == super::PRECONDITION_FAILED
    )
}

fn unavailable(e: lapin::Error) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}
