//! Unit tests of `ChatRoom` and `RoomList` on the embedded back ends: the in-process broker and a
//! redb store in a temporary directory.

use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::broker::memory::MemoryBroker;
use crate::model::MessageType;
use crate::store::embedded::EmbeddedStore;

/// Longest a test waits for the room's consumer.
const WAIT: Duration = Duration::from_secs(5);

/// One test's back ends. The directory lives as long as the store is used.
struct Backends {
    _dir: TempDir,
    broker: Arc<MemoryBroker>,
    store: Arc<EmbeddedStore>,
}

fn backends() -> Backends {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = EmbeddedStore::open(dir.path()).expect("embedded store");
    Backends {
        _dir: dir,
        broker: Arc::new(MemoryBroker::new()),
        store: Arc::new(store),
    }
}

fn name(value: &str) -> RoomName {
    RoomName::new(value).expect("valid room name")
}

fn alias(value: &str) -> Alias {
    Alias::new(value).expect("valid alias")
}

impl Backends {
    fn room(&self, room: &str, group_room: bool, capacity: usize) -> ChatRoom {
        let other = (!group_room).then(|| alias("bob"));
        ChatRoom::new(
            name(room),
            group_room,
            alias("ann"),
            other,
            self.broker.clone(),
            self.store.clone(),
            capacity,
        )
    }

    fn list(&self, list: &str) -> RoomList {
        RoomList::new(list, self.broker.clone(), self.store.clone(), 10)
    }
}

/// A dirty, unnumbered message from ann in `room`.
fn message(room: &ChatRoom, text: &str) -> ChatMessage {
    ChatMessage::new(text.to_string(), props(room))
}

fn props(room: &ChatRoom) -> MessageProperties {
    MessageProperties::new_sent(room.name().clone(), alias("ann"), "bob".into())
}

fn texts(messages: &[ChatMessage]) -> Vec<&str> {
    messages.iter().map(|m| m.message.as_str()).collect()
}

fn sequences(messages: &[ChatMessage]) -> Vec<Option<u64>> {
    messages
        .iter()
        .map(|m| m.mess_props.sequence_number)
        .collect()
}

/// Waits (bounded) until `done` holds.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ----- the deque -----

#[test]
fn put_adds_at_the_newest_end_and_get_takes_the_oldest() {
    let b = backends();
    let room = b.room("deque", true, 10);
    for text in ["one", "two", "three"] {
        room.put(message(&room, text));
    }
    assert_eq!(texts(&room.cached()), ["one", "two", "three"]);
    assert_eq!(room.get().map(|m| m.message), Some("one".into()));
    assert_eq!(room.get().map(|m| m.message), Some("two".into()));
    assert_eq!(room.len(), 1);
    assert_eq!(room.get().map(|m| m.message), Some("three".into()));
    assert!(room.is_empty());
    assert_eq!(room.get(), None);
}

#[test]
fn capacity_evicts_the_oldest() {
    let b = backends();
    let room = b.room("capacity", true, 3);
    for i in 1..=5 {
        room.put(message(&room, &i.to_string()));
    }
    assert_eq!(room.len(), 3);
    assert_eq!(texts(&room.cached()), ["3", "4", "5"]);
}

#[test]
fn get_messages_returns_the_last_n_oldest_first() {
    let b = backends();
    let room = b.room("last-n", true, 10);
    let sent: Vec<ChatMessage> = (1..=5).map(|i| message(&room, &format!("m{i}"))).collect();
    for m in &sent {
        room.put(m.clone());
    }

    assert_eq!(
        room.get_messages(3, false),
        RoomMessages::Texts(vec!["m3".into(), "m4".into(), "m5".into()])
    );
    assert_eq!(
        room.get_messages(2, true),
        RoomMessages::Objects(sent[3..].to_vec())
    );
    assert_eq!(
        room.get_messages(50, true),
        RoomMessages::Objects(sent.clone()),
        "asking for more than the cache holds gives all of it"
    );
    assert_eq!(room.get_messages(0, false), RoomMessages::Texts(vec![]));
}

#[test]
fn find_message_returns_the_newest_with_that_exact_text() {
    let b = backends();
    let room = b.room("find", true, 10);
    let older = message(&room, "hello");
    let other = message(&room, "hello there");
    let newer = message(&room, "hello");
    for m in [&older, &other, &newer] {
        room.put(m.clone());
    }
    assert_eq!(room.find_message("hello"), Some(newer));
    assert_eq!(room.find_message("hello there"), Some(other));
    assert_eq!(room.find_message("hell"), None);
}

// ----- membership -----

#[tokio::test]
async fn a_private_room_has_no_group_members() {
    let b = backends();
    let room = b.room("private", false, 10);
    room.declare().await.expect("declare");
    assert!(matches!(
        room.add_group_member(&alias("carl")).await,
        Err(RoomError::NotAGroupRoom(n)) if n == *room.name()
    ));
    assert!(matches!(
        room.remove_group_member(&alias("bob")).await,
        Err(RoomError::NotAGroupRoom(_))
    ));
    assert_eq!(room.members(), [alias("ann"), alias("bob")]);
}

