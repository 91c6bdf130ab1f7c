//! Following a room: its stored messages after a sequence number, then each new one as it is
//! stored, once each and in order, on any instance. The feed subscribes to the room's updates
//! first, then backfills from history, then forwards updates, skipping what it already gave; a
//! gap in the updates is filled from history before going on. A follower removed from the room
//! (or the room deleted) hears so and stops. A follower that falls more than the room's live
//! buffer behind (it reads slower than the room talks) is stopped too, and told to follow again
//! from where it was: catching it up from history every time would let one slow reader load the
//! store for everyone.

use std::collections::VecDeque;

use tokio::sync::broadcast::{self, error::RecvError};

use super::history::page_of;
use super::{ChatError, ChatService, MAX_HISTORY_LIMIT};
use crate::model::{Alias, ChatMessage, RoomName};
use crate::room::{ChatRoom, RoomUpdate, sequence};

/// One follower's position in one room's messages.
pub struct Follow {
    room: ChatRoom,
    /// Who follows (`None`: dev mode without a token); the feed ends if they leave the room.
    follower: Option<Alias>,
    /// The room's updates (subscribed before the first backfill).
    updates: broadcast::Receiver<RoomUpdate>,
    /// The sequence number of the last message given (or the follower's `after`).
    last_sent: u64,
    /// Read from history, not given yet.
    pending: VecDeque<ChatMessage>,
    /// History must be read before the next update is taken.
    behind: bool,
}

/// Why a feed ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowEnd {
    /// The room was deleted: there will be no more messages.
    RoomDeleted,
    /// The follower is no longer a member of the room.
    Removed,
    /// The follower fell too far behind the room; follow again with `after` = the last sequence
    /// number seen.
    TooSlow,
    /// Reading history failed; follow again with `after` = the last sequence number seen.
    Failed(String),
}

impl ChatService {
    /// Follows a room as `actor` (who must be a member) from the message after `after`, or from
    /// the next new message if `after` is `None`. `after` beyond the room's last message is a
    /// bad request.
    pub async fn follow(
        &self,
        actor: Option<&Alias>,
        name: &RoomName,
        after: Option<u64>,
    ) -> Result<Follow, ChatError> {
        let room = self.room(name).await?;
        self.may_read(actor, &room).await?;
        // Subscribe before anything reads history, so every message stored from here on is seen.
        let updates = room.subscribe();
        let last = room.last_sequence();
        let after = match after {
            None => last,
            Some(after) if after <= last => after,
            Some(after) => {
                return Err(ChatError::BadRequest(format!(
                    "after={after} is beyond the last message of {name} ({last})"
                )));
            }
        };
        Ok(Follow {
            room,
            follower: actor.cloned(),
            updates,
            last_sent: after,
            pending: VecDeque::new(),
            behind: true,
        })
    }
}

impl Follow {
    /// The sequence number of the last message given (or the `after` followed from).
    pub fn last_sent(&self) -> u64 {
        self.last_sent
    }

    /// The next message, waiting for it if need be; or why there will be none.
    pub async fn next(&mut self) -> Result<ChatMessage, FollowEnd> {
        loop {
            if let Some(message) = self.pending.pop_front() {
                if sequence(&message) > self.last_sent {
                    return Ok(self.give(message));
                }
                continue;
            }
            if self.behind {
                self.backfill().await?;
                continue;
            }
            match self.updates.recv().await {
                Ok(RoomUpdate::Message(message)) => {
                    let seq = sequence(&message);
                    if seq == self.last_sent + 1 {
                        return Ok(self.give(message));
                    }
                    // A jump: the messages between are in the store (as is this one).
                    self.behind = seq > self.last_sent;
                }
                Ok(RoomUpdate::Members(members)) => {
                    if let Some(me) = &self.follower
                        && !members.contains(me)
                    {
                        return Err(FollowEnd::Removed);
                    }
                }
                Ok(RoomUpdate::Deleted) | Err(RecvError::Closed) => {
                    return Err(FollowEnd::RoomDeleted);
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "live follower fell behind");
                    return Err(FollowEnd::TooSlow);
                }
            }
        }
    }

    fn give(&mut self, message: ChatMessage) -> ChatMessage {
        self.last_sent = sequence(&message);
        message
    }

    /// Reads the next page of history after `last_sent`.
    async fn backfill(&mut self) -> Result<(), FollowEnd> {
        let page = page_of(&self.room, None, Some(self.last_sent), MAX_HISTORY_LIMIT)
            .await
            .map_err(|e| match e {
                ChatError::RoomNotFound(_) => FollowEnd::RoomDeleted,
                e => {
                    tracing::warn!(error = %e, "live feed cannot read history");
                    FollowEnd::Failed(e.to_string())
                }
            })?;
        // Numbered but not in this instance's view yet: the updates bring them.
        self.behind = page.more && !page.messages.is_empty();
        self.pending.extend(page.messages);
        Ok(())
    }
}
