//! The channels room consumers share. RabbitMQ allows 2,047 channels on a connection by default,
//! so a channel per room stopped every room past the 2,046th from being stored. Consumers sit
//! [`CONSUMERS_PER_CHANNEL`] to a channel instead, each with its own prefetch window (`basic.qos`
//! with `global = false` applies per consumer), so one connection holds about 500,000 of them.
//! Few channels matter as much as enough of them: lapin checks every channel's flow state before
//! it writes each frame, so with 64 consumers to a channel (157 channels at 10,000 rooms) that
//! check took about 5% of the service's CPU; at 256 to a channel the service's CPU per acked send
//! over 10,000 rooms went from 241 to 197 µs (bench, real back ends).
//!
//! Sharing a channel changes how a consumer lets go of what it holds: closing the channel would
//! take its neighbours down, so a consumer that stops cancels itself and gives back
//! (`basic.nack` with requeue) every delivery it had not settled; the broker hands those to the
//! room's next active consumer. One watcher per connection (not a timer per room) notices a
//! channel the broker closed and tells its consumers, which subscribe again.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use lapin::options::{BasicQosOptions, ConfirmSelectOptions};
use lapin::{Channel, Connection, ConnectionStatus};
use tokio_util::sync::CancellationToken;

use super::PREFETCH;
use crate::metrics as m;

/// Consumers that share one channel.
pub const CONSUMERS_PER_CHANNEL: usize = 256;
/// How often the watcher looks for channels the broker closed.
const CHANNEL_CHECK: Duration = Duration::from_secs(2);
/// Channels a connection keeps for other uses (the shared sends and notices channels, the admin
/// ones, the cluster events' own, and a few to spare), besides the consumers'.
const OTHER_CHANNELS: usize = super::ADMIN_CHANNELS + 8;

/// The channels consumers share on one connection.
#[derive(Clone, Default)]
pub(super) struct ConsumerChannels(Arc<tokio::sync::Mutex<Vec<Shared>>>);

/// One shared channel.
struct Shared {
    channel: Channel,
    /// How many consumers sit on it.
    seated: Arc<AtomicUsize>,
    /// Fired once the channel is found closed.
    closed: CancellationToken,
}

/// A consumer's place on a shared channel; leaving it (drop) frees the place.
pub(super) struct Seat {
    /// The shared channel.
    pub channel: Channel,
    /// Fires when the broker closed the channel (or the connection).
    pub closed: CancellationToken,
    seated: Arc<AtomicUsize>,
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.seated.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ConsumerChannels {
    /// A place for one more consumer: on an open channel with room, or on a new one.
    pub(super) async fn seat(&self, connection: &Connection) -> lapin::Result<Seat> {
        let mut channels = self.0.lock().await;
        drop_closed(&mut channels);
        let free = channels
            .iter()
            .find(|s| s.seated.load(Ordering::Relaxed) < CONSUMERS_PER_CHANNEL);
        if let Some(shared) = free {
            return Ok(shared.seat());
        }
        let most =
            usize::from(connection.configuration().channel_max()).saturating_sub(OTHER_CHANNELS);
        if most > 0 && channels.len() >= most {
            return Err(lapin::Error::from(lapin::ErrorKind::ChannelsLimitReached));
        }
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(PREFETCH, BasicQosOptions { global: false })
            .await?;
        channels.push(Shared {
            channel,
            seated: Arc::new(AtomicUsize::new(0)),
            closed: CancellationToken::new(),
        });
        metrics::gauge!(m::BROKER_CONSUMER_CHANNELS).set(channels.len() as f64);
        Ok(channels.last().expect("just pushed").seat())
    }

    /// Watches the connection's shared channels until the connection is gone: a channel the
    /// broker closed has its consumers told (they subscribe again elsewhere); once the
    /// connection closes, every consumer is.
    pub(super) fn watch(&self, connection: ConnectionStatus) -> impl Future<Output = ()> + use<> {
        let pool: Weak<_> = Arc::downgrade(&self.0);
        async move {
            metrics::gauge!(m::BROKER_CONNECTIONS).increment(1.0);
            loop {
                tokio::time::sleep(CHANNEL_CHECK).await;
                let Some(pool) = pool.upgrade() else { break };
                let mut channels = pool.lock().await;
                if !connection.connected() {
                    for shared in channels.drain(..) {
                        shared.closed.cancel();
                    }
                    metrics::gauge!(m::BROKER_CONSUMER_CHANNELS).set(0.0);
                    break;
                }
                drop_closed(&mut channels);
                metrics::gauge!(m::BROKER_CONSUMER_CHANNELS).set(channels.len() as f64);
            }
            metrics::gauge!(m::BROKER_CONNECTIONS).decrement(1.0);
        }
    }
}

impl Shared {
    fn seat(&self) -> Seat {
        self.seated.fetch_add(1, Ordering::Relaxed);
        Seat {
            channel: self.channel.clone(),
            closed: self.closed.clone(),
            seated: self.seated.clone(),
        }
    }
}

/// Forgets the channels the broker closed, telling their consumers.
fn drop_closed(channels: &mut Vec<Shared>) {
    channels.retain(|shared| {
        let open = shared.channel.status().connected();
        if !open {
            shared.closed.cancel();
        }
        open
    });
}

/// Opens a channel, in confirm mode if asked.
pub(super) async fn open_channel(
    connection: &Connection,
    confirms: bool,
) -> lapin::Result<Channel> {
    let channel = connection.create_channel().await?;
    if confirms {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
    }
    Ok(channel)
}
