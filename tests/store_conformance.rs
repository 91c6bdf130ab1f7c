//! Conformance suite for the [`Store`] trait: every test is written once and runs on both back
//! ends, the embedded redb file (in a temporary directory) and the real MongoDB-protocol server
//! (in a database of the test's own, dropped at the end).
//!
//! `cargo test --test store_conformance` runs `embedded::<test>` and `real::<test>` for each.

#[macro_use]
mod common;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use common::{Backend, Env};
use futures_util::FutureExt;
use mess_chat::model::{
    Alias, ChatMessage, MessageId, MessageProperties, MessageType, RoomListMeta, RoomMeta,
    RoomName, UserRecord,
};
use mess_chat::store::{Created, InsertStop, Inserted, Schema, Store, StoreError};
use uuid::Uuid;

on_both_backends!(
    room_metadata_round_trips_exactly,
    an_unknown_room_or_list_loads_as_none,
    room_list_metadata_round_trips_exactly,
    insert_is_idempotent_by_message_id,
    latest_messages_returns_the_newest_n_oldest_first,
    a_limit_of_zero_returns_no_messages,
    messages_before_pages_backwards_without_gap_or_duplicate,
    last_sequence_is_zero_for_an_empty_room_then_the_highest,
    delete_room_removes_metadata_and_messages,
    awkward_text_and_millisecond_times_round_trip_exactly,
    rooms_are_isolated_from_each_other,
    messages_after_pages_forwards_without_gap_or_duplicate,
    a_batch_insert_stops_at_the_first_stored_id,
    concurrent_batches_of_many_rooms_each_end_as_they_would_alone,
    a_number_taken_by_another_message_is_refused,
    a_room_is_created_once,
    rooms_owned_counts_the_rooms_an_alias_created_and_still_has,
    concurrent_creations_by_one_new_owner_index_every_room,
    members_change_one_at_a_time_and_index_their_rooms,
    the_room_list_changes_one_name_at_a_time,
    instance_numbers_are_leased_to_one_holder_at_a_time,
    an_idempotency_name_keeps_its_first_id,
    a_new_store_is_of_the_current_layout,
    unnumbered_messages_are_refused,
    search_matches_substrings_without_ascii_case_newest_first,
    users_register_once_and_load_back,
    ping_succeeds,
);