#[tokio::test]
async fn group_members_join_and_leave_but_the_owner_cannot_leave() {
    let b = backends();
    let room = b.room("members", true, 10);
    room.declare().await.expect("declare");

    assert!(room.add_group_member(&alias("carl")).await.expect("add"));
    assert!(
        !room
            .add_group_member(&alias("carl"))
            .await
            .expect("add again")
    );
    assert!(room.is_member(&alias("carl")));
    assert!(!room.dirty(), "a membership change is persisted");
    let stored = b.store.load_room(room.name()).await.expect("load");
    assert_eq!(
        stored.map(|m| m.members),
        Some(vec![alias("ann"), alias("carl")])
    );

    assert!(matches!(
        room.remove_group_member(&alias("ann")).await,
        Err(RoomError::OwnerCannotLeave(a)) if a == alias("ann")
    ));
    assert!(room.is_member(&alias("ann")));

    room.remove_group_member(&alias("carl"))
        .await
        .expect("remove");
    assert!(!room.is_member(&alias("carl")));
    assert!(matches!(
        room.remove_group_member(&alias("carl")).await,
        Err(RoomError::NotAMember { .. })
    ));
}

// ----- store -----

#[tokio::test]
async fn persist_then_restore_gives_back_metadata_cache_and_last_sequence() {
    let b = backends();
    let room = b.room("saved", true, 10);
    room.declare().await.expect("declare");
    for text in ["a", "b", "c"] {
        room.put(message(&room, text));
    }
    room.add_group_member(&alias("carl")).await.expect("add");
    room.persist().await.expect("persist");

    let fresh = ChatRoom::new(
        room.name().clone(),
        false,
        alias("someone"),
        None,
        b.broker.clone(),
        b.store.clone(),
        10,
    );
    assert!(fresh.restore().await.expect("restore"));
    assert_eq!(fresh.meta(), room.meta());
    assert_eq!(fresh.cached(), room.cached());
    assert_eq!(fresh.last_sequence(), 3);
    assert!(!fresh.dirty());

    let unknown = b.room("never-saved", true, 10);
    assert!(!unknown.restore().await.expect("restore"));
    assert_eq!(
        unknown.owner_alias(),
        alias("ann"),
        "a failed restore changes nothing"
    );
}

#[tokio::test]
async fn persist_saves_the_modify_time_of_a_later_message() {
    let b = backends();
    let room = b.room("touched", true, 10);
    room.persist().await.expect("persist the new room");
    tokio::time::sleep(Duration::from_millis(5)).await;
    room.put(message(&room, "later"));
    assert!(
        room.modify_time() > room.create_time(),
        "put changes the room"
    );
    room.persist().await.expect("persist the message");

    let fresh = b.room("touched", true, 10);
    assert!(fresh.restore().await.expect("restore"));
    assert_eq!(
        fresh.modify_time(),
        room.modify_time(),
        "the stored metadata is as recent as the room"
    );
}

#[tokio::test]
async fn restore_keeps_only_the_newest_capacity_messages() {
    let b = backends();
    let room = b.room("bounded", true, 10);
    for i in 1..=6 {
        room.put(message(&room, &i.to_string()));
    }
    room.persist().await.expect("persist");

    let small = b.room("bounded", true, 4);
    assert!(small.restore().await.expect("restore"));
    assert_eq!(texts(&small.cached()), ["3", "4", "5", "6"]);
    assert_eq!(small.last_sequence(), 6);
}

#[tokio::test]
async fn persist_numbers_unnumbered_dirty_messages_and_clears_dirty_flags() {
    let b = backends();
    let room = b.room("numbering", false, 10);
    for text in ["x", "y", "z"] {
        room.put(message(&room, text));
    }
    assert!(room.cached().iter().all(|m| m.dirty));
    room.persist().await.expect("persist");

    let cached = room.cached();
    assert_eq!(sequences(&cached), [Some(1), Some(2), Some(3)]);
    assert!(
        cached.iter().all(|m| !m.dirty),
        "persisted messages are clean"
    );
    assert!(!room.dirty());
    assert_eq!(room.last_sequence(), 3);
    assert_eq!(
        b.store
            .latest_messages(room.name(), 10)
            .await
            .expect("latest"),
        cached
    );

    // Persisting again stores nothing new; a later message continues the numbering.
    room.persist().await.expect("persist again");
    room.put(message(&room, "later"));
    room.persist().await.expect("persist later");
    let stored = b
        .store
        .latest_messages(room.name(), 10)
        .await
        .expect("latest");
    assert_eq!(texts(&stored), ["x", "y", "z", "later"]);
    assert_eq!(sequences(&stored), [Some(1), Some(2), Some(3), Some(4)]);
}

// ----- the room list -----

