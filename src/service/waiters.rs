//! Senders waiting to hear that their message was stored. A send registers its message id, and
//! the cluster events (from whichever instance numbers the room) wake it: so a send answers
//! "stored" on any instance, not only on the one consuming the room.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::model::{ChatMessage, MessageId, RoomName};

/// What a waiting sender hears.
pub(super) type Outcome = Result<ChatMessage, RoomGone>;

/// The room was deleted while the message waited to be stored.
#[derive(Debug, Clone, Copy)]
pub(super) struct RoomGone;

/// Waiting senders by message id. A std mutex: every section is short and sync.
#[derive(Default)]
pub(super) struct Waiters {
    waiting: Mutex<HashMap<MessageId, Waiting>>,
}

/// The senders of one message id: several when a client retries with one idempotency key while
/// the first attempt still waits.
struct Waiting {
    room: RoomName,
    senders: Vec<oneshot::Sender<Outcome>>,
    /// The room's queue was deleted while the message waited: it may have gone with it.
    in_doubt: bool,
}

impl Waiters {
    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<MessageId, Waiting>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers interest in message `id` of `room`: the receiver gets it once it is stored.
    pub fn register(&self, room: &RoomName, id: MessageId) -> oneshot::Receiver<Outcome> {
        let (tx, rx) = oneshot::channel();
        self.waiting()
            .entry(id)
            .or_insert_with(|| Waiting {
                room: room.clone(),
                senders: Vec::new(),
                in_doubt: false,
            })
            .senders
            .push(tx);
        rx
    }

    /// Drops the interest of senders that gave up on a message (failed send or timeout); says
    /// whether the message was in doubt (see [`Waiters::doubt_room`]).
    pub fn forget(&self, id: &MessageId) -> bool {
        let mut waiting = self.waiting();
        let Some(w) = waiting.get_mut(id) else {
            return false;
        };
        let in_doubt = w.in_doubt;
        w.senders.retain(|tx| !tx.is_closed());
        if w.senders.is_empty() {
            waiting.remove(id);
        }
        in_doubt
    }

    /// Whether message `id` is in doubt (see [`Waiters::doubt_room`]).
    pub fn in_doubt(&self, id: &MessageId) -> bool {
        self.waiting().get(id).is_some_and(|w| w.in_doubt)
    }

    /// Marks every message awaited in `room` as in doubt: its queue was deleted, so a message
    /// not stored yet may be gone.
    pub fn doubt_room(&self, room: &RoomName) {
        for w in self.waiting().values_mut().filter(|w| w.room == *room) {
            w.in_doubt = true;
        }
    }

    /// Wakes the senders of these stored messages. A message wakes only senders waiting in its
    /// own room: ids are unique within one deployment, and the events exchange may also carry
    /// another deployment's messages (two deployments on one broker, as the tests run them),
    /// whose ids can equal ours.
    pub fn wake(&self, stored: &[ChatMessage]) {
        let woken: Vec<(ChatMessage, Waiting)> = {
            let mut waiting = self.waiting();
            if waiting.is_empty() {
                return;
            }
            let mut woken = Vec::new();
            for m in stored {
                let id = &m.mess_props.id;
                if waiting
                    .get(id)
                    .is_some_and(|w| w.room == m.mess_props.room_name)
                {
                    woken.extend(waiting.remove(id).map(|w| (m.clone(), w)));
                }
            }
            woken
        };
        for (message, w) in woken {
            for tx in w.senders {
                let _ = tx.send(Ok(message.clone()));
            }
        }
    }

    /// Answers every sender waiting on `room` with [`RoomGone`].
    pub fn fail_room(&self, room: &RoomName) {
        let gone: Vec<Waiting> = {
            let mut waiting = self.waiting();
            let ids: Vec<MessageId> = waiting
                .iter()
                .filter(|(_, w)| w.room == *room)
                .map(|(id, _)| *id)
                .collect();
            ids.iter().filter_map(|id| waiting.remove(id)).collect()
        };
        for w in gone {
            for tx in w.senders {
                let _ = tx.send(Err(RoomGone));
            }
        }
    }

    /// The ids still awaited, by room (to look them up after events may have been missed).
    pub fn pending(&self) -> HashMap<RoomName, Vec<MessageId>> {
        let mut by_room: HashMap<RoomName, Vec<MessageId>> = HashMap::new();
        for (id, w) in self.waiting().iter() {
            by_room.entry(w.room.clone()).or_default().push(*id);
        }
        by_room
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Alias, MessageProperties};

    fn stored(room: &str, id: MessageId, text: &str) -> ChatMessage {
        let props = MessageProperties::new_sent(
            RoomName::new(room).unwrap(),
            Alias::new("ann").unwrap(),
            room.into(),
            id,
        );
        ChatMessage::new(text.into(), props)
    }

    #[test]
    fn a_message_of_another_room_with_the_same_id_wakes_no_one() {
        let waiters = Waiters::default();
        let id = MessageId(42);
        let room = RoomName::new("big").unwrap();
        let mut rx = waiters.register(&room, id);
        waiters.wake(&[stored("elsewhere", id, "hi")]);
        assert!(rx.try_recv().is_err(), "a foreign message woke the sender");
        waiters.wake(&[stored("big", id, "mine")]);
        assert_eq!(rx.try_recv().unwrap().unwrap().message, "mine");
    }
}
