//! Unit tests of `ChatRoom` and `RoomList` on the embedded back ends: the in-process broker and a
//! redb store in a temporary directory.

use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::broker::memory::MemoryBroker;
use crate::model::MessageType;
use crate::room::retrieve;
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
    // Unique ids across the tests of this process.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let id = crate::model::MessageId(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    MessageProperties::new_sent(room.name().clone(), alias("ann"), "bob".into(), id)
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

/// `count` numbered messages from ann, as the consumer would store them.
fn numbered(room: &ChatRoom, from: u64, count: u64) -> Vec<ChatMessage> {
    (from..from + count)
        .map(|seq| {
            let mut m = message(room, &seq.to_string());
            m.mess_props.sequence_number = Some(seq);
            m.mess_props.mess_type = MessageType::Received;
            m.mess_props.rec_time = Some(crate::model::now());
            m.dirty = false;
            m
        })
        .collect()
}

// ----- the cache feed -----

#[test]
fn apply_takes_stored_messages_in_order_once_and_reports_a_gap() {
    let b = backends();
    let room = b.room("feed", true, 10);
    let messages = numbered(&room, 1, 6);
    assert_eq!(room.apply(&messages[..2]), Ok(2));
    // Known ones are skipped; out of order within a batch is fine.
    let shuffled = [
        messages[3].clone(),
        messages[1].clone(),
        messages[2].clone(),
    ];
    assert_eq!(room.apply(&shuffled), Ok(2));
    assert_eq!(room.last_sequence(), 4);
    // 6 does not follow 4: nothing is taken, and the gap says what to read first.
    assert_eq!(
        room.apply(&messages[5..]),
        Err(Gap {
            after: 4,
            before: 6
        })
    );
    assert_eq!(room.apply(&messages[4..]), Ok(2));
    assert_eq!(
        sequences(&room.cached()),
        (1..=6).map(Some).collect::<Vec<_>>()
    );
    assert!(room.cached().iter().all(|m| !m.dirty));
    // Starting over after an unfillable gap.
    room.restart_at(20);
    assert!(room.is_empty());
    assert_eq!(room.last_sequence(), 19);
}

#[test]
fn past_the_budget_the_coldest_caches_are_emptied_and_unstored_messages_kept() {
    let b = backends();
    let list = b.list("budget");
    let rooms: Vec<ChatRoom> = (0..4)
        .map(|i| list.add_or_get(b.room(&format!("cold{i}"), true, 20)))
        .collect();
    rooms[1].put(message(&rooms[1], "not stored"));
    for room in &rooms {
        room.apply(&numbered(room, 1, 10)).unwrap();
    }
    // Used since: room 2, then room 0 (reading a cache is a use too).
    rooms[2].apply(&numbered(&rooms[2], 11, 1)).unwrap();
    rooms[0].cached();
    assert_eq!(list.trim_caches(42), 42, "within the budget: nothing goes");
    // 42 over a budget of 40: down to 30 or below, the coldest first (room 1 but for its
    // unstored message, then room 3), the recently used untouched.
    assert_eq!(list.trim_caches(40), 22);
    let lens: Vec<usize> = rooms.iter().map(ChatRoom::len).collect();
    assert_eq!(lens, [10, 1, 11, 0]);
    assert_eq!(texts(&rooms[1].cached()), ["not stored"]);
    assert_eq!(rooms[3].last_sequence(), 10, "the numbering goes on");
    assert_eq!(rooms[3].apply(&numbered(&rooms[3], 11, 1)), Ok(1));
}

#[test]
fn live_subscribers_hear_messages_members_and_deletion_in_order() {
    let b = backends();
    let room = b.room("listened", true, 10);
    let mut updates = room.subscribe();
    let messages = numbered(&room, 1, 2);
    room.apply(&messages).expect("in order");
    let mut meta = room.meta();
    meta.members.push(alias("carl"));
    room.set_meta(meta.clone());
    room.set_meta(meta);
    room.close();
    let mut heard = Vec::new();
    while let Ok(update) = updates.try_recv() {
        heard.push(update);
    }
    assert_eq!(
        heard,
        [
            RoomUpdate::Message(messages[0].clone()),
            RoomUpdate::Message(messages[1].clone()),
            RoomUpdate::Members(vec![alias("ann"), alias("carl")]),
            RoomUpdate::Deleted,
        ],
        "unchanged members are not announced twice"
    );
}

// ----- membership -----