#[test]
fn room_list_adds_finds_and_removes_rooms() {
    let b = backends();
    let list = b.list("rooms");
    let beta = b.room("beta", true, 10);
    let alpha = b.room("alpha", false, 10);
    assert!(list.add(beta.clone()));
    assert!(list.add(alpha));
    assert!(
        !list.add(b.room("beta", false, 10)),
        "a taken name is refused"
    );
    assert!(
        list.find(&name("beta")).expect("beta").group_room(),
        "the first beta stays"
    );

    let names: Vec<RoomName> = list.rooms().iter().map(|r| r.name().clone()).collect();
    assert_eq!(names, [name("alpha"), name("beta")]);
    assert_eq!(list.meta().rooms, names);

    assert_eq!(
        list.remove(&name("beta")).map(|r| r.name().clone()),
        Some(name("beta"))
    );
    assert!(list.find(&name("beta")).is_none());
    assert!(list.remove(&name("beta")).is_none());
    assert_eq!(list.meta().rooms, [name("alpha")]);
}

#[tokio::test]
async fn room_list_persist_then_restore_gives_back_both_rooms() {
    let b = backends();
    let list = b.list("main");
    let group = b.room("group", true, 10);
    let private = b.room("private", false, 10);
    group.put(message(&group, "in the group"));
    private.put(message(&private, "just us"));
    private.put(message(&private, "still us"));
    list.add(group.clone());
    list.add(private.clone());
    list.persist().await.expect("persist");

    let restored = b.list("main");
    restored.restore().await.expect("restore");
    assert_eq!(restored.meta(), list.meta());
    for original in [&group, &private] {
        let back = restored.find(original.name()).expect("restored room");
        assert_eq!(back.meta(), original.meta());
        assert_eq!(back.cached(), original.cached());
        assert_eq!(back.last_sequence(), original.last_sequence());
    }
    assert_eq!(
        texts(&restored.find(&name("private")).unwrap().cached()),
        ["just us", "still us"]
    );

    let other = b.list("other");
    other.restore().await.expect("restore an unknown list");
    assert!(other.rooms().is_empty());
}

// ----- the consumer -----

#[tokio::test]
async fn the_consumer_numbers_caches_and_stores_messages_once() {
    let b = backends();
    let room = b.room("consumer", false, 10);
    room.declare().await.expect("declare");
    let shutdown = CancellationToken::new();
    let consumer = {
        let room = room.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move { room.retrieve_messages(shutdown).await })
    };

    let sends: Vec<MessageProperties> = (0..3).map(|_| props(&room)).collect();
    // A sender waiting for its message learns its number once the consumer stored it.
    let first_stored = room.register_waiter(sends[0].id);
    let mut sent = Vec::new();
    for (text, mess_props) in ["one", "two", "three"].into_iter().zip(sends) {
        let message = room
            .send_message(text.into(), mess_props)
            .await
            .expect("send");
        assert_eq!(message.mess_props.mess_type, MessageType::Sent);
        sent.push(message);
    }
    eventually("three messages in the cache", || room.len() == 3).await;

    let cached = room.cached();
    assert_eq!(texts(&cached), ["one", "two", "three"]);
    assert_eq!(sequences(&cached), [Some(1), Some(2), Some(3)]);
    for (received, sent) in cached.iter().zip(&sent) {
        assert_eq!(received.mess_props.id, sent.mess_props.id);
        assert_eq!(received.mess_props.mess_type, MessageType::Received);
        assert!(received.mess_props.rec_time.is_some());
        assert!(!received.dirty, "the consumer stored it");
    }
    assert_eq!(
        b.store
            .latest_messages(room.name(), 10)
            .await
            .expect("latest"),
        cached
    );
    let woken = tokio::time::timeout(WAIT, first_stored)
        .await
        .expect("waiter in time");
    assert_eq!(woken.expect("waiter woken"), cached[0]);

    // The same message published twice (a redelivery in disguise), then a marker behind it.
    let twice = ChatMessage::new("twice".into(), props(&room));
    let body = serde_json::to_vec(&twice).expect("serialise");
    for _ in 0..2 {
        b.broker
            .publish(room.name(), false, body.clone())
            .await
            .expect("publish");
    }
    room.send_message("after".into(), props(&room))
        .await
        .expect("send marker");
    eventually("the marker in the cache", || {
        room.find_message("after").is_some()
    })
    .await;

    let cached = room.cached();
    assert_eq!(texts(&cached), ["one", "two", "three", "twice", "after"]);
    assert_eq!(
        sequences(&cached),
        [Some(1), Some(2), Some(3), Some(4), Some(5)]
    );
    assert_eq!(room.last_sequence(), 5);
    let stored = b
        .store
        .latest_messages(room.name(), 10)
        .await
        .expect("latest");
    assert_eq!(stored, cached, "stored once, numbered once");
    assert_eq!(b.broker.ready_count(room.name().as_str()), Some(0));

    shutdown.cancel();
    tokio::time::timeout(WAIT, consumer)
        .await
        .expect("the consumer stops on shutdown")
        .expect("the consumer did not panic");
}
