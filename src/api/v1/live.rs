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
//! - **Close codes from the server**: 1000 "room deleted" (do not reconnect), 4403 "no longer a
//!   member" (removed from the room, or left it, on any instance: do not reconnect), 4408 "fell
//!   behind" (the client read slower than the room talks, or stopped reading for 10 s: reconnect
//!   with the `after` the reason names), 1001 "server shutting down" and 1011 (a back end failed):
//!   reconnect with `after`.
//! - **Keep-alive**: the server pings every 20 s; a client that answers nothing for 40 s is
//!   dropped.
//!
//! The feed itself (backfill, then live messages, with no gap or duplicate) is the service's
//! [`Follow`]; this handler only moves its messages onto the socket.

use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde::Deserialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::room_name;
use crate::api::AppState;
use crate::api::auth::Caller;
use crate::api::error::ApiError;
use crate::service::{Follow, FollowEnd};

/// Close code telling a follower it is no longer a member of the room.
pub const CLOSE_NOT_A_MEMBER: u16 = 4403;
/// Close code telling a follower it read too slowly: reconnect with `after`.
pub const CLOSE_TOO_SLOW: u16 = 4408;
/// How often the server pings an open socket; a client silent for two of these is gone.
pub const PING_EVERY: Duration = Duration::from_secs(20);
/// Longest a frame may take to write: a client that reads no more is cut off.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Buffer sizes of a socket: chat frames are small, so an idle socket costs a few KiB.
const READ_BUFFER: usize = 4 * 1024;
const MAX_WRITE_BUFFER: usize = 64 * 1024;

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

/// A member's live feed of the room, over a WebSocket: each stored message as one text frame (the
/// `ChatMessage` JSON), sequence numbers strictly increasing, each once; `after` resumes after
/// the last one seen. Close codes: 1000 room deleted, 4403 no longer a member, 1001 server
/// stopping, 1011 history unreadable (reconnect with `after`). The token may come as `token=`,
/// for browsers.
#[utoipa::path(get, path = "/api/v1/rooms/{room}/live", security(("bearer" = [])),
    params(("room" = String, Path),
        ("after" = Option<u64>, Query, description = "the last sequence number seen"),
        ("token" = Option<String>, Query, description = "the bearer token, for browsers")),
    responses((status = 101, description = "switching to the WebSocket feed"),
        (status = 400, body = super::ErrorBody), (status = 401, body = super::ErrorBody),
        (status = 403, body = super::ErrorBody), (status = 404, body = super::ErrorBody),
        (status = 426, description = "not a WebSocket request", body = super::ErrorBody)))]
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
    let me = caller.alias()?;
    let follow = state.service.follow(Some(me), &room, q.after).await?;
    let upgrade =
        upgrade.map_err(|r| ApiError::new(r.status(), "websocket_required", r.body_text()))?;
    let span = tracing::info_span!("live", %room, after = follow.last_sent());
    let shutdown = state.service.shutdown_signal();
    Ok(upgrade
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_frame_size(MAX_INCOMING_BYTES)
        .max_message_size(MAX_INCOMING_BYTES)
        .on_upgrade(move |socket| serve(socket, follow, shutdown).instrument(span)))
}

/// Runs one socket in one loop: the feed's next message is written (within [`SEND_TIMEOUT`]: a
/// reader that stops reading is cut off), the client's frames are read (a `Close` ends it; its
/// pings are answered by the WebSocket layer), and every [`PING_EVERY`] the server pings; a
/// client silent for two pings in a row is gone.
async fn serve(mut socket: WebSocket, mut follow: Follow, shutdown: CancellationToken) {
    tracing::debug!("live socket open");
    let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
    let mut heard = Instant::now();
    let ending = loop {
        tokio::select! {
            () = shutdown.cancelled() => break Ending::Shutdown,
            next = follow.next() => {
                let message = match next {
                    Ok(message) => message,
                    Err(end) => break Ending::Feed(end),
                };
                let Ok(text) = serde_json::to_string(&message) else {
                    break Ending::Feed(FollowEnd::Failed("cannot encode a message".into()));
                };
                match tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::text(text))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break Ending::ClientGone,
                    Err(_) => break Ending::Feed(FollowEnd::TooSlow),
                }
            }
            frame = socket.recv() => match frame {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break Ending::ClientGone,
                Some(Ok(_)) => heard = Instant::now(),
            },
            _ = ping.tick() => {
                if heard.elapsed() > 2 * PING_EVERY {
                    break Ending::PeerSilent;
                }
                let pinged = socket.send(Message::Ping(Default::default()));
                if !matches!(tokio::time::timeout(SEND_TIMEOUT, pinged).await, Ok(Ok(()))) {
                    break Ending::PeerSilent;
                }
            }
        }
    };
    tracing::debug!(
        ?ending,
        last_sent = follow.last_sent(),
        "live socket closing"
    );
    let resume_after = follow.last_sent();
    // Let go of the room before anything else can wait: the service may be stopping.
    drop(follow);
    if let Some(frame) = ending.close_frame(resume_after) {
        let closing = socket.send(Message::Close(Some(frame)));
        if matches!(tokio::time::timeout(CLOSE_WAIT, closing).await, Ok(Ok(()))) {
            // Let the client answer the close frame, briefly.
            let answered = async { while let Some(Ok(_)) = socket.recv().await {} };
            let _ = tokio::time::timeout(CLOSE_WAIT, answered).await;
        }
    }
}

/// Why a socket stopped.
#[derive(Debug)]
enum Ending {
    /// The client went away (closed, or a write failed).
    ClientGone,
    /// The client answered no ping for two rounds: the connection is dead.
    PeerSilent,
    /// The service is shutting down.
    Shutdown,
    /// The feed ended.
    Feed(FollowEnd),
}

impl Ending {
    /// The close frame to send, if any; `resume_after` is the last sequence number sent.
    fn close_frame(&self, resume_after: u64) -> Option<CloseFrame> {
        let (code, reason) = match self {
            Ending::ClientGone | Ending::PeerSilent => return None,
            Ending::Feed(FollowEnd::RoomDeleted) => (close_code::NORMAL, "room deleted".into()),
            Ending::Feed(FollowEnd::Removed) => {
                (CLOSE_NOT_A_MEMBER, "no longer a member of the room".into())
            }
            Ending::Feed(FollowEnd::TooSlow) => (
                CLOSE_TOO_SLOW,
                format!("fell behind; reconnect with after={resume_after}"),
            ),
            Ending::Shutdown => (close_code::AWAY, "server shutting down".to_string()),
            Ending::Feed(FollowEnd::Failed(why)) => {
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
