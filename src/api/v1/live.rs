//! `GET /api/v1/rooms/{room}/live`: a room's messages pushed over a WebSocket as they are stored.
//!
//! OpenAPI cannot describe a WebSocket, so the contract lives here:
//!
//! - **Request**: `GET /api/v1/rooms/{room}/live?after=<seq>&token=<token>` with the usual
//!   WebSocket upgrade headers. The token comes as `Authorization: Bearer <token>` or, for
//!   browsers (which cannot set headers on a WebSocket), as `token=`; the header wins when both
//!   are given. The caller must be a member of the room.
//! - **Refusals, before the upgrade**, as JSON errors like the rest of the API: 400 (bad room
//!   name, bad query, `after` beyond the room's last sequence number), 401 (no or bad token),
//!   403 (not a member), 404 (no such room), 405/426/400 `websocket_required` (not a WebSocket
//!   request).
//! - **`after`**: the last sequence number the client has seen; the feed starts with the message
//!   numbered `after + 1`. Omitted: the room's last sequence number now (only new messages).
//! - **Server → client**: one text frame per message, the `ChatMessage` JSON exactly as the REST
//!   API returns it, `mess_props.sequence_number` strictly increasing, each message once, no gap.
//!   A client that reconnects with `after=<last seq it saw>` gets what it missed, then live ones.
//! - **Client → server**: nothing is expected; pings are answered, other frames are ignored.
//! - **Close codes from the server**: 1000 "room deleted" (do not reconnect), 1001 "server
//!   shutting down" and 1011 (a back end failed): reconnect with `after`.
//!
//! How: subscribe to the room's feed first, then backfill from history after `after`, then
//! forward the feed, skipping what was already sent. A gap in the feed, or falling behind it
//! (`Lagged`), is filled from history before going on.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::room_name;
use crate::api::AppState;
use crate::api::auth::Caller;
use crate::api::error::ApiError;
use crate::model::{ChatMessage, RoomName};
use crate::service::{ChatError, ChatService, MAX_HISTORY_LIMIT};

/// Largest frame a client may send (it has nothing to say; this bounds what it can make us read).
const MAX_INCOMING_BYTES: usize = 4 * 1024;
/// How long a closing socket waits to send its close frame, and for the client's answer.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Query of `GET /api/v1/rooms/{room}/live`.
#[derive(Debug, Deserialize)]
pub struct LiveQuery {
    /// The last sequence number the client has seen (default: the room's last one now).
    after: Option<u64>,
    /// The bearer token, for clients that cannot send an `Authorization` header.
    token: Option<String>,
}

/// Upgrades a member's request to a WebSocket that pushes the room's messages after `after`.
pub async fn rooms_live(
    State(state): State<AppState>,
    caller: Caller,
    Path(room): Path<String>,
    q: Result<Query<LiveQuery>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let room = room_name(room)?;
    let q = q
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(e.body_text()))?;
    let caller = match (caller, q.token) {
        (Caller(None), Some(token)) => {
            Caller(Some(state.service.auth().authenticate(token.trim()).await?))
        }
        (caller, _) => caller,
    };
    caller.must_be_member(&state, &room, true)?;
    let upgrade =
        upgrade.map_err(|r| ApiError::new(r.status(), "websocket_required", r.body_text()))?;

    let chat_room = state.service.room(&room)?;
    // Subscribe before anything reads history, so every message stored from here on is seen.
    let live = chat_room.subscribe();
    let last = chat_room.last_sequence();
    // Holding the room would keep its feed open after the room is deleted.
    drop(chat_room);
    let after = match q.after {
        None => last,
        Some(after) if after <= last => after,
        Some(after) => {
            return Err(ApiError::bad_request(format!(
                "after={after} is beyond the last message of {room} ({last})"
            )));
        }
    };
    let span = tracing::info_span!("live", %room, after);
    let feed = Feed {
        service: state.service.clone(),
        room,
        live,
        last_sent: after,
    };
    let shutdown = state.service.shutdown_signal();
    Ok(upgrade
        .max_message_size(MAX_INCOMING_BYTES)
        .on_upgrade(move |socket| serve(socket, feed, shutdown).instrument(span)))
}

