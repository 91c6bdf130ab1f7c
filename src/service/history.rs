//! Reading: the newest messages, cursor pages by sequence number, search.

use super::{ChatError, ChatService, MAX_HISTORY_LIMIT};
use crate::model::{Alias, ChatMessage, RoomName};
use crate::room::ChatRoom;

impl ChatService {
    /// The seed's `get_messages`: the room's newest `limit` messages, oldest first, or without a
    /// limit as many as a room's cache holds (`cache_capacity`), from the cache and, for a room
    /// whose cache was emptied to keep all caches within their total, from the store.
    pub async fn recent(
        &self,
        actor: Option<&Alias>,
        name: &RoomName,
        limit: Option<usize>,
    ) -> Result<Vec<ChatMessage>, ChatError> {
        match limit {
            Some(limit) => self.history(actor, name, limit).await,
            None => {
                let room = self.room(name).await?;
                self.may_read(actor, &room).await?;
                let capacity = self.inner.config.cache_capacity;
                Ok(page_of(&room, None, None, capacity).await?.messages)
            }
        }
    }

    /// The room's newest `limit` messages, oldest first (the newest page of [`Self::page`]).
    pub async fn history(
        &self,
        actor: Option<&Alias>,
        name: &RoomName,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, ChatError> {
        Ok(self.page(actor, name, None, None, limit).await?.messages)
    }
}

/// Most results one search returns.
pub const MAX_SEARCH_RESULTS: usize = 100;
/// Longest search text, in characters.
pub const MAX_SEARCH_QUERY: usize = 1000;

/// One page of a room's history, oldest first.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct HistoryPage {
    /// The messages, in sequence order.
    pub messages: Vec<ChatMessage>,
    /// Whether more messages lie beyond this page in the direction asked (older for `before` or
    /// the newest page, newer for `after`).
    pub more: bool,
}

impl ChatService {
    /// A page of at most `limit` messages: those right before sequence number `before`, right
    /// after `after`, or the newest. Pages meet without gap or overlap, wherever the cache ends.
    pub async fn page(
        &self,
        actor: Option<&Alias>,
        name: &RoomName,
        before: Option<u64>,
        after: Option<u64>,
        limit: usize,
    ) -> Result<HistoryPage, ChatError> {
        check_limit(limit)?;
        let room = self.room(name).await?;
        self.may_read(actor, &room).await?;
        page_of(&room, before, after, limit).await
    }
}

/// A page of `room`'s history (see [`ChatService::page`]), for a reader already allowed.
pub(super) async fn page_of(
    room: &ChatRoom,
    before: Option<u64>,
    after: Option<u64>,
    limit: usize,
) -> Result<HistoryPage, ChatError> {
    let last = room.last_sequence();
    match (before, after) {
        (Some(_), Some(_)) => Err(ChatError::BadRequest(
            "give before or after, not both".into(),
        )),
        (None, Some(after)) => {
            let cached = room.cached();
            let covered = cached
                .first()
                .and_then(|m| m.mess_props.sequence_number)
                .is_some_and(|oldest| oldest <= after.saturating_add(1));
            let messages: Vec<ChatMessage> = if covered {
                cached
                    .into_iter()
                    .filter(|m| m.mess_props.sequence_number > Some(after))
                    .take(limit)
                    .collect()
            } else {
                room.messages_after(after, limit).await?
            };
            let newest = messages
                .last()
                .and_then(|m| m.mess_props.sequence_number)
                .unwrap_or(after);
            Ok(HistoryPage {
                more: newest < last,
                messages,
            })
        }
        (before, None) => {
            let before = before.unwrap_or(u64::MAX);
            let mut cached: Vec<ChatMessage> = room
                .cached()
                .into_iter()
                .filter(|m| m.mess_props.sequence_number < Some(before))
                .collect();
            let oldest_cached = cached.first().and_then(|m| m.mess_props.sequence_number);
            let messages = if cached.len() >= limit || oldest_cached == Some(1) {
                cached.split_off(cached.len().saturating_sub(limit))
            } else {
                // The store has everything below what the cache holds (or below `before`).
                let below = oldest_cached.unwrap_or(before.min(last + 1));
                let mut older = room.messages_before(below, limit - cached.len()).await?;
                older.extend(cached);
                older
            };
            let oldest = messages.first().and_then(|m| m.mess_props.sequence_number);
            Ok(HistoryPage {
                more: oldest.is_some_and(|s| s > 1),
                messages,
            })
        }
    }
}

impl ChatService {
    /// Messages of the room containing `query` (ASCII letters without case), newest first; with
    /// `exact`, only those whose whole text is `query` (the seed's `find_message`).
    pub async fn search(
        &self,
        actor: Option<&Alias>,
        name: &RoomName,
        query: &str,
        exact: bool,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, ChatError> {
        if query.is_empty() {
            return Err(ChatError::BadRequest("q must not be empty".into()));
        }
        if query.chars().count() > MAX_SEARCH_QUERY {
            return Err(ChatError::BadRequest(format!(
                "q must be at most {MAX_SEARCH_QUERY} characters long"
            )));
        }
        if limit == 0 || limit > MAX_SEARCH_RESULTS {
            return Err(ChatError::BadRequest(format!(
                "limit must be between 1 and {MAX_SEARCH_RESULTS}"
            )));
        }
        let room = self.room(name).await?;
        self.may_read(actor, &room).await?;
        if exact && let Some(found) = room.find_message(query) {
            return Ok(vec![found]);
        }
        let mut found = room
            .search(query, if exact { usize::MAX } else { limit })
            .await?;
        if exact {
            found.retain(|m| m.message == query);
            found.truncate(limit);
        }
        Ok(found)
    }
}

fn check_limit(limit: usize) -> Result<(), ChatError> {
    if limit == 0 || limit > MAX_HISTORY_LIMIT {
        return Err(ChatError::BadRequest(format!(
            "limit must be between 1 and {MAX_HISTORY_LIMIT}"
        )));
    }
    Ok(())
}
