//! The HTTP API end to end (the seed's `mess_chat_test`): a server on an ephemeral port, talked
//! to over HTTP, on the embedded back ends and on the real RabbitMQ + MongoDB-protocol server.

#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{Backend, TestServer, alias, room, unique};
use mess_chat::client::{ClientError, SendParams};
use mess_chat::model::{MAX_MESSAGE_BYTES, RoomName};
use mess_chat::service::ServiceConfig;
use serde_json::Value;

on_both_backends!(
    sends_are_stored_in_order_and_listed_oldest_first,
    private_room_holds_exactly_two_aliases,
    group_room_adds_each_new_sender_as_a_member,
    send_contradicting_the_room_kind_gets_409,
    unicode_and_url_special_text_round_trips,
    restart_restores_history_from_the_store,
    bad_inputs_get_a_4xx_with_a_json_error,
    message_at_the_size_limit_is_accepted_and_one_byte_more_is_413,
    history_spans_cache_and_store_without_gap_or_duplicate,
    past_the_caches_total_the_coldest_rooms_are_read_from_the_store,
    health_and_readiness_report_ok,
    a_private_room_may_be_named_after_its_recipient,
    concurrent_first_sends_create_the_room_once,
    cli_send_and_messages_talk_to_the_server,
    retries_with_one_idempotency_key_are_stored_once,
    metrics_report_sends_and_store_writes,
);

fn group_send(room: &RoomName, from: &str, text: &str) -> SendParams {
    SendParams {
        room_name: room.to_string(),
        message: text.into(),
        from_alias: from.into(),
        to_alias: None,
        group_room: Some(true),
        idempotency_key: None,
    }
}

fn private_send(room: &RoomName, from: &str, to: &str, text: &str) -> SendParams {
    SendParams {
        room_name: room.to_string(),
        message: text.into(),
        from_alias: from.into(),
        to_alias: Some(to.into()),
        group_room: Some(false),
        idempotency_key: None,
    }
}

