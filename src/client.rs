//! A small HTTP client for the API, used by the CLI's client commands and by the tests.

use serde::Serialize;
use serde_json::Value;

use crate::api::seed::SendResponse;

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

/// A client of one mess-chat server.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    /// A client of the server at `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: impl Into<String>) -> Self {
        Self {
            base: base.into().trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
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
        let body = response.json().await.unwrap_or(Value::Null);
        Err(ClientError::Status {
            status: status.as_u16(),
            body,
        })
    }

    /// `GET /send/`.
    pub async fn send(&self, params: &SendParams) -> Result<SendResponse, ClientError> {
        let url = format!("{}/send/", self.base);
        let response = self.http.get(url).query(params).send().await?;
        Ok(Self::check(response).await?.json().await?)
    }

    /// `GET /messages/`: the room's newest messages as texts, oldest first.
    pub async fn messages(
        &self,
        room_name: &str,
        limit: Option<usize>,
    ) -> Result<Vec<String>, ClientError> {
        let url = format!("{}/messages/", self.base);
        let mut query = vec![("room_name", room_name.to_string())];
        query.extend(limit.map(|l| ("limit", l.to_string())));
        let response = self.http.get(url).query(&query).send().await?;
        Ok(Self::check(response).await?.json().await?)
    }
}
