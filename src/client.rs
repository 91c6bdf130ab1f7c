//! A small client for the API, used by the CLI's client commands and by the tests: HTTP calls,
//! and [`LiveFeed`], a room's live WebSocket that reconnects by itself where it left off.

use std::time::Duration;

use futures_util::StreamExt;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::{AUTHORIZATION, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use crate::api::seed::SendResponse;
use crate::backoff::Backoff;
use crate::model::{ChatMessage, RoomMeta};
use crate::service::HistoryPage;

/// What a path segment may hold unescaped.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.');
/// Longest wait [`Client::send_retrying`] makes between two attempts.
pub const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);
/// Longest wait for a WebSocket handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a client call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached or answered something unreadable.
    #[error("request failed: {0}")]
    Http(#[from] reqwest::Error),
    /// The server answered with an error status.
    #[error("server answered {status}: {body}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The JSON error body.
        body: Value,
    },
    /// The server answered 429: over a rate limit; the same request can succeed after
    /// `retry_after`.
    #[error("rate limited (retry in {} s): {body}", retry_after.as_secs())]
    RateLimited {
        /// The server's `Retry-After` (1 s if it sent none).
        retry_after: Duration,
        /// The JSON error body.
        body: Value,
    },
    /// The WebSocket failed.
    #[error("websocket: {0}")]
    WebSocket(#[from] Box<tungstenite::Error>),
    /// The server sent something that is not what the API promises.
    #[error("unexpected answer: {0}")]
    Protocol(String),
}

impl ClientError {
    /// Whether trying again cannot help (the server refused the request itself).
    pub fn is_refusal(&self) -> bool {
        matches!(self, ClientError::Status { status, .. } if (400..500).contains(status))
    }
}

/// Answer of `POST /api/v1/users`.
#[derive(Debug, Clone, Deserialize)]
pub struct Registered {
    /// The alias.
    pub alias: String,
    /// Its bearer token (shown this once).
    pub token: String,
}

/// Parameters of `/send/`, exactly as the seed names them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SendParams {
    /// The room.
    pub room_name: String,
    /// The text.
    pub message: String,
    /// The sender.
    pub from_alias: String,
    /// The other alias (private rooms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_alias: Option<String>,
    /// Group room or private room.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_room: Option<bool>,
    /// Makes retries safe: the same room, sender and key are stored once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// How long a pooled connection may sit idle before the client drops it: below the server's
/// keep-alive limit (15 s, `HttpLimits::header_read_timeout`), so that the client never sends a
/// request on a connection the server is closing at that moment (the request would meet a
/// connection reset).
pub const POOL_IDLE: std::time::Duration = std::time::Duration::from_secs(5);

/// An HTTP client whose pooled connections stay within the server's keep-alive limit.
pub fn http_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder().pool_idle_timeout(POOL_IDLE)
}

/// A client of one mess-chat server.
#[derive(Clone)]
pub struct Client {
    /// Base URL, without a trailing slash.
    base: String,
    http: reqwest::Client,
    /// Sent as `Authorization: Bearer` when set.
    token: Option<String>,
}