/// The status and error code of a refused call.
fn refusal(result: Result<impl std::fmt::Debug, ClientError>) -> (u16, String) {
    match result {
        Err(ClientError::Status { status, body }) => {
            let code = body["error"]["code"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert!(
                body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "error body without a message: {body}"
            );
            (status, code)
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn sends_are_stored_in_order_and_listed_oldest_first(backend: Backend) {
    let t = TestServer::start(backend).await;
    let r = room("lobby");
    let (ann, bob) = (alias("ann"), alias("bob"));
    let texts = ["test message 1", "test message 2", "another message"];
    for (i, text) in texts.iter().enumerate() {
        let from = if i % 2 == 0 { &ann } else { &bob };
        let sent = t
            .client
            .send(&group_send(&r, from.as_str(), text))
            .await
            .unwrap();
        assert_eq!(sent.status, "stored");
        let props = &sent.message.mess_props;
        assert_eq!(props.sequence_number, Some(i as u64 + 1));
        assert_eq!(props.from_user, *from);
        assert_eq!(
            props.to_user,
            r.as_str(),
            "a group message goes to the room's exchange"
        );
        assert!(props.rec_time.is_some());
    }
    let listed = t.client.messages(r.as_str(), None).await.unwrap();
    assert_eq!(listed, texts);
    assert_eq!(
        t.client.messages(r.as_str(), Some(2)).await.unwrap(),
        texts[1..]
    );
    t.cleanup().await;
}

async fn private_room_holds_exactly_two_aliases(backend: Backend) {
    let t = TestServer::start(backend).await;
    let r = room("dm");
    let (ann, bob, eve) = (alias("ann"), alias("bob"), alias("eve"));
    let first = t
        .client
        .send(&private_send(&r, ann.as_str(), bob.as_str(), "hi bob"))
        .await
        .unwrap();
    assert_eq!(first.message.mess_props.to_user, bob.as_str());
    // The other member answers, naming the recipient or not.
    let mut reply = private_send(&r, bob.as_str(), ann.as_str(), "hi ann");
    t.client.send(&reply).await.unwrap();
    reply.to_alias = None;
    reply.group_room = None;
    let sent = t.client.send(&reply).await.unwrap();
    assert_eq!(sent.message.mess_props.to_user, ann.as_str());

    let third = t
        .client
        .send(&private_send(&r, eve.as_str(), ann.as_str(), "let me in"))
        .await;
    assert_eq!(refusal(third), (403, "private_room_full".into()));
    let to_third = t
        .client
        .send(&private_send(
            &r,
            ann.as_str(),
            eve.as_str(),
            "wrong recipient",
        ))
        .await;
    assert_eq!(refusal(to_third), (403, "private_room_full".into()));
    assert_eq!(
        t.client.messages(r.as_str(), None).await.unwrap(),
        ["hi bob", "hi ann", "hi ann"]
    );
    let members = t.server().service().room(&r).await.unwrap().members();
    assert_eq!(
        members.into_iter().collect::<BTreeSet<_>>(),
        BTreeSet::from([ann, bob])
    );
    t.cleanup().await;
}

async fn group_room_adds_each_new_sender_as_a_member(backend: Backend) {
    let t = TestServer::start(backend).await;
    let r = room("club");
    let senders = [alias("ann"), alias("bob"), alias("cat")];
    for a in &senders {
        t.client
            .send(&group_send(&r, a.as_str(), "hello"))
            .await
            .unwrap();
    }
    let chat_room = t.server().service().room(&r).await.unwrap();
    assert_eq!(chat_room.owner_alias(), senders[0]);
    assert_eq!(chat_room.members(), senders.to_vec());
    assert!(chat_room.group_room());
    t.cleanup().await;
}

async fn send_contradicting_the_room_kind_gets_409(backend: Backend) {
    let t = TestServer::start(backend).await;
    let (g, p) = (room("grp"), room("prv"));
    let (ann, bob) = (alias("ann"), alias("bob"));
    t.client
        .send(&group_send(&g, ann.as_str(), "x"))
        .await
        .unwrap();
    t.client
        .send(&private_send(&p, ann.as_str(), bob.as_str(), "x"))
        .await
        .unwrap();
    let as_private = t
        .client
        .send(&private_send(&g, ann.as_str(), bob.as_str(), "x"))
        .await;
    assert_eq!(refusal(as_private), (409, "room_kind_conflict".into()));
    let as_group = t.client.send(&group_send(&p, ann.as_str(), "x")).await;
    assert_eq!(refusal(as_group), (409, "room_kind_conflict".into()));
    t.cleanup().await;
}

async fn unicode_and_url_special_text_round_trips(backend: Backend) {
    let t = TestServer::start(backend).await;
    let r = room("intl");
    let ann = alias("ann");
    let texts = [
        "héllo wörld — ünïcödé",
        "日本語のメッセージ 🎉🚀",
        "a&b=c?d#e%20f+g/h\\i",
        "line one\nline two\ttabbed",
        "<script>alert('x')</script> \"quoted\"",
        "  leading and trailing spaces  ",
        "nul\0inside",
    ];
    for text in texts {
        let sent = t
            .client
            .send(&group_send(&r, ann.as_str(), text))
            .await
            .unwrap();
        assert_eq!(sent.message.message, text);
    }
    assert_eq!(t.client.messages(r.as_str(), None).await.unwrap(), texts);
    t.cleanup().await;
}

async fn restart_restores_history_from_the_store(backend: Backend) {
    let mut t = TestServer::start(backend).await;
    let (g, p) = (room("keep"), room("keepdm"));
    let (ann, bob) = (alias("ann"), alias("bob"));
    for i in 1..=5 {
        t.client
            .send(&group_send(&g, ann.as_str(), &format!("g{i}")))
            .await
            .unwrap();
    }
    t.client
        .send(&private_send(&p, ann.as_str(), bob.as_str(), "secret"))
        .await
        .unwrap();

    t.restart().await;

    let expected: Vec<String> = (1..=5).map(|i| format!("g{i}")).collect();
    assert_eq!(t.client.messages(g.as_str(), None).await.unwrap(), expected);
    assert_eq!(
        t.client.messages(p.as_str(), None).await.unwrap(),
        ["secret"]
    );
    let restored = t.server().service().room(&p).await.unwrap();
    assert!(!restored.group_room());
    assert_eq!(restored.members(), [ann.clone(), bob.clone()]);
    // Numbering continues where it stopped; membership rules still hold.
    let next = t
        .client
        .send(&group_send(&g, bob.as_str(), "g6"))
        .await
        .unwrap();
    assert_eq!(next.message.mess_props.sequence_number, Some(6));
    let eve = alias("eve");
    let third = t
        .client
        .send(&private_send(&p, eve.as_str(), ann.as_str(), "x"))
        .await;
    assert_eq!(refusal(third).0, 403);
    t.cleanup().await;
}

async fn bad_inputs_get_a_4xx_with_a_json_error(backend: Backend) {
    let t = TestServer::start(backend).await;
    let r = room("bad");
    let (ann, bob) = (alias("ann"), alias("bob"));
    t.client
        .send(&group_send(&r, ann.as_str(), "exists"))
        .await
        .unwrap();
    let long_name = "n".repeat(65);
    let big = "x".repeat(MAX_MESSAGE_BYTES + 1);
    let fresh = unique("fresh");
    let cases: Vec<(String, u16, &str)> = vec![
        (
            format!("/send/?room_name=amq.gen&message=hi&from_alias={ann}&group_room=true"),
            400,
            "invalid_name",
        ),
        (
            format!("/send/?room_name=system.users&message=hi&from_alias={ann}&group_room=true"),
            400,
            "invalid_name",
        ),
        (
            format!("/send/?room_name=a%24b&message=hi&from_alias={ann}&group_room=true"),
            400,
            "invalid_name",
        ),
        (
            format!("/send/?room_name=a%00b&message=hi&from_alias={ann}&group_room=true"),
            400,
            "invalid_name",
        ),
        (
            format!("/send/?room_name=..%2F..&message=hi&from_alias={ann}&group_room=true"),
            400,
            "invalid_name",
        ),
        (
            format!("/send/?room_name={long_name}&message=hi&from_alias={ann}&group_room=true"),
            400,
            "invalid_name",
        ),
        (
            format!("/send/?room_name={r}&message=hi&group_room=true"),
            400,
            "bad_request",
        ),
        (
            format!("/send/?room_name={r}&message=hi&from_alias=b%20d&group_room=true"),
            400,
            "invalid_name",
        ),
        (
            format!("/send/?room_name={r}&message=hi&from_alias={ann}&to_alias=amq.x"),
            400,
            "invalid_name",
        ),
        (
            format!("/send/?room_name={r}&from_alias={ann}&group_room=true"),
            400,
            "bad_request",
        ),
        (
            format!("/send/?room_name={r}&message={big}&from_alias={ann}&group_room=true"),
            413,
            "message_too_large",
        ),
        (
            format!("/send/?room_name={r}&message=hi&from_alias={ann}&group_room=maybe"),
            400,
            "bad_request",
        ),
        (
            format!("/send/?room_name={r}&message=%FF%FE&from_alias={ann}&group_room=true"),
            400,
            "bad_request",
        ),
        (
            format!(
                "/send/?room_name={fresh}&message=hi&from_alias={bob}&to_alias={bob}&group_room=false"
            ),
            400,
            "bad_request",
        ),
        (
            format!("/messages/?room_name={r}&limit=abc"),
            400,
            "bad_request",
        ),
        (
            format!("/messages/?room_name={r}&limit=0"),
            400,
            "bad_request",
        ),
        (
            format!("/messages/?room_name={r}&limit=100000"),
            400,
            "bad_request",
        ),
        (
            format!("/messages/?room_name={r}&limit=-1"),
            400,
            "bad_request",
        ),
        ("/no/such/endpoint".to_string(), 404, "not_found"),
    ];
    let http = reqwest::Client::new();
    for (path, status, code) in cases {
        let response = http.get(t.url(&path)).send().await.unwrap();
        let got = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let shown: String = path.chars().take(100).collect();
        assert_eq!(got, status, "{shown} → {body}");
        assert_eq!(body["error"]["code"], code, "{shown} → {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let put = http.put(t.url("/send/")).send().await.unwrap();
    assert_eq!(put.status().as_u16(), 405);
    let body: Value = put.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");
    // Nothing of the refused sends got in; the fresh room was not created.
    assert_eq!(
        t.client.messages(r.as_str(), None).await.unwrap(),
        ["exists"]
    );
    assert!(t.client.messages(&fresh, None).await.unwrap().is_empty());
    assert!(
        t.server()
            .service()
            .room(&RoomName::new(fresh.clone()).unwrap())
            .await
            .is_err(),
        "the fresh room was not created"
    );
    t.cleanup().await;
}

async fn message_at_the_size_limit_is_accepted_and_one_byte_more_is_413(backend: Backend) {
    let t = TestServer::start(backend).await;
    let r = room("big");
    let ann = alias("ann");
    // Multi-byte characters: the limit counts bytes of UTF-8, not characters.
    let at_limit = "é".repeat(MAX_MESSAGE_BYTES / 2);
    assert_eq!(at_limit.len(), MAX_MESSAGE_BYTES);
    let sent = t
        .client
        .send(&group_send(&r, ann.as_str(), &at_limit))
        .await
        .unwrap();
    assert_eq!(sent.message.message.len(), MAX_MESSAGE_BYTES);
    let over = format!("{at_limit}x");
    let refused = t.client.send(&group_send(&r, ann.as_str(), &over)).await;
    assert_eq!(refusal(refused), (413, "message_too_large".into()));
    assert_eq!(
        t.client.messages(r.as_str(), None).await.unwrap(),
        [at_limit]
    );
    t.cleanup().await;
}

async fn history_spans_cache_and_store_without_gap_or_duplicate(backend: Backend) {
    let config = ServiceConfig {
        cache_capacity: 5,
        ..ServiceConfig::default()
    };
    let mut t = TestServer::start_with(backend, config).await;
    let r = room("long");
    let ann = alias("ann");
    for i in 1..=12 {
        t.client
            .send(&group_send(&r, ann.as_str(), &format!("m{i}")))
            .await
            .unwrap();
    }
    assert_eq!(t.server().service().room(&r).await.unwrap().len(), 5);
    let texts = |from: usize, to: usize| (from..=to).map(|i| format!("m{i}")).collect::<Vec<_>>();
    for _ in 0..2 {
        assert_eq!(
            t.client.messages(r.as_str(), Some(10)).await.unwrap(),
            texts(3, 12)
        );
        assert_eq!(
            t.client.messages(r.as_str(), Some(5)).await.unwrap(),
            texts(8, 12)
        );
        assert_eq!(
            t.client.messages(r.as_str(), Some(6)).await.unwrap(),
            texts(7, 12)
        );
        assert_eq!(
            t.client.messages(r.as_str(), Some(1000)).await.unwrap(),
            texts(1, 12)
        );
        t.restart().await;
    }
    t.cleanup().await;
}

async fn past_the_caches_total_the_coldest_rooms_are_read_from_the_store(backend: Backend) {
    let config = ServiceConfig {
        cache_capacity: 5,
        cache_total: 8,
        ..ServiceConfig::default()
    };
    let t = TestServer::start_with(backend, config).await;
    let ann = alias("ann");
    let rooms = [room("cold"), room("warm"), room("hot")];
    for (r, count) in rooms.iter().zip([4, 3, 3]) {
        for i in 1..=count {
            let text = format!("{r}-{i}");
            t.client
                .send(&group_send(r, ann.as_str(), &text))
                .await
                .unwrap();
        }
    }
    let service = t.server().service().clone();
    let len = |r: &RoomName| {
        let service = service.clone();
        let r = r.clone();
        async move { service.room(&r).await.unwrap().len() }
    };
    // 10 cached over a total of 8: the room used longest ago gives its cache back (within the
    // service's check, every second).
    let deadline = Instant::now() + Duration::from_secs(10);
    while len(&rooms[0]).await > 0 {
        assert!(
            Instant::now() < deadline,
            "the coldest cache was never emptied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!((len(&rooms[1]).await, len(&rooms[2]).await), (3, 3));
    // Its history reads the same, from the store: without a limit (the seed's `/messages/`, as
    // many as a cache holds) and with one.
    let texts = |r: &RoomName, n: usize| (1..=n).map(|i| format!("{r}-{i}")).collect::<Vec<_>>();
    assert_eq!(
        t.client.messages(rooms[0].as_str(), None).await.unwrap(),
        texts(&rooms[0], 4)
    );
    assert_eq!(
        t.client.messages(rooms[0].as_str(), Some(2)).await.unwrap()[..],
        texts(&rooms[0], 4)[2..]
    );
    // And the room goes on numbering and caching where it was.
    t.client
        .send(&group_send(
            &rooms[0],
            ann.as_str(),
            &format!("{}-5", rooms[0]),
        ))
        .await
        .unwrap();
    assert_eq!(
        t.client.messages(rooms[0].as_str(), None).await.unwrap(),
        texts(&rooms[0], 5)
    );
    assert_eq!(len(&rooms[0]).await, 1);
    t.cleanup().await;
}

async fn health_and_readiness_report_ok(backend: Backend) {
    let t = TestServer::start(backend).await;
    for path in ["/healthz", "/readyz"] {
        let response = reqwest::get(t.url(path)).await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{path}");
    }
    let ready: Value = reqwest::get(t.url("/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["broker"], true);
    assert_eq!(ready["ids"], true, "{ready}");
    assert_eq!(ready["store"], true);
    t.cleanup().await;
}

async fn a_private_room_may_be_named_after_its_recipient(backend: Backend) {
    // The course's own client names a private room after its recipient; the recipient's inbox
    // (`inbox.<alias>`) is not the room's queue, so both work side by side.
    let t = TestServer::start(backend).await;
    let (lobby, ann, eshner) = (room("lobby"), alias("ann"), alias("eshner"));
    t.client
        .send(&group_send(
            &lobby,
            eshner.as_str(),
            "eshner has an inbox now",
        ))
        .await
        .unwrap();
    let named_after = RoomName::new(eshner.as_str()).unwrap();
    let params = SendParams {
        room_name: named_after.to_string(),
        message: "hi eshner".into(),
        from_alias: ann.to_string(),
        to_alias: Some(eshner.to_string()),
        group_room: Some(false),
        idempotency_key: None,
    };
    let sent = t.client.send(&params).await.unwrap();
    assert_eq!(sent.status, "stored");
    assert_eq!(sent.message.mess_props.to_user, eshner.as_str());
    t.client
        .send(&group_send(
            &lobby,
            eshner.as_str(),
            "and the group still works",
        ))
        .await
        .unwrap();
    assert_eq!(
        t.client.messages(named_after.as_str(), None).await.unwrap(),
        ["hi eshner"]
    );
    assert_eq!(
        t.client.messages(lobby.as_str(), None).await.unwrap().len(),
        2
    );
    t.cleanup().await;
}

async fn concurrent_first_sends_create_the_room_once(backend: Backend) {
    let t = TestServer::start(backend).await;
    let r = room("rush");
    let sends = (0..20).map(|i| {
        let client = t.client.clone();
        let params = group_send(&r, &format!("{}-{i}", unique("u")), &format!("m{i}"));
        tokio::spawn(async move { client.send(&params).await })
    });
    let mut numbers = BTreeSet::new();
    for send in sends.collect::<Vec<_>>() {
        let sent = send.await.unwrap().unwrap();
        numbers.insert(sent.message.mess_props.sequence_number.unwrap());
    }
    assert_eq!(numbers, (1..=20).collect::<BTreeSet<u64>>());
    assert_eq!(t.server().service().rooms().rooms().len(), 1);
    assert_eq!(
        t.server().service().room(&r).await.unwrap().members().len(),
        20
    );
    t.cleanup().await;
}

async fn cli_send_and_messages_talk_to_the_server(backend: Backend) {
    let t = TestServer::start(backend).await;
    let r = room("cli");
    let (ann, bob) = (alias("ann"), alias("bob"));
    let cli = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_mess-chat"))
            .args(args)
            .env("MESS_CHAT_SERVER", t.client.base())
            .output()
            .expect("mess-chat runs");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let (ok, out) = cli(&[
        "send",
        "--room",
        r.as_str(),
        "--from",
        ann.as_str(),
        "--to",
        bob.as_str(),
        "hello from the CLI",
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("\"stored\""), "{out}");
    let (ok, _) = cli(&[
        "send",
        "--room",
        r.as_str(),
        "--from",
        bob.as_str(),
        "and back",
    ]);
    assert!(ok);
    let (ok, out) = cli(&["messages", "--room", r.as_str()]);
    assert!(ok);
    assert_eq!(out, "hello from the CLI\nand back\n");
    let (ok, _) = cli(&[
        "send",
        "--room",
        r.as_str(),
        "--from",
        alias("eve").as_str(),
        "intruder",
    ]);
    assert!(!ok, "a refused send exits non-zero");
    tokio::time::sleep(Duration::from_millis(1)).await;
    t.cleanup().await;
}

async fn retries_with_one_idempotency_key_are_stored_once(backend: Backend) {
    let t = TestServer::start(backend).await;
    let r = room("retry");
    let ann = alias("ann");
    let mut params = group_send(&r, ann.as_str(), "exactly once");
    params.idempotency_key = Some("client-key-1".into());
    let first = t.client.send(&params).await.unwrap();
    let again = t.client.send(&params).await.unwrap();
    assert_eq!(again.status, "stored");
    assert_eq!(again.message.mess_props.id, first.message.mess_props.id);
    assert_eq!(again.message.mess_props.sequence_number, Some(1));
    // Concurrent retries too: every one answers with the one stored message.
    params.idempotency_key = Some("client-key-2".into());
    params.message = "also once".into();
    let retries: Vec<_> = (0..5)
        .map(|_| {
            let (client, params) = (t.client.clone(), params.clone());
            tokio::spawn(async move { client.send(&params).await })
        })
        .collect();
    let mut numbers = BTreeSet::new();
    for retry in retries {
        numbers.insert(
            retry
                .await
                .unwrap()
                .unwrap()
                .message
                .mess_props
                .sequence_number,
        );
    }
    assert_eq!(numbers, BTreeSet::from([Some(2)]));
    let next = t
        .client
        .send(&group_send(&r, ann.as_str(), "next"))
        .await
        .unwrap();
    assert_eq!(
        next.message.mess_props.sequence_number,
        Some(3),
        "no number was spent on retries"
    );
    assert_eq!(
        t.client.messages(r.as_str(), None).await.unwrap(),
        ["exactly once", "also once", "next"]
    );
    params.idempotency_key = Some("k".repeat(129));
    assert_eq!(
        refusal(t.client.send(&params).await),
        (400, "bad_request".into())
    );
    t.cleanup().await;
}

async fn metrics_report_sends_and_store_writes(backend: Backend) {
    let t = TestServer::start(backend).await;
    let r = room("metered");
    t.client
        .send(&group_send(&r, alias("ann").as_str(), "counted"))
        .await
        .unwrap();
    let response = reqwest::get(t.url("/metrics")).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let text = response.text().await.unwrap();
    let value = |prefix: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{prefix} missing from:\n{text}"))
    };
    // The recorder is process-wide and other tests send too: at least this send is counted.
    assert!(value("mess_chat_sends_total{outcome=\"stored\"}") >= 1.0);
    assert!(value("mess_chat_store_writes_total") >= 1.0);
    assert!(value("mess_chat_deliveries_total") >= 1.0);
    assert!(value("mess_chat_send_to_stored_seconds_count") >= 1.0);
    assert!(value("mess_chat_send_duration_seconds_bucket") >= 0.0);
    // The allocator's own figures, read at the scrape: a serving process holds some heap.
    assert!(value("mess_chat_heap_in_use_bytes ") > 1024.0 * 1024.0);
    assert!(value("mess_chat_heap_free_bytes ") >= 0.0);
    t.cleanup().await;
}