/// Runs one socket: a send task pushing the feed and a receive task reading the client's frames
/// (which is also what answers its pings); whichever ends first ends the other.
async fn serve(socket: WebSocket, mut feed: Feed, shutdown: CancellationToken) {
    tracing::debug!("live socket open");
    let (mut sink, mut stream) = socket.split();
    let mut send_task = tokio::spawn(
        async move {
            let ending = tokio::select! {
                ending = feed.run(&mut sink) => ending,
                () = shutdown.cancelled() => Ending::Shutdown,
            };
            tracing::debug!(?ending, last_sent = feed.last_sent, "live socket closing");
            // Let go of the service before anything else can wait: it is shutting down, perhaps.
            drop(feed);
            if let Some(frame) = ending.close_frame() {
                let closing = sink.send(Message::Close(Some(frame)));
                let _ = tokio::time::timeout(CLOSE_WAIT, closing).await;
            }
        }
        .in_current_span(),
    );
    let mut recv_task = tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            if let Message::Close(_) = message {
                break;
            }
        }
    });
    tokio::select! {
        _ = &mut send_task => {
            // Let the client answer our close frame, briefly.
            let _ = tokio::time::timeout(CLOSE_WAIT, &mut recv_task).await;
            recv_task.abort();
        }
        _ = &mut recv_task => send_task.abort(),
    }
}

/// Why a feed stopped.
#[derive(Debug)]
enum Ending {
    /// The client went away (a send failed).
    ClientGone,
    /// The room was deleted: there will be no more messages.
    RoomDeleted,
    /// The service is shutting down.
    Shutdown,
    /// Reading history failed; the client should reconnect with `after`.
    Failed(String),
}

impl Ending {
    fn close_frame(&self) -> Option<CloseFrame> {
        let (code, reason) = match self {
            Ending::ClientGone => return None,
            Ending::RoomDeleted => (close_code::NORMAL, "room deleted".to_string()),
            Ending::Shutdown => (close_code::AWAY, "server shutting down".to_string()),
            Ending::Failed(why) => {
                // A close reason is at most 123 bytes.
                let mut end = why.len().min(120);
                while !why.is_char_boundary(end) {
                    end -= 1;
                }
                (close_code::ERROR, why[..end].to_string())
            }
        };
        Some(CloseFrame {
            code,
            reason: reason.into(),
        })
    }
}

impl From<ChatError> for Ending {
    fn from(e: ChatError) -> Self {
        match e {
            ChatError::RoomNotFound(_) => Ending::RoomDeleted,
            e => {
                tracing::warn!(error = %e, "live feed cannot read history");
                Ending::Failed(e.to_string())
            }
        }
    }
}

/// One client's position in one room's messages.
struct Feed {
    service: ChatService,
    room: RoomName,
    /// The room's messages as they are stored (subscribed before the first backfill).
    live: broadcast::Receiver<ChatMessage>,
    /// The sequence number of the last message sent to the client (or the client's `after`).
    last_sent: u64,
}

impl Feed {
    /// Pushes messages until something ends the feed.
    async fn run(&mut self, sink: &mut SplitSink<WebSocket, Message>) -> Ending {
        match self.forward(sink).await {
            Ok(never) => match never {},
            Err(ending) => ending,
        }
    }

    async fn forward(
        &mut self,
        sink: &mut SplitSink<WebSocket, Message>,
    ) -> Result<Infallible, Ending> {
        self.backfill(sink).await?;
        loop {
            let message = match self.live.recv().await {
                Ok(message) => message,
                Err(RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "live feed lagged; catching up from history");
                    self.backfill(sink).await?;
                    continue;
                }
                Err(RecvError::Closed) => return Err(Ending::RoomDeleted),
            };
            let seq = sequence(&message);
            if seq > self.last_sent + 1 {
                self.backfill(sink).await?;
            }
            if seq > self.last_sent {
                self.push(sink, &message).await?;
            }
        }
    }

    /// Sends every stored message after `last_sent`, page by page.
    async fn backfill(&mut self, sink: &mut SplitSink<WebSocket, Message>) -> Result<(), Ending> {
        loop {
            let page = self
                .service
                .page(&self.room, None, Some(self.last_sent), MAX_HISTORY_LIMIT)
                .await?;
            // Numbered but not stored yet: the feed brings them.
            if page.messages.is_empty() {
                return Ok(());
            }
            for message in &page.messages {
                if sequence(message) > self.last_sent {
                    self.push(sink, message).await?;
                }
            }
            if !page.more {
                return Ok(());
            }
        }
    }

    async fn push(
        &mut self,
        sink: &mut SplitSink<WebSocket, Message>,
        message: &ChatMessage,
    ) -> Result<(), Ending> {
        let seq = sequence(message);
        if seq != self.last_sent + 1 {
            // Stored numbers have no gaps; if they ever do, say so rather than stall the client.
            tracing::warn!(last_sent = self.last_sent, seq, "gap in the live feed");
        }
        let text = serde_json::to_string(message).map_err(|e| Ending::Failed(e.to_string()))?;
        sink.send(Message::text(text))
            .await
            .map_err(|_| Ending::ClientGone)?;
        self.last_sent = seq;
        Ok(())
    }
}

/// A stored message's sequence number (stored messages always have one).
fn sequence(message: &ChatMessage) -> u64 {
    message.mess_props.sequence_number.unwrap_or(0)
}