#[tokio::test]
async fn a_private_room_has_no_group_members() {
    let b = backends();
    let room = b.room("private", false, 10);
    room.declare().await.expect("declare");
    room.persist().await.expect("persist");
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
    room.persist().await.expect("persist");

    assert!(room.add_group_member(&alias("carl")).await.expect("add"));
    assert!(
        !room
            .add_group_member(&alias("carl"))
            .await
            .expect("add again")
    );
    assert!(room.is_member(&alias("carl")));
    let stored = b.store.load_room(room.name()).await.expect("load");
    assert_eq!(
        stored.map(|m| m.members),
        Some(vec![alias("ann"), alias("carl")]),
        "a membership change is in the store at once"
    );
    assert_eq!(
        b.store.rooms_of(&alias("carl")).await.expect("rooms of"),
        [room.name().clone()]
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
    let stored = b.store.load_room(room.name()).await.expect("load");
    assert_eq!(stored.map(|m| m.members), Some(vec![alias("ann")]));
}

#[tokio::test]
async fn a_join_the_broker_refuses_leaves_the_store_unchanged() {
    let b = backends();
    let room = b.room("refused", true, 10);
    // Saved, but its exchange never declared: binding an inbox to it fails.
    room.persist().await.expect("persist");
    assert!(matches!(
        room.add_group_member(&alias("carl")).await,
        Err(RoomError::Broker(_))
    ));
    let stored = b.store.load_room(room.name()).await.expect("load");
    assert_eq!(stored.map(|m| m.members), Some(vec![alias("ann")]));
    assert!(!room.is_member(&alias("carl")));
}

#[tokio::test]
async fn membership_of_a_room_gone_from_the_store_is_refused() {
    let b = backends();
    let room = b.room("vanished", true, 10);
    room.declare().await.expect("declare");
    assert!(matches!(
        room.add_group_member(&alias("carl")).await,
        Err(RoomError::Gone(_))
    ));
}

// ----- store -----

#[tokio::test]
async fn persist_then_restore_gives_back_metadata_cache_and_last_sequence() {
    let b = backends();
    let room = b.room("saved", true, 10);
    room.declare().await.expect("declare");
    room.persist().await.expect("persist");
    room.add_group_member(&alias("carl")).await.expect("add");
    let stored = numbered(&room, 1, 3);
    b.store
        .insert_messages(room.name(), &stored)
        .await
        .expect("store");

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
    let mut expected = room.meta();
    expected.modify_time = fresh.modify_time();
    assert_eq!(fresh.meta(), expected);
    assert!(fresh.modify_time() >= room.modify_time());
    assert_eq!(fresh.cached(), stored);
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
async fn persist_moves_the_stored_modify_time_forward_only() {
    let b = backends();
    let room = b.room("touched", true, 10);
    // A copy of the room made now: it will be older than the room's later changes.
    let stale = b.room("touched", true, 10);
    room.persist().await.expect("persist the new room");
    tokio::time::sleep(Duration::from_millis(5)).await;
    room.put(message(&room, "later"));
    assert!(
        room.modify_time() > room.create_time(),
        "put changes the room"
    );
    room.persist().await.expect("persist again");
    let stored = b.store.load_room(room.name()).await.expect("load").unwrap();
    assert_eq!(stored.modify_time, room.modify_time());

    // An older copy of the room saving later does not move the time back.
    stale.persist().await.expect("persist a stale copy");
    let stored = b.store.load_room(room.name()).await.expect("load").unwrap();
    assert_eq!(stored.modify_time, room.modify_time());
}

#[tokio::test]
async fn persist_saves_metadata_only_and_never_numbers_messages() {
    let b = backends();
    let room = b.room("numbering", false, 10);
    for text in ["x", "y", "z"] {
        room.put(message(&room, text));
    }
    room.persist().await.expect("persist");
    assert!(!room.dirty());
    assert!(
        room.cached()
            .iter()
            .all(|m| m.dirty && m.mess_props.sequence_number.is_none()),
        "only the room's consumer numbers and stores messages"
    );
    assert!(
        b.store
            .latest_messages(room.name(), 10)
            .await
            .expect("latest")
            .is_empty()
    );
    assert!(
        b.store
            .load_room(room.name())
            .await
            .expect("load")
            .is_some()
    );
}

#[tokio::test]
async fn restore_keeps_only_the_newest_capacity_messages() {
    let b = backends();
    let room = b.room("bounded", true, 10);
    room.persist().await.expect("persist");
    b.store
        .insert_messages(room.name(), &numbered(&room, 1, 6))
        .await
        .expect("store");

    let small = b.room("bounded", true, 4);
    assert!(small.restore().await.expect("restore"));
    assert_eq!(texts(&small.cached()), ["3", "4", "5", "6"]);
    assert_eq!(small.last_sequence(), 6);
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
        list.add_or_get(b.room("beta", false, 10)).group_room(),
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
    list.add(group.clone());
    list.add(private.clone());
    list.persist().await.expect("persist");
    let in_group = numbered(&group, 1, 1);
    let in_private = numbered(&private, 1, 2);
    b.store
        .insert_messages(group.name(), &in_group)
        .await
        .expect("store");
    b.store
        .insert_messages(private.name(), &in_private)
        .await
        .expect("store");

    let restored = b.list("main");
    restored.restore().await.expect("restore");
    assert_eq!(restored.meta().rooms, list.meta().rooms);
    for (original, stored) in [(&group, &in_group), (&private, &in_private)] {
        let back = restored.find(original.name()).expect("restored room");
        assert_eq!(back.members(), original.members());
        assert_eq!(back.group_room(), original.group_room());
        assert_eq!(&back.cached(), stored);
        assert_eq!(back.last_sequence(), stored.len() as u64);
    }

    let other = b.list("other");
    other.restore().await.expect("restore an unknown list");
    assert!(other.rooms().is_empty());
}

#[tokio::test]
async fn the_stored_room_list_changes_one_name_at_a_time() {
    let b = backends();
    // Two instances' lists of one deployment: neither undoes the other.
    let (one, two) = (b.list("shared"), b.list("shared"));
    one.register(&name("a")).await.expect("register a");
    two.register(&name("b")).await.expect("register b");
    one.add(b.room("c", true, 10));
    one.persist_meta().await.expect("persist one's view");
    assert_eq!(
        two.stored_names().await.expect("names"),
        [name("a"), name("b"), name("c")]
    );
    two.unregister(&name("a")).await.expect("unregister a");
    two.persist_meta()
        .await
        .expect("persist two's (empty) view");
    assert_eq!(
        one.stored_names().await.expect("names"),
        [name("b"), name("c")]
    );
}

// ----- the consumer -----

/// Records what the consumer announces.
#[derive(Default)]
struct Heard(std::sync::Mutex<Vec<ChatMessage>>);

#[async_trait::async_trait]
impl retrieve::Announce for Heard {
    async fn stored(&self, _room: &RoomName, messages: &[ChatMessage]) {
        self.0.lock().unwrap().extend_from_slice(messages);
    }

    fn health(&self, _room: &RoomName, _health: retrieve::Health) {}

    async fn queue_lost(&self, _room: &RoomName) {}
}

impl Heard {
    fn texts(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|m| m.message.clone())
            .collect()
    }
}

#[tokio::test]
async fn the_consumer_numbers_stores_and_announces_messages_once() {
    let b = backends();
    let room = b.room("consumer", false, 10);
    room.declare().await.expect("declare");
    room.persist().await.expect("persist");
    let heard = Arc::new(Heard::default());
    let shutdown = CancellationToken::new();
    let consumer = retrieve::RoomConsumer {
        room: room.name().clone(),
        broker: b.broker.clone(),
        store: b.store.clone(),
        announce: heard.clone(),
        created: Default::default(),
        subscribing: std::sync::Arc::new(tokio::sync::Semaphore::new(1)),
        urgent: Default::default(),
        at_start: Default::default(),
    };
    let task = tokio::spawn(retrieve::retrieve_messages(consumer, shutdown.clone()));

    let mut sent = Vec::new();
    for text in ["one", "two", "three"] {
        let message = room
            .send_message(text.into(), props(&room))
            .await
            .expect("send");
        assert_eq!(message.mess_props.mess_type, MessageType::Sent);
        sent.push(message);
    }
    eventually("three messages announced", || heard.texts().len() == 3).await;

    let stored = b
        .store
        .latest_messages(room.name(), 10)
        .await
        .expect("latest");
    assert_eq!(texts(&stored), ["one", "two", "three"]);
    assert_eq!(sequences(&stored), [Some(1), Some(2), Some(3)]);
    for (received, sent) in stored.iter().zip(&sent) {
        assert_eq!(received.mess_props.id, sent.mess_props.id);
        assert_eq!(received.mess_props.mess_type, MessageType::Received);
        assert!(received.mess_props.rec_time.is_some());
    }
    assert_eq!(*heard.0.lock().unwrap(), stored, "announced as stored");

    // The same message published twice (a redelivery in disguise), then a marker behind it.
    let twice = ChatMessage::new("twice".into(), props(&room));
    let body = serde_json::to_vec(&twice).expect("serialise");
    for _ in 0..2 {
        b.broker
            .publish(room.name(), body.clone())
            .await
            .expect("publish");
    }
    room.send_message("after".into(), props(&room))
        .await
        .expect("send marker");
    eventually("the marker announced", || {
        heard.texts().last().map(String::as_str) == Some("after")
    })
    .await;

    let stored = b
        .store
        .latest_messages(room.name(), 10)
        .await
        .expect("latest");
    assert_eq!(texts(&stored), ["one", "two", "three", "twice", "after"]);
    assert_eq!(
        sequences(&stored),
        [Some(1), Some(2), Some(3), Some(4), Some(5)],
        "stored once, numbered once"
    );
    assert_eq!(b.broker.ready_count(room.name().as_str()), Some(0));

    shutdown.cancel();
    tokio::time::timeout(WAIT, task)
        .await
        .expect("the consumer stops on shutdown")
        .expect("the consumer did not panic");
}

#[tokio::test]
async fn a_consumer_behind_another_numberer_renumbers_after_the_stored_last() {
    let b = backends();
    let room = b.room("fenced", false, 10);
    room.declare().await.expect("declare");
    room.persist().await.expect("persist");
    let heard = Arc::new(Heard::default());
    let shutdown = CancellationToken::new();
    let consumer = retrieve::RoomConsumer {
        room: room.name().clone(),
        broker: b.broker.clone(),
        store: b.store.clone(),
        announce: heard.clone(),
        created: Default::default(),
        subscribing: std::sync::Arc::new(tokio::sync::Semaphore::new(1)),
        urgent: Default::default(),
        at_start: Default::default(),
    };
    let task = tokio::spawn(retrieve::retrieve_messages(consumer, shutdown.clone()));
    room.send_message("first".into(), props(&room))
        .await
        .expect("send");
    eventually("first announced", || heard.texts().len() == 1).await;

    // Another instance numbered and stored 2 and 3 meanwhile (this consumer believes 1 is last).
    let elsewhere = numbered(&room, 2, 2);
    b.store
        .insert_messages(room.name(), &elsewhere)
        .await
        .expect("store elsewhere");
    room.send_message("second".into(), props(&room))
        .await
        .expect("send");
    eventually("second announced", || heard.texts().len() == 2).await;

    let stored = b
        .store
        .latest_messages(room.name(), 10)
        .await
        .expect("latest");
    assert_eq!(texts(&stored), ["first", "2", "3", "second"]);
    assert_eq!(sequences(&stored), [Some(1), Some(2), Some(3), Some(4)]);
    shutdown.cancel();
    let _ = tokio::time::timeout(WAIT, task).await;
}

#[tokio::test]
async fn copies_of_a_stored_message_in_one_batch_all_read_as_the_stored_copy() {
    let b = backends();
    let room = b.room("copies", false, 10);
    room.declare().await.expect("declare");
    room.persist().await.expect("persist");
    // Stored already as number 1 (a client's first attempt), then retried twice at once: both
    // retries reach the consumer in one batch, behind them a marker.
    let first = numbered(&room, 1, 1).remove(0);
    b.store
        .insert_messages(room.name(), std::slice::from_ref(&first))
        .await
        .expect("store");
    let mut retry = first.clone();
    retry.mess_props.sequence_number = None;
    retry.mess_props.mess_type = MessageType::Sent;
    let body = serde_json::to_vec(&retry).expect("serialise");
    for _ in 0..2 {
        b.broker
            .publish(room.name(), body.clone())
            .await
            .expect("publish");
    }
    room.send_message("marker".into(), props(&room))
        .await
        .expect("send marker");

    let heard = Arc::new(Heard::default());
    let shutdown = CancellationToken::new();
    let consumer = retrieve::RoomConsumer {
        room: room.name().clone(),
        broker: b.broker.clone(),
        store: b.store.clone(),
        announce: heard.clone(),
        created: Default::default(),
        subscribing: std::sync::Arc::new(tokio::sync::Semaphore::new(1)),
        urgent: Default::default(),
        at_start: Default::default(),
    };
    let task = tokio::spawn(retrieve::retrieve_messages(consumer, shutdown.clone()));
    eventually("the batch announced", || heard.texts().len() == 3).await;
    let announced = heard.0.lock().unwrap().clone();
    assert_eq!(announced[0], first, "a retry reads as the stored copy");
    assert_eq!(
        announced[1], first,
        "so does the second retry in the same batch"
    );
    assert_eq!(announced[2].message, "marker");
    assert_eq!(announced[2].mess_props.sequence_number, Some(2));
    shutdown.cancel();
    let _ = tokio::time::timeout(WAIT, task).await;
}