/// Runs `test` on a fresh store of `backend`, then removes what it left (even if it panicked).
async fn with_store<F, Fut>(backend: Backend, test: F)
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: Future<Output = ()>,
{
    let env = Env::new(backend);
    let outcome = AssertUnwindSafe(test(env.store().await))
        .catch_unwind()
        .await;
    env.cleanup(&[], &[]).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// A fixed instant with a non-zero millisecond part (the precision both stores keep).
fn at(millis: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(millis).expect("a valid instant")
}

fn alias(name: &str) -> Alias {
    Alias::new(name).expect("valid alias")
}

/// A fresh message id, unique in this process, and large (near 2^53) so that every back end is
/// shown to keep all of its bits.
fn fresh_id() -> MessageId {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    MessageId((1 << 52) + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

/// A message as the room's consumer stores it: received, numbered, not dirty.
fn received(room: &RoomName, sequence: u64, text: &str) -> ChatMessage {
    let mut props =
        MessageProperties::new_sent(room.clone(), alias("ann"), "bob".into(), fresh_id());
    props.mess_type = MessageType::Received;
    props.rec_time = Some(props.sent_time + Duration::milliseconds(7));
    props.sequence_number = Some(sequence);
    ChatMessage {
        message: text.to_string(),
        mess_props: props,
        dirty: false,
    }
}

/// Stores messages numbered `from..=to` in `room`, in that order, and returns them.
async fn insert_range(store: &dyn Store, room: &RoomName, from: u64, to: u64) -> Vec<ChatMessage> {
    let mut stored = Vec::new();
    for sequence in from..=to {
        let message = received(room, sequence, &format!("message {sequence}"));
        let outcome = store.insert_message(&message).await.expect("insert");
        assert_eq!(outcome, Inserted::New, "message {sequence} is new");
        stored.push(message);
    }
    stored
}

fn sequences(messages: &[ChatMessage]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| {
            m.mess_props
                .sequence_number
                .expect("stored messages are numbered")
        })
        .collect()
}

fn room_meta(name: &RoomName, group_room: bool, members: &[&str]) -> RoomMeta {
    RoomMeta {
        name: name.clone(),
        group_room,
        owner_alias: alias(members[0]),
        members: members.iter().map(|m| alias(m)).collect(),
        create_time: at(1_700_000_000_123),
        modify_time: at(1_700_000_456_789),
        version: 0,
    }
}

async fn room_metadata_round_trips_exactly(backend: Backend) {
    with_store(backend, |store| async move {
        let room = common::room("meta");
        let group = room_meta(&room, true, &["ann", "bob", "carl-2", "d_e"]);
        store.save_room(&group).await.expect("save");
        assert_eq!(
            store.load_room(&room).await.expect("load"),
            Some(group.clone())
        );

        // Saving again only moves the modify time forward: membership and kind are changed by
        // their own atomic operations, never overwritten by an instance's (maybe stale) copy.
        let mut stale = room_meta(&room, false, &["zed", "amy"]);
        stale.modify_time = at(1_800_000_000_001);
        store.save_room(&stale).await.expect("save again");
        let mut expected = group.clone();
        expected.modify_time = stale.modify_time;
        assert_eq!(
            store.load_room(&room).await.expect("load"),
            Some(expected.clone())
        );
        stale.modify_time = at(1_000);
        store.save_room(&stale).await.expect("save an older copy");
        assert_eq!(store.load_room(&room).await.expect("load"), Some(expected));
    })
    .await
}

async fn an_unknown_room_or_list_loads_as_none(backend: Backend) {
    with_store(backend, |store| async move {
        let room = common::room("nowhere");
        assert_eq!(store.load_room(&room).await.expect("load"), None);
        let list = common::unique("no-list");
        assert_eq!(store.load_room_list(&list).await.expect("load list"), None);
    })
    .await
}

async fn room_list_metadata_round_trips_exactly(backend: Backend) {
    with_store(backend, |store| async move {
        let name = common::unique("list");
        let mut meta = RoomListMeta {
            name: name.clone(),
            rooms: vec![common::room("a"), common::room("b"), common::room("c")],
            create_time: at(1_600_000_000_001),
            modify_time: at(1_650_000_000_999),
        };
        meta.rooms.sort();
        store.save_room_list(&meta).await.expect("save list");
        assert_eq!(
            store.load_room_list(&name).await.expect("load list"),
            Some(meta.clone())
        );

        // Saving another instance's view adds its rooms and never removes one.
        let mut other = meta.clone();
        let added = common::room("d");
        other.rooms = vec![added.clone()];
        other.modify_time = at(1_660_000_000_042);
        store.save_room_list(&other).await.expect("save list again");
        meta.rooms.push(added);
        meta.rooms.sort();
        meta.modify_time = other.modify_time;
        assert_eq!(
            store.load_room_list(&name).await.expect("load list"),
            Some(meta)
        );
    })
    .await
}

async fn insert_is_idempotent_by_message_id(backend: Backend) {
    with_store(backend, |store| async move {
        let room = common::room("idem");
        let first = received(&room, 1, "first copy");
        assert_eq!(
            store.insert_message(&first).await.expect("insert"),
            Inserted::New
        );

        // A redelivery numbered again, with other content: the first copy wins.
        let mut again = received(&room, 2, "second copy");
        again.mess_props.id = first.mess_props.id;
        assert_eq!(
            store.insert_message(&again).await.expect("insert again"),
            Inserted::Existing(first.clone())
        );

        assert_eq!(
            store.latest_messages(&room, 10).await.expect("latest"),
            vec![first.clone()]
        );
        assert_eq!(store.last_sequence(&room).await.expect("last"), 1);
        assert_eq!(
            store.messages_before(&room, 3, 10).await.expect("before"),
            vec![first],
            "the second copy must not be stored under its own number"
        );
    })
    .await
}

async fn latest_messages_returns_the_newest_n_oldest_first(backend: Backend) {
    with_store(backend, |store| async move {
        let room = common::room("latest");
        // Stored out of order: the store orders by sequence number, not by arrival.
        let mut all = insert_range(&*store, &room, 4, 7).await;
        all.splice(0..0, insert_range(&*store, &room, 1, 3).await);

        let newest = store.latest_messages(&room, 3).await.expect("latest 3");
        assert_eq!(newest, all[4..].to_vec());
        assert_eq!(sequences(&newest), [5, 6, 7]);

        let everything = store.latest_messages(&room, 100).await.expect("latest 100");
        assert_eq!(everything, all);
        assert_eq!(
            store.latest_messages(&room, 1).await.expect("latest 1"),
            all[6..].to_vec()
        );
    })
    .await
}

async fn a_limit_of_zero_returns_no_messages(backend: Backend) {
    with_store(backend, |store| async move {
        let room = common::room("zero");
        insert_range(&*store, &room, 1, 3).await;
        assert_eq!(
            store.latest_messages(&room, 0).await.expect("latest 0"),
            vec![],
            "latest_messages with a limit of 0 asks for no messages"
        );
        assert_eq!(
            store.messages_before(&room, 3, 0).await.expect("before, 0"),
            vec![],
            "messages_before with a limit of 0 asks for no messages"
        );
    })
    .await
}

async fn messages_before_pages_backwards_without_gap_or_duplicate(backend: Backend) {
    with_store(backend, |store| async move {
        let room = common::room("pages");
        let all = insert_range(&*store, &room, 1, 25).await;

        let mut page = store.latest_messages(&room, 10).await.expect("latest");
        let mut pages = vec![sequences(&page)];
        let mut seen = page.clone();
        while let Some(oldest) = page.first() {
            let before = oldest.mess_props.sequence_number.expect("numbered");
            page = store
                .messages_before(&room, before, 10)
                .await
                .expect("before");
            pages.push(sequences(&page));
            seen.splice(0..0, page.iter().cloned());
            assert!(pages.len() <= 5, "paging must end: {pages:?}");
        }

        assert_eq!(
            pages,
            vec![
                (16..=25).collect::<Vec<u64>>(),
                (6..=15).collect(),
                (1..=5).collect(),
                vec![],
            ]
        );
        assert_eq!(
            seen, all,
            "the pages together are every message exactly once"
        );
    })
    .await
}

async fn last_sequence_is_zero_for_an_empty_room_then_the_highest(backend: Backend) {
    with_store(backend, |store| async move {
        let room = common::room("lastseq");
        assert_eq!(store.last_sequence(&room).await.expect("last"), 0);
        store
            .save_room(&room_meta(&room, false, &["ann", "bob"]))
            .await
            .expect("save");
        assert_eq!(
            store.last_sequence(&room).await.expect("last"),
            0,
            "metadata alone has no sequence number"
        );

        for sequence in [3, 1, 2] {
            let message = received(&room, sequence, "x");
            store.insert_message(&message).await.expect("insert");
        }
        assert_eq!(store.last_sequence(&room).await.expect("last"), 3);
        store
            .insert_message(&received(&room, 12, "y"))
            .await
            .expect("insert");
        assert_eq!(store.last_sequence(&room).await.expect("last"), 12);
    })
    .await
}

async fn delete_room_removes_metadata_and_messages(backend: Backend) {
    with_store(backend, |store| async move {
        let room = common::room("delete");
        store
            .save_room(&room_meta(&room, true, &["ann"]))
            .await
            .expect("save");
        let messages = insert_range(&*store, &room, 1, 3).await;

        store.delete_room(&room).await.expect("delete");

        assert_eq!(store.load_room(&room).await.expect("load"), None);
        assert_eq!(
            store.latest_messages(&room, 10).await.expect("latest"),
            vec![]
        );
        assert_eq!(
            store.messages_before(&room, 10, 10).await.expect("before"),
            vec![]
        );
        assert_eq!(store.last_sequence(&room).await.expect("last"), 0);
        // No trace of the ids either: the same message can be stored afresh.
        assert_eq!(
            store.insert_message(&messages[0]).await.expect("insert"),
            Inserted::New
        );
        assert_eq!(
            store.latest_messages(&room, 10).await.expect("latest"),
            vec![messages[0].clone()]
        );
    })
    .await
}

async fn awkward_text_and_millisecond_times_round_trip_exactly(backend: Backend) {
    with_store(backend, |store| async move {
        let room = common::room("text");
        let texts = [
            "héllo wörld — 👋🏽 你好 مرحبا שלום",
            "https://example.org/a b?x=1&y=%20#frag/..\\%00+plus",
            "before\0after\0",
            "{\"$set\": {\"a.b\": 1}, \"$where\": \"1\"}",
            "line\nbreak\ttab\r\n 'single' \"double\" <tag> `tick`",
            " ",
        ];
        let mut stored = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            let sequence = i as u64 + 1;
            let mut message = received(&room, sequence, text);
            message.mess_props.to_user = format!("zoë & co/?{sequence}\0");
            message.mess_props.sent_time = at(1_700_000_000_001 + i as i64 * 111);
            message.mess_props.rec_time = Some(at(1_700_000_000_999 + i as i64 * 111));
            store.insert_message(&message).await.expect("insert");
            stored.push(message);
        }
        // Times from the clock as the service takes them (truncated to milliseconds).
        let mut now = received(&room, 7, "now");
        now.mess_props.sent_time = mess_chat::model::now();
        now.mess_props.rec_time = Some(mess_chat::model::now());
        store.insert_message(&now).await.expect("insert");
        stored.push(now);

        let back = store.latest_messages(&room, 100).await.expect("latest");
        assert_eq!(back.len(), stored.len());
        for (back, sent) in back.iter().zip(&stored) {
            assert_eq!(back, sent, "message {:?} must round-trip", sent.message);
        }
    })
    .await
}

async fn rooms_are_isolated_from_each_other(backend: Backend) {
    with_store(backend, |store| async move {
        // One name is a prefix of the other, to catch range scans that leak across rooms.
        let a = common::room("iso");
        let b = RoomName::new(format!("{a}-b")).expect("valid room name");
        let meta_a = room_meta(&a, true, &["ann"]);
        let meta_b = room_meta(&b, false, &["bob", "cat"]);
        store.save_room(&meta_a).await.expect("save a");
        store.save_room(&meta_b).await.expect("save b");
        let in_a = insert_range(&*store, &a, 1, 5).await;
        let in_b = insert_range(&*store, &b, 1, 2).await;

        assert_eq!(store.latest_messages(&a, 100).await.expect("a"), in_a);
        assert_eq!(store.latest_messages(&b, 100).await.expect("b"), in_b);
        assert_eq!(store.messages_before(&b, 100, 100).await.expect("b"), in_b);
        assert_eq!(store.last_sequence(&a).await.expect("a"), 5);
        assert_eq!(store.last_sequence(&b).await.expect("b"), 2);
        assert_eq!(store.load_room(&b).await.expect("b"), Some(meta_b.clone()));

        store.delete_room(&a).await.expect("delete a");
        assert_eq!(store.load_room(&a).await.expect("a"), None);
        assert_eq!(store.load_room(&b).await.expect("b"), Some(meta_b));
        assert_eq!(store.latest_messages(&b, 100).await.expect("b"), in_b);
    })
    .await
}

async fn ping_succeeds(backend: Backend) {
    with_store(backend, |store| async move {
        store.ping().await.expect("ping");
    })
    .await
}

async fn messages_after_pages_forwards_without_gap_or_duplicate(backend: Backend) {
    with_store(backend, |store| async move {
        let room = common::room("after");
        insert_range(store.as_ref(), &room, 1, 25).await;
        let mut after = 0;
        let mut seen = Vec::new();
        loop {
            let page = store.messages_after(&room, after, 10).await.expect("page");
            if page.is_empty() {
                break;
            }
            seen.extend(sequences(&page));
            after = *seen.last().unwrap();
        }
        assert_eq!(seen, (1..=25).collect::<Vec<_>>());
        assert!(
            store
                .messages_after(&room, 25, 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            store
                .messages_after(&room, u64::MAX, 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(store.messages_after(&room, 3, 0).await.unwrap().is_empty());
    })
    .await
}

async fn a_batch_insert_stops_at_the_first_stored_id(backend: Backend) {
    with_store(backend, |store| async move {
        let room = common::room("batch");
        let first = insert_range(store.as_ref(), &room, 1, 2).await;
        // A batch led by an id stored already (here under another number, which must not win):
        // nothing of it is written, and the store says where it stopped.
        let mut retried = first[0].clone();
        retried.mess_props.sequence_number = Some(91);
        let (three, four) = (received(&room, 3, "three"), received(&room, 4, "four"));
        let batch = [retried.clone(), three.clone(), four.clone()];
        assert_eq!(
            store.insert_messages(&room, &batch).await.unwrap(),
            Some(InsertStop::IdStored(0))
        );
        assert_eq!(store.last_sequence(&room).await.unwrap(), 2);
        // A stored id in the middle: the prefix before it is written, nothing after it.
        let (five, six) = (
            received(&room, 3, "five as 3"),
            received(&room, 4, "six as 4"),
        );
        let batch = [five, first[1].clone(), six];
        assert_eq!(
            store.insert_messages(&room, &batch).await.unwrap(),
            Some(InsertStop::IdStored(1))
        );
        let all = store.latest_messages(&room, 100).await.unwrap();
        assert_eq!(sequences(&all), [1, 2, 3]);
        assert_eq!(all[2].message, "five as 3");
        // A clean batch is written whole, and then counts as stored.
        assert_eq!(
            store
                .insert_messages(&room, std::slice::from_ref(&four))
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            store
                .insert_messages(&room, std::slice::from_ref(&four))
                .await
                .unwrap(),
            Some(InsertStop::IdStored(0))
        );
        let ids: Vec<_> = [&first[0], &first[1], &four, &three]
            .iter()
            .map(|m| m.mess_props.id)
            .collect();
        let mut found = store.existing_messages(&room, &ids).await.unwrap();
        found.sort_by_key(|m| m.mess_props.sequence_number);
        assert_eq!(sequences(&found), [1, 2, 4], "three was never written");
        assert!(
            store
                .existing_messages(&room, &[])
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(store.insert_messages(&room, &[]).await.unwrap(), None);
    })
    .await
}

/// Batches of many rooms written at once (the embedded store commits them together): each is
/// written or stops exactly as it would alone, and one's stop does not touch the others.
async fn concurrent_batches_of_many_rooms_each_end_as_they_would_alone(backend: Backend) {
    with_store(backend, |store| async move {
        let rooms: Vec<RoomName> = (0..24).map(|_| common::room("group")).collect();
        // Every third room has message 1 stored already, so its batch (led by it) stops at once.
        let mut stored_first = Vec::new();
        for room in rooms.iter().step_by(3) {
            stored_first.push(insert_range(store.as_ref(), room, 1, 1).await.remove(0));
        }
        let batches: Vec<Vec<ChatMessage>> = rooms
            .iter()
            .enumerate()
            .map(|(i, room)| {
                let mut batch = vec![if i % 3 == 0 {
                    stored_first[i / 3].clone()
                } else {
                    received(room, 1, "one")
                }];
                batch.push(received(room, 2, "two"));
                batch
            })
            .collect();
        let outcomes = futures_util::future::join_all(
            rooms
                .iter()
                .zip(&batches)
                .map(|(room, batch)| store.insert_messages(room, batch)),
        )
        .await;
        for (i, (room, outcome)) in rooms.iter().zip(outcomes).enumerate() {
            let all = store.latest_messages(room, 10).await.unwrap();
            if i % 3 == 0 {
                assert_eq!(outcome.unwrap(), Some(InsertStop::IdStored(0)), "{room}");
                assert_eq!(sequences(&all), [1], "{room}: nothing after the stop");
            } else {
                assert_eq!(outcome.unwrap(), None, "{room}");
                assert_eq!(sequences(&all), [1, 2], "{room}");
                assert_eq!(all[1].message, "two");
            }
        }
    })
    .await
}

async fn a_number_taken_by_another_message_is_refused(backend: Backend) {
    with_store(backend, |store| async move {
        let room = common::room("fence");
        let first = insert_range(store.as_ref(), &room, 1, 2).await;
        // A stale numberer's batch: 3 is free, 2 is held by another message.
        let (three, stale_two) = (received(&room, 3, "three"), received(&room, 2, "stale"));
        let batch = [three.clone(), stale_two.clone(), received(&room, 4, "four")];
        assert_eq!(
            store.insert_messages(&room, &batch).await.unwrap(),
            Some(InsertStop::NumberTaken(1))
        );
        assert_eq!(
            store.insert_message(&stale_two).await.unwrap(),
            Inserted::NumberTaken
        );
        let all = store.latest_messages(&room, 100).await.unwrap();
        assert_eq!(
            sequences(&all),
            [1, 2, 3],
            "the prefix before the collision is stored"
        );
        assert_eq!(all[1], first[1], "the number's first holder stays");
        assert!(
            store
                .existing_messages(&room, &[stale_two.mess_props.id])
                .await
                .unwrap()
                .is_empty()
        );
    })
    .await
}

async fn a_room_is_created_once(backend: Backend) {
    with_store(backend, |store| async move {
        let room = common::room("create");
        let first = room_meta(&room, true, &["ann"]);
        assert_eq!(store.create_room(&first).await.unwrap(), Created::New);
        let second = room_meta(&room, false, &["bob", "carl"]);
        assert_eq!(
            store.create_room(&second).await.unwrap(),
            Created::Existing(first.clone())
        );
        assert_eq!(store.load_room(&room).await.unwrap(), Some(first));
        assert_eq!(
            store.rooms_of(&alias("ann")).await.unwrap(),
            std::slice::from_ref(&room)
        );
        assert!(store.rooms_of(&alias("bob")).await.unwrap().is_empty());
    })
    .await
}

async fn rooms_owned_counts_the_rooms_an_alias_created_and_still_has(backend: Backend) {
    with_store(backend, |store| async move {
        let (ann, bob) = (alias("ann"), alias("bob"));
        assert_eq!(store.rooms_owned(&ann).await.unwrap(), 0);
        let (group, private, saved) = (
            common::room("owned"),
            common::room("owned"),
            common::room("owned"),
        );
        let group_meta = room_meta(&group, true, &["ann"]);
        store.create_room(&group_meta).await.unwrap();
        // A second creation of the same room is not a second room.
        store.create_room(&group_meta).await.unwrap();
        store
            .create_room(&room_meta(&private, false, &["ann", "bob"]))
            .await
            .unwrap();
        // `persist` of a room not stored yet creates it, owned too.
        store
            .save_room(&room_meta(&saved, true, &["ann"]))
            .await
            .unwrap();
        assert_eq!(store.rooms_owned(&ann).await.unwrap(), 3);
        // A member is not an owner.
        store.add_member(&group, &bob).await.unwrap();
        assert_eq!(store.rooms_owned(&bob).await.unwrap(), 0);
        store.delete_room(&group).await.unwrap();
        store.delete_room(&private).await.unwrap();
        assert_eq!(store.rooms_owned(&ann).await.unwrap(), 1);
        store.delete_room(&saved).await.unwrap();
        assert_eq!(store.rooms_owned(&ann).await.unwrap(), 0);
    })
    .await
}

/// Creations at once by an alias the store has not seen: their membership writes race to make
/// the alias's one index document, and every room must still be indexed (owned and joined).
async fn concurrent_creations_by_one_new_owner_index_every_room(backend: Backend) {
    with_store(backend, |store| async move {
        const ROUNDS: usize = 5;
        const ROOMS: u64 = 16;
        for round in 0..ROUNDS {
            let owner = format!("fresh-{round}");
            let rooms: Vec<RoomName> = (0..ROOMS).map(|_| common::room("race")).collect();
            let creations = rooms.iter().map(|room| {
                let store = Arc::clone(&store);
                let meta = room_meta(room, true, &[owner.as_str()]);
                async move { store.create_room(&meta).await }
            });
            for created in futures_util::future::join_all(creations).await {
                assert_eq!(created.expect("create"), Created::New);
            }
            let owner = alias(&owner);
            assert_eq!(
                store.rooms_owned(&owner).await.unwrap(),
                ROOMS,
                "round {round}"
            );
            let mut joined = store.rooms_of(&owner).await.unwrap();
            joined.sort();
            let mut expected = rooms;
            expected.sort();
            assert_eq!(joined, expected, "round {round}");
        }
    })
    .await
}

async fn members_change_one_at_a_time_and_index_their_rooms(backend: Backend) {
    with_store(backend, |store| async move {
        let (room, other) = (common::room("members"), common::room("other"));
        store
            .create_room(&room_meta(&room, true, &["ann"]))
            .await
            .unwrap();
        store
            .create_room(&room_meta(&other, false, &["bob", "carl"]))
            .await
            .unwrap();
        let added = store
            .add_member(&room, &alias("bob"))
            .await
            .unwrap()
            .unwrap();
        assert!(added.changed);
        assert_eq!(added.meta.members, [alias("ann"), alias("bob")]);
        let again = store
            .add_member(&room, &alias("bob"))
            .await
            .unwrap()
            .unwrap();
        assert!(!again.changed, "adding a member twice changes nothing");
        assert_eq!(again.meta.members, [alias("ann"), alias("bob")]);
        assert_eq!(
            (added.meta.version, again.meta.version),
            (1, 1),
            "each change counts once, in the version"
        );
        let mut bobs = store.rooms_of(&alias("bob")).await.unwrap();
        bobs.sort();
        let mut expected = vec![room.clone(), other.clone()];
        expected.sort();
        assert_eq!(bobs, expected);

        let removed = store
            .remove_member(&room, &alias("bob"))
            .await
            .unwrap()
            .unwrap();
        assert!(removed.changed);
        assert_eq!(removed.meta.members, [alias("ann")]);
        assert_eq!(removed.meta.version, 2);
        assert!(
            !store
                .remove_member(&room, &alias("bob"))
                .await
                .unwrap()
                .unwrap()
                .changed
        );
        assert_eq!(
            store.rooms_of(&alias("bob")).await.unwrap(),
            std::slice::from_ref(&other)
        );
        assert_eq!(
            store.load_room(&room).await.unwrap().map(|m| m.members),
            Some(vec![alias("ann")])
        );

        let nowhere = common::room("nowhere");
        assert_eq!(
            store.add_member(&nowhere, &alias("bob")).await.unwrap(),
            None
        );
        assert_eq!(
            store.remove_member(&nowhere, &alias("bob")).await.unwrap(),
            None
        );

        store.delete_room(&other).await.unwrap();
        assert!(store.rooms_of(&alias("carl")).await.unwrap().is_empty());
    })
    .await
}

async fn the_room_list_changes_one_name_at_a_time(backend: Backend) {
    with_store(backend, |store| async move {
        let list = common::unique("list");
        let (a, b) = (common::room("a"), common::room("b"));
        store.add_to_room_list(&list, &a).await.unwrap();
        store.add_to_room_list(&list, &b).await.unwrap();
        store.add_to_room_list(&list, &a).await.unwrap();
        let mut both = vec![a.clone(), b.clone()];
        both.sort();
        assert_eq!(
            store.load_room_list(&list).await.unwrap().map(|m| m.rooms),
            Some(both)
        );
        store.remove_from_room_list(&list, &a).await.unwrap();
        let meta = store.load_room_list(&list).await.unwrap().unwrap();
        assert_eq!(meta.rooms, [b]);
        assert_eq!(meta.name, list);
    })
    .await
}

async fn instance_numbers_are_leased_to_one_holder_at_a_time(backend: Backend) {
    with_store(backend, |store| async move {
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let long = std::time::Duration::from_secs(60);
        assert_eq!(store.lease_instance(a, 2, long).await.unwrap(), Some(0));
        assert_eq!(store.lease_instance(b, 2, long).await.unwrap(), Some(1));
        assert_eq!(
            store.lease_instance(c, 2, long).await.unwrap(),
            None,
            "all held"
        );
        assert_eq!(
            store.lease_instance(a, 2, long).await.unwrap(),
            Some(0),
            "a holder gets its own number back"
        );
        assert!(store.renew_instance(0, a, long).await.unwrap());
        assert!(!store.renew_instance(0, b, long).await.unwrap(), "not b's");
        store.release_instance(0, b).await.unwrap();
        assert_eq!(
            store.lease_instance(c, 2, long).await.unwrap(),
            None,
            "b could not free a's"
        );
        store.release_instance(0, a).await.unwrap();
        assert_eq!(store.lease_instance(c, 2, long).await.unwrap(), Some(0));
        // A lease that expires is free for another holder.
        let short = std::time::Duration::from_millis(1);
        assert!(store.renew_instance(1, b, short).await.unwrap());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(store.lease_instance(a, 2, long).await.unwrap(), Some(1));
        assert!(
            !store.renew_instance(1, b, long).await.unwrap(),
            "b lost it"
        );
    })
    .await
}

async fn an_idempotency_name_keeps_its_first_id(backend: Backend) {
    with_store(backend, |store| async move {
        let name = common::unique("room\u{0}ann\u{0}key");
        let (first, second) = (fresh_id(), fresh_id());
        assert_eq!(
            store.claim_idempotency_name(&name, first).await.unwrap(),
            first
        );
        assert_eq!(
            store.claim_idempotency_name(&name, second).await.unwrap(),
            first
        );
        let other = format!("{name}-other");
        assert_eq!(
            store.claim_idempotency_name(&other, second).await.unwrap(),
            second
        );
    })
    .await
}

async fn a_new_store_is_of_the_current_layout(backend: Backend) {
    with_store(backend, |store| async move {
        assert_eq!(store.schema().await.unwrap(), Schema::Empty);
        assert_eq!(store.schema().await.unwrap(), Schema::Current);
        assert_eq!(store.migrate().await.unwrap(), 0, "nothing to convert");
        assert_eq!(store.schema().await.unwrap(), Schema::Current);
    })
    .await
}

async fn unnumbered_messages_are_refused(backend: Backend) {
    with_store(backend, |store| async move {
        let room = common::room("unnumbered");
        let mut message = received(&room, 1, "no number");
        message.mess_props.sequence_number = None;
        let single = store.insert_message(&message).await;
        assert!(
            matches!(single, Err(StoreError::Unnumbered(_))),
            "{single:?}"
        );
        let batch = store
            .insert_messages(&room, std::slice::from_ref(&message))
            .await;
        assert!(matches!(batch, Err(StoreError::Unnumbered(_))), "{batch:?}");
        assert_eq!(store.last_sequence(&room).await.unwrap(), 0);
    })
    .await
}

async fn search_matches_substrings_without_ascii_case_newest_first(backend: Backend) {
    with_store(backend, |store| async move {
        let room = common::room("search");
        let other = common::room("searchother");
        let texts = [
            "Hello world",
            "say hello",
            "goodbye",
            "HELLO again",
            "a.b*c (d)",
        ];
        for (i, text) in texts.iter().enumerate() {
            store
                .insert_message(&received(&room, i as u64 + 1, text))
                .await
                .unwrap();
        }
        store
            .insert_message(&received(&other, 1, "hello from elsewhere"))
            .await
            .unwrap();
        let found = store.search_messages(&room, "hello", 10).await.unwrap();
        let got: Vec<&str> = found.iter().map(|m| m.message.as_str()).collect();
        assert_eq!(got, ["HELLO again", "say hello", "Hello world"]);
        let limited = store.search_messages(&room, "hello", 2).await.unwrap();
        assert_eq!(sequences(&limited), [4, 2]);
        let special = store.search_messages(&room, "b*c (", 10).await.unwrap();
        assert_eq!(
            sequences(&special),
            [5],
            "pattern characters are plain text"
        );
        assert!(
            store
                .search_messages(&room, "absent", 10)
                .await
                .unwrap()
                .is_empty()
        );
    })
    .await
}

async fn users_register_once_and_load_back(backend: Backend) {
    with_store(backend, |store| async move {
        let name = common::alias("user");
        let user = UserRecord {
            alias: name.clone(),
            token_hash: "ab".repeat(32),
            create_time: at(1_700_000_000_321),
        };
        assert!(store.create_user(&user).await.unwrap(), "new alias");
        let again = UserRecord {
            token_hash: "cd".repeat(32),
            ..user.clone()
        };
        assert!(!store.create_user(&again).await.unwrap(), "taken alias");
        assert_eq!(
            store.load_user(&name).await.unwrap(),
            Some(user),
            "the first stays"
        );
        assert_eq!(
            store.load_user(&common::alias("nobody")).await.unwrap(),
            None
        );
    })
    .await
}

/// An earlier version's room collection kept unique indexes on fields this version no longer
/// writes (every new message would collide on the missing field): a store's first use of the
/// room drops them and makes the sequence index, and both messages of a batch are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_a_room_with_an_earlier_versions_indexes_drops_them_at_first_use() {
    use mongodb::IndexModel;
    use mongodb::bson::{Document, doc};
    use mongodb::options::IndexOptions;

    let env = Env::new(Backend::Real);
    let outcome = AssertUnwindSafe(async {
        let room = common::room("oldindex");
        let client = mongodb::Client::with_uri_str(common::mongo_url())
            .await
            .expect("client");
        let collection = client
            .database(&env.mongo_db)
            .collection::<Document>(room.as_str());
        for (name, field) in [("message_id", "old_id"), ("sequence_number", "old_seq")] {
            let index = IndexModel::builder()
                .keys(doc! { field: 1 })
                .options(
                    IndexOptions::builder()
                        .name(name.to_string())
                        .unique(true)
                        .build(),
                )
                .build();
            collection.create_index(index).await.expect("an old index");
        }
        let store = env.mongo().await;
        store
            .save_room(&room_meta(&room, true, &["ann"]))
            .await
            .expect("save the room");
        let batch = [received(&room, 1, "one"), received(&room, 2, "two")];
        assert_eq!(
            store.insert_messages(&room, &batch).await.expect("insert"),
            None
        );
        let mut names = collection.list_index_names().await.expect("indexes");
        names.sort();
        assert_eq!(names, ["_id_", "sequence_number_unique"]);
        assert_eq!(
            sequences(&store.latest_messages(&room, 10).await.unwrap()),
            [1, 2]
        );
    })
    .catch_unwind()
    .await;
    env.cleanup(&[], &[]).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