impl Client {
    /// A client of the server at `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: impl Into<String>) -> Self {
        Self {
            base: base.into().trim_end_matches('/').to_string(),
            http: http_builder()
                .build()
                .expect("an HTTP client with default TLS"),
            token: None,
        }
    }

    /// The same client, sending `token` (if any) with every request.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.authorized(self.http.get(format!("{}{path}", self.base)))
    }

    fn post(&self, path: &str, body: &Value) -> reqwest::RequestBuilder {
        self.authorized(self.http.post(format!("{}{path}", self.base)).json(body))
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn check(response: reqwest::Response) -> Result<reqwest::Response, ClientError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let body = response.json().await.unwrap_or(Value::Null);
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(ClientError::RateLimited {
                retry_after: Duration::from_secs(retry_after.unwrap_or(1).max(1)),
                body,
            });
        }
        Err(ClientError::Status {
            status: status.as_u16(),
            body,
        })
    }

    /// `GET /send/`.
    pub async fn send(&self, params: &SendParams) -> Result<SendResponse, ClientError> {
        let response = self.get("/send/").query(params).send().await?;
        Ok(Self::check(response).await?.json().await?)
    }

    /// `GET /send/`, trying again after the server's `Retry-After` while it answers 429, at most
    /// `attempts` times in all (each wait at most [`MAX_RATE_LIMIT_WAIT`]). The retries carry an
    /// idempotency key (the caller's, or a new one), so they stay one message.
    pub async fn send_retrying(
        &self,
        params: &SendParams,
        attempts: u32,
    ) -> Result<SendResponse, ClientError> {
        let mut params = params.clone();
        let mut attempt = 1;
        loop {
            match self.send(&params).await {
                Err(ClientError::RateLimited { retry_after, body }) if attempt < attempts => {
                    let wait = retry_after.min(MAX_RATE_LIMIT_WAIT);
                    tracing::info!(?body, wait_s = wait.as_secs(), "rate limited; retrying");
                    if params.idempotency_key.is_none() {
                        params.idempotency_key = Some(uuid::Uuid::new_v4().to_string());
                    }
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }

    /// `GET /messages/`: the room's newest messages as texts, oldest first.
    pub async fn messages(
        &self,
        room_name: &str,
        limit: Option<usize>,
    ) -> Result<Vec<String>, ClientError> {
        let mut query = vec![("room_name", room_name.to_string())];
        query.extend(limit.map(|l| ("limit", l.to_string())));
        let response = self.get("/messages/").query(&query).send().await?;
        Ok(Self::check(response).await?.json().await?)
    }

    /// `POST /api/v1/users`: registers an alias and returns its token.
    pub async fn register(&self, alias: &str) -> Result<Registered, ClientError> {
        let body = serde_json::json!({ "alias": alias });
        let response = self.post("/api/v1/users", &body).send().await?;
        Ok(Self::check(response).await?.json().await?)
    }

    /// `POST /api/v1/rooms`: a group room, or a private room with `member`.
    pub async fn create_room(
        &self,
        name: &str,
        member: Option<&str>,
    ) -> Result<RoomMeta, ClientError> {
        let body =
            serde_json::json!({ "name": name, "group_room": member.is_none(), "member": member });
        let response = self.post("/api/v1/rooms", &body).send().await?;
        Ok(Self::check(response).await?.json().await?)
    }

    /// `POST /api/v1/rooms/{room}/members`: adds `alias` (yourself, to join) to a group room.
    pub async fn add_member(&self, room: &str, alias: &str) -> Result<RoomMeta, ClientError> {
        let path = format!("/api/v1/rooms/{}/members", segment(room));
        let body = serde_json::json!({ "alias": alias });
        let response = self.post(&path, &body).send().await?;
        Ok(Self::check(response).await?.json().await?)
    }

    /// `POST /api/v1/rooms/{room}/messages`: sends a message as the token's alias.
    pub async fn post_message(&self, room: &str, text: &str) -> Result<SendResponse, ClientError> {
        let path = format!("/api/v1/rooms/{}/messages", segment(room));
        let body = serde_json::json!({ "message": text });
        let response = self.post(&path, &body).send().await?;
        Ok(Self::check(response).await?.json().await?)
    }

    /// `GET /api/v1/rooms`: the rooms the caller is a member of.
    pub async fn rooms(&self) -> Result<Vec<RoomMeta>, ClientError> {
        let response = self.get("/api/v1/rooms").send().await?;
        Ok(Self::check(response).await?.json().await?)
    }

    /// `GET /api/v1/rooms/{room}`: a room's metadata.
    pub async fn room(&self, room: &str) -> Result<RoomMeta, ClientError> {
        let path = format!("/api/v1/rooms/{}", segment(room));
        Ok(Self::check(self.get(&path).send().await?)
            .await?
            .json()
            .await?)
    }

    /// `DELETE /api/v1/rooms/{room}`: deletes a room (its owner only).
    pub async fn delete_room(&self, room: &str) -> Result<(), ClientError> {
        let url = format!("{}/api/v1/rooms/{}", self.base, segment(room));
        Self::check(self.authorized(self.http.delete(url)).send().await?).await?;
        Ok(())
    }

    /// `DELETE /api/v1/rooms/{room}/members/{alias}`: leaves a room, or removes a member.
    pub async fn remove_member(&self, room: &str, alias: &str) -> Result<RoomMeta, ClientError> {
        let url = format!(
            "{}/api/v1/rooms/{}/members/{}",
            self.base,
            segment(room),
            segment(alias)
        );
        let response = self.authorized(self.http.delete(url)).send().await?;
        Ok(Self::check(response).await?.json().await?)
    }

    /// `GET /api/v1/rooms/{room}/messages`: a page of history, before or after a sequence number
    /// (or the newest).
    pub async fn page(
        &self,
        room: &str,
        before: Option<u64>,
        after: Option<u64>,
        limit: usize,
    ) -> Result<HistoryPage, ClientError> {
        let path = format!("/api/v1/rooms/{}/messages", segment(room));
        let mut query = vec![("limit", limit.to_string())];
        query.extend(before.map(|b| ("before", b.to_string())));
        query.extend(after.map(|a| ("after", a.to_string())));
        let response = self.get(&path).query(&query).send().await?;
        Ok(Self::check(response).await?.json().await?)
    }

    /// `GET /api/v1/rooms/{room}/search`: messages containing `q`, newest first.
    pub async fn search(&self, room: &str, q: &str) -> Result<Vec<ChatMessage>, ClientError> {
        let path = format!("/api/v1/rooms/{}/search", segment(room));
        let response = self.get(&path).query(&[("q", q)]).send().await?;
        Ok(Self::check(response).await?.json().await?)
    }

    /// The sequence number of the room's newest stored message (0 if none).
    pub async fn last_sequence(&self, room: &str) -> Result<u64, ClientError> {
        let path = format!("/api/v1/rooms/{}/messages", segment(room));
        let response = self.get(&path).query(&[("limit", "1")]).send().await?;
        let page: HistoryPage = Self::check(response).await?.json().await?;
        Ok(page
            .messages
            .last()
            .and_then(|m| m.mess_props.sequence_number)
            .unwrap_or(0))
    }

    /// Opens the room's live feed from the message after `after` (default: from now on).
    /// Fails at once if the server refuses (not a member, no such room) or cannot be reached.
    pub async fn live(&self, room: &str, after: Option<u64>) -> Result<LiveFeed, ClientError> {
        let after = match after {
            Some(after) => after,
            None => self.last_sequence(room).await?,
        };
        let mut feed = LiveFeed {
            client: self.clone(),
            room: room.to_string(),
            last_seen: after,
            socket: None,
            stop: CancellationToken::new(),
        };
        feed.socket = Some(feed.connect().await?);
        Ok(feed)
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself.
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

fn segment(raw: &str) -> String {
    utf8_percent_encode(raw, SEGMENT).to_string()
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A room's live messages, in order, each once. When the socket drops it reconnects (with
/// backoff) from the last sequence number it returned, so nothing is missed or repeated.
pub struct LiveFeed {
    client: Client,
    room: String,
    /// The last sequence number returned (or the starting `after`).
    last_seen: u64,
    socket: Option<Socket>,
    /// Never fired; [`Backoff`] wants one.
    stop: CancellationToken,
}

impl LiveFeed {
    /// The last sequence number returned (or the starting `after`).
    pub fn last_seen(&self) -> u64 {
        self.last_seen
    }

    /// The next message; `None` once the server ended the feed for good (the room was
    /// deleted). Reconnects through drops and server restarts; fails only if the server refuses
    /// the feed (4xx) or answers with something that is not a message.
    pub async fn next(&mut self) -> Result<Option<ChatMessage>, ClientError> {
        let mut backoff = Backoff::default();
        loop {
            let socket = match &mut self.socket {
                Some(socket) => socket,
                None => match self.connect().await {
                    Ok(socket) => {
                        backoff.reset();
                        self.socket.insert(socket)
                    }
                    Err(e) if e.is_refusal() => return Err(e),
                    Err(e) => {
                        tracing::info!(room = %self.room, error = %e, "live feed: reconnecting");
                        backoff.wait(&self.stop).await;
                        continue;
                    }
                },
            };
            match socket.next().await {
                Some(Ok(Message::Text(text))) => {
                    let message: ChatMessage = serde_json::from_str(text.as_str())
                        .map_err(|e| ClientError::Protocol(format!("{e}: {text}")))?;
                    let Some(seq) = message.mess_props.sequence_number else {
                        return Err(ClientError::Protocol(format!("no sequence number: {text}")));
                    };
                    if seq <= self.last_seen {
                        continue;
                    }
                    self.last_seen = seq;
                    return Ok(Some(message));
                }
                Some(Ok(Message::Close(Some(frame)))) if frame.code == CloseCode::Normal => {
                    self.socket = None;
                    return Ok(None);
                }
                Some(Ok(Message::Close(frame))) => {
                    tracing::info!(room = %self.room, ?frame, "live feed closed by the server");
                    self.socket = None;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::info!(room = %self.room, error = %e, "live feed dropped");
                    self.socket = None;
                }
                None => self.socket = None,
            }
        }
    }

    async fn connect(&self) -> Result<Socket, ClientError> {
        let ws_base = match self.client.base.split_once("://") {
            Some(("https", rest)) => format!("wss://{rest}"),
            Some((_, rest)) => format!("ws://{rest}"),
            None => format!("ws://{}", self.client.base),
        };
        let url = format!(
            "{ws_base}/api/v1/rooms/{}/live?after={}",
            segment(&self.room),
            self.last_seen
        );
        let mut request = url.into_client_request().map_err(Box::new)?;
        if let Some(token) = &self.client.token {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|e| ClientError::Protocol(format!("token: {e}")))?;
            request.headers_mut().insert(AUTHORIZATION, value);
        }
        let connecting = tokio_tungstenite::connect_async(request);
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok((socket, _))) => Ok(socket),
            Ok(Err(tungstenite::Error::Http(response))) => {
                let body = response
                    .body()
                    .as_deref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or(Value::Null);
                Err(ClientError::Status {
                    status: response.status().as_u16(),
                    body,
                })
            }
            Ok(Err(e)) => Err(Box::new(e).into()),
            Err(_) => Err(ClientError::Protocol(
                "WebSocket handshake timed out".into(),
            )),
        }
    }
}
