//! An answer is a promise: nothing acknowledged is lost to a broken topology, nothing refused
//! has happened, no live socket outlives its membership, a reused idempotency key never answers
//! for another message, and errors say what is wrong without leaking a back end's words.
//!
//! The outage tests stop shared services (RabbitMQ's app, SecantusDB): they run alone; the others
//! share the services.

#[macro_use]
mod common;

use std::collections::{BTreeMap, HashSet};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::load::{Acked, verify_store};
use common::{Backend, TestServer, alias, room, unique};
use futures_util::StreamExt;
use mess_chat::client::{Client, ClientError, SendParams};
use mess_chat::model::{ChatMessage, RoomName};
use mess_chat::service::ServiceConfig;
use mess_chat::store::Store;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Tests that stop a service run alone; the others share them.
static SERVICES: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Longest wait for anything a test expects.
const WAIT: Duration = Duration::from_secs(15);

on_both_backends!(
    a_reused_idempotency_key_with_another_text_is_refused,
    concurrent_sends_of_one_key_all_describe_the_one_stored_message,
    a_search_text_over_the_limit_is_refused,
    leaving_removal_and_deletion_end_the_alias_live_sockets,
    names_are_case_insensitive,
    every_error_comes_in_the_one_json_shape,
    a_send_racing_the_room_deletion_is_stored_or_refused,
);

/// A registered alias and a client carrying its token.
struct Member {
    alias: String,
    token: String,
    client: Client,
}

async fn member(t: &TestServer, prefix: &str) -> Member {
    let registered = t.client.register(&unique(prefix)).await.unwrap();
    Member {
        client: t.client.clone().with_token(Some(registered.token.clone())),
        alias: registered.alias,
        token: registered.token,
    }
}

fn refusal<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (u16, String) {
    match result {
        Err(ClientError::Status { status, body }) => (
            status,
            body["error"]["code"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn keyed(room: &RoomName, from: &str, text: &str, key: &str) -> SendParams {
    SendParams {
        room_name: room.to_string(),
        message: text.into(),
        from_alias: from.into(),
        group_room: Some(true),
        idempotency_key: Some(key.into()),
        ..SendParams::default()
    }
}

async fn a_reused_idempotency_key_with_another_text_is_refused(backend: Backend) {
    let _shared = SERVICES.read().await;
    let t = TestServer::start_authenticated(backend).await;
    let ann = member(&t, "ann").await;
    let r = room("keys");
    let first = ann
        .client
        .send(&keyed(&r, &ann.alias, "the first text", "k1"))
        .await
        .unwrap();
    let again = ann
        .client
        .send(&keyed(&r, &ann.alias, "the first text", "k1"))
        .await
        .unwrap();
    assert_eq!(
        again.message, first.message,
        "a retry answers with the stored message"
    );
    let (status, code) = refusal(
        ann.client
            .send(&keyed(&r, &ann.alias, "another text", "k1"))
            .await,
    );
    assert_eq!((status, code.as_str()), (422, "idempotency_key_reused"));
    // The REST API too.
    let url = format!("{}/api/v1/rooms/{r}/messages", t.client.base());
    let reused = reqwest::Client::new()
        .post(&url)
        .bearer_auth(&ann.token)
        .json(&serde_json::json!({ "message": "a third text", "idempotency_key": "k1" }))
        .send()
        .await
        .unwrap();
    assert_eq!(reused.status().as_u16(), 422);
    let body: serde_json::Value = reused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "idempotency_key_reused");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the first text")
    );
    assert_eq!(
        ann.client.messages(r.as_str(), None).await.unwrap(),
        ["the first text"],
        "nothing else was stored"
    );
    t.cleanup().await;
}

/// A send's outcome: the message it was answered with, or the refusal's status and code.
type Answer = Result<ChatMessage, (u16, String)>;

async fn concurrent_sends_of_one_key_all_describe_the_one_stored_message(backend: Backend) {
    let _shared = SERVICES.read().await;
    let t = TestServer::start(backend).await;
    let r = room("racing");
    let ann = alias("ann");
    t.client
        .send(&keyed(&r, ann.as_str(), "opening", "open"))
        .await
        .unwrap();
    // Unkeyed sends in the background make the consumer's batches big and mixed.
    let background = {
        let (client, r, ann) = (t.client.clone(), r.clone(), ann.clone());
        tokio::spawn(async move {
            for i in 0..200 {
                let params = SendParams {
                    room_name: r.to_string(),
                    message: format!("noise {i}"),
                    from_alias: ann.to_string(),
                    ..SendParams::default()
                };
                client.send(&params).await.unwrap();
            }
        })
    };
    // 40 keys, each sent 6 times at once: 3 with one text, 3 with another.
    let mut racers = Vec::new();
    for k in 0..40 {
        for copy in 0..6 {
            let text = format!("key {k} text {}", if copy % 2 == 0 { "a" } else { "b" });
            let params = keyed(&r, ann.as_str(), &text, &format!("race-{k}"));
            let client = t.client.clone();
            racers.push(tokio::spawn(async move {
                (k, text, client.send(&params).await)
            }));
        }
    }
    let mut answers: BTreeMap<usize, Vec<(String, Answer)>> = BTreeMap::new();
    for racer in racers {
        let (k, text, answer) = racer.await.unwrap();
        let answer = match answer {
            Ok(sent) => Ok(sent.message),
            Err(e) => Err(refusal::<()>(Err(e))),
        };
        answers.entry(k).or_default().push((text, answer));
    }
    background.await.unwrap();
    let history: Vec<String> = t.client.messages(r.as_str(), Some(1000)).await.unwrap();
    assert_eq!(
        history.len(),
        1 + 200 + 40,
        "one message per key, no duplicate"
    );
    for (k, sends) in answers {
        let stored: Vec<&String> = history
            .iter()
            .filter(|text| text.starts_with(&format!("key {k} text")))
            .collect();
        assert_eq!(stored.len(), 1, "key {k}: {stored:?}");
        let winner = stored[0];
        let mut described = HashSet::new();
        for (text, answer) in sends {
            match answer {
                Ok(message) => {
                    assert_eq!(
                        &message.message, winner,
                        "key {k}: an answer for another text"
                    );
                    assert_eq!(&text, winner, "key {k}: {text:?} answered as stored");
                    described.insert((message.mess_props.id, message.mess_props.sequence_number));
                }
                Err((status, code)) => {
                    assert_eq!((status, code.as_str()), (422, "idempotency_key_reused"));
                    assert_ne!(&text, winner, "key {k}: the stored text was refused");
                }
            }
        }
        assert_eq!(
            described.len(),
            1,
            "key {k}: answers disagree: {described:?}"
        );
    }
    t.cleanup().await;
}

async fn a_search_text_over_the_limit_is_refused(backend: Backend) {
    let _shared = SERVICES.read().await;
    let t = TestServer::start_authenticated(backend).await;
    let ann = member(&t, "ann").await;
    let r = room("search");
    ann.client.create_room(r.as_str(), None).await.unwrap();
    ann.client
        .post_message(r.as_str(), "findable")
        .await
        .unwrap();
    assert!(
        ann.client
            .search(r.as_str(), &"x".repeat(1000))
            .await
            .unwrap()
            .is_empty()
    );
    let (status, code) = refusal(ann.client.search(r.as_str(), &"x".repeat(1001)).await);
    assert_eq!((status, code.as_str()), (400, "bad_request"));
    t.cleanup().await;
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn socket(t: &TestServer, room: &RoomName, token: &str) -> Socket {
    let url = format!(
        "{}/api/v1/rooms/{room}/live?after=0&token={token}",
        t.client.base().replacen("http", "ws", 1)
    );
    let (socket, _) = timeout(
        WAIT,
        tokio_tungstenite::connect_async(url.into_client_request().unwrap()),
    )
    .await
    .expect("socket in time")
    .expect("socket opens");
    socket
}

async fn close_code(socket: &mut Socket) -> u16 {
    loop {
        match timeout(WAIT, socket.next()).await.expect("closed in time") {
            Some(Ok(Message::Close(Some(frame)))) => return frame.code.into(),
            Some(Ok(Message::Close(None))) | None => panic!("closed without a code"),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("socket failed instead of closing: {e}"),
        }
    }
}

async fn leaving_removal_and_deletion_end_the_alias_live_sockets(backend: Backend) {
    let _shared = SERVICES.read().await;
    let t = TestServer::start_authenticated(backend).await;
    let (owner, leaver, removed) = (
        member(&t, "owner").await,
        member(&t, "leaver").await,
        member(&t, "removed").await,
    );
    let r = room("sockets");
    owner.client.create_room(r.as_str(), None).await.unwrap();
    for m in [&leaver, &removed] {
        m.client.add_member(r.as_str(), &m.alias).await.unwrap();
    }
    let mut owners = socket(&t, &r, &owner.token).await;
    let mut leavers = socket(&t, &r, &leaver.token).await;
    let mut removeds = socket(&t, &r, &removed.token).await;

    leaver
        .client
        .remove_member(r.as_str(), &leaver.alias)
        .await
        .unwrap();
    assert_eq!(
        close_code(&mut leavers).await,
        4403,
        "leaving ends the socket"
    );
    owner
        .client
        .remove_member(r.as_str(), &removed.alias)
        .await
        .unwrap();
    assert_eq!(
        close_code(&mut removeds).await,
        4403,
        "removal ends the socket"
    );
    // Nothing sent afterwards reaches them; the owner's socket goes on until the room goes.
    owner
        .client
        .post_message(r.as_str(), "after")
        .await
        .unwrap();
    owner.client.delete_room(r.as_str()).await.unwrap();
    let mut saw_after = false;
    let code = loop {
        match timeout(WAIT, owners.next()).await.expect("a frame in time") {
            Some(Ok(Message::Text(text))) => saw_after |= text.as_str().contains("after"),
            Some(Ok(Message::Close(Some(frame)))) => break u16::from(frame.code),
            Some(Ok(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(saw_after);
    assert_eq!(code, 1000, "deletion ends the socket");
    t.cleanup().await;
}

async fn names_are_case_insensitive(backend: Backend) {
    let _shared = SERVICES.read().await;
    let t = TestServer::start_authenticated(backend).await;
    let name = unique("Ann").replace("ann", "Ann");
    let registered = t.client.register(&name).await.unwrap();
    assert_eq!(registered.alias, name.to_lowercase());
    let (status, code) = refusal(t.client.register(&name.to_lowercase()).await);
    assert_eq!((status, code.as_str()), (409, "name_taken"));
    let ann = t.client.clone().with_token(Some(registered.token));
    let r = unique("Lobby").replace("lobby", "Lobby");
    ann.create_room(&r, None).await.unwrap();
    ann.post_message(&r.to_uppercase(), "shouted")
        .await
        .unwrap();
    assert_eq!(
        ann.messages(&r.to_lowercase(), None).await.unwrap(),
        ["shouted"]
    );
    t.cleanup().await;
}

async fn a_send_racing_the_room_deletion_is_stored_or_refused(backend: Backend) {
    let _shared = SERVICES.read().await;
    let t = TestServer::start_authenticated(backend).await;
    let (ann, bob) = (member(&t, "ann").await, member(&t, "bob").await);
    for round in 0..3 {
        let r = room("racing-delete");
        ann.client.create_room(r.as_str(), None).await.unwrap();
        bob.client.add_member(r.as_str(), &bob.alias).await.unwrap();
        let senders: Vec<_> = (0..40)
            .map(|i| {
                let (client, r) = (
                    if i % 2 == 0 { &ann } else { &bob }.client.clone(),
                    r.clone(),
                );
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(i * 2)).await;
                    client.post_message(r.as_str(), &format!("m{i}")).await
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(30)).await;
        ann.client.delete_room(r.as_str()).await.unwrap();
        for sender in senders {
            match sender.await.unwrap() {
                Ok(sent) => assert_eq!(sent.status, "stored", "round {round}: {sent:?}"),
                Err(e) => {
                    let (status, code) = refusal::<()>(Err(e));
                    assert!(
                        matches!(
                            (status, code.as_str()),
                            (404, "room_not_found") | (403, "not_a_member") | (503, "unavailable")
                        ),
                        "round {round}: {status} {code}"
                    );
                }
            }
        }
    }
    t.cleanup().await;
}

/// Sends raw bytes to the server and reads its whole answer (it closes the connection).
async fn raw(t: &TestServer, request: &[u8]) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = t.client.base().trim_start_matches("http://").to_string();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .expect("answered and closed in time")
        .unwrap();
    let text = String::from_utf8_lossy(&answer);
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    let json = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, json)
}

async fn every_error_comes_in_the_one_json_shape(backend: Backend) {
    let _shared = SERVICES.read().await;
    let t = TestServer::start_authenticated(backend).await;
    let ann = member(&t, "ann").await;
    // What hyper answers by itself before any handler runs.
    let long_url = format!(
        "GET /messages/?room_name={} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(70_000)
    );
    let big_header = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(200_000)
    );
    for (request, status, code) in [
        (long_url.into_bytes(), 414, "uri_too_long"),
        (big_header.into_bytes(), 431, "headers_too_large"),
        (b"NOT HTTP AT ALL\r\n\r\n".to_vec(), 400, "bad_request"),
    ] {
        let (got, body) = raw(&t, &request).await;
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}"
        );
        assert!(body["error"]["message"].is_string());
    }
    // What the HTTP layer answers: wrong method, unknown path, bodies too large, of the wrong
    // type or not JSON; each status with its code.
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", t.client.base());
    let rooms = url("/api/v1/rooms");
    let cases = [
        (http.put(url("/send/")), 405, "method_not_allowed"),
        (http.get(url("/no/such/path")), 404, "not_found"),
        (
            http.post(&rooms)
                .bearer_auth(&ann.token)
                .json(&serde_json::json!({
                    "name": "x".repeat(70_000), "group_room": true
                })),
            413,
            "payload_too_large",
        ),
        (
            http.post(&rooms)
                .bearer_auth(&ann.token)
                .json(&serde_json::json!({ "name": 7, "group_room": "yes" })),
            400,
            "bad_request",
        ),
        (
            http.post(&rooms)
                .bearer_auth(&ann.token)
                .header("content-type", "application/json")
                .body("{not json"),
            400,
            "bad_request",
        ),
        (
            http.post(&rooms).bearer_auth(&ann.token).body("name=x"),
            415,
            "unsupported_media_type",
        ),
    ];
    for (request, status, code) in cases {
        let answer = request.send().await.unwrap();
        let got = answer.status().as_u16();
        let body: serde_json::Value = answer.json().await.unwrap();
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}"
        );
    }
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_reach_the_log() {
    let _shared = SERVICES.read().await;
    let url = common::amqp_url();
    assert!(
        url.contains(":guest@"),
        "the test needs a URL with credentials: {url}"
    );
    let data = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mess-chat"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("MESS_CHAT_AMQP_URL", &url)
        .env("MESS_CHAT_DATA_DIR", data.path())
        .env_remove("MESS_CHAT_MONGO_URL")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    use tokio::io::AsyncBufReadExt;
    timeout(WAIT, stdout.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    assert!(line.starts_with("mess-chat listening on"), "{line}");
    child.kill().await.unwrap();
    let output = child.wait_with_output().await.unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        log.contains("guest:***@"),
        "the broker is named, redacted: {log}"
    );
    assert!(!log.contains(":guest@"), "a password in the log: {log}");
}

// ---------------------------------------------------------------- real back end, topology

async fn observer() -> lapin::Connection {
    lapin::Connection::connect(&common::amqp_url(), lapin::ConnectionProperties::default())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_is_acknowledged_only_when_the_room_queue_holds_it() {
    let _shared = SERVICES.read().await;
    let t = TestServer::start_with(
        Backend::Real,
        ServiceConfig {
            require_auth: true,
            ..ServiceConfig::default()
        },
    )
    .await;
    let (ann, bob) = (member(&t, "ann").await, member(&t, "bob").await);
    let r = room("fragile");
    ann.client.create_room(r.as_str(), None).await.unwrap();
    bob.client.add_member(r.as_str(), &bob.alias).await.unwrap();
    // Sends through both paths (the seed's and the REST API), answered 2xx recorded.
    let acked: Acked = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut senders = Vec::new();
    for (w, m) in [&ann, &bob, &ann, &bob, &ann, &bob, &ann, &bob]
        .into_iter()
        .enumerate()
    {
        let (client, from, r, acked, stop) = (
            m.client.clone(),
            m.alias.clone(),
            r.clone(),
            acked.clone(),
            stop.clone(),
        );
        senders.push(tokio::spawn(async move {
            let mut i = 0;
            let mut refused = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let text = format!("w{w}-{i}");
                let answer = if w % 2 == 0 {
                    client
                        .send(&SendParams {
                            room_name: r.to_string(),
                            message: text.clone(),
                            from_alias: from.clone(),
                            ..SendParams::default()
                        })
                        .await
                } else {
                    client.post_message(r.as_str(), &text).await
                };
                match answer {
                    Ok(_) => acked.lock().unwrap().push((r.clone(), text)),
                    Err(ClientError::Status { status, body }) => {
                        assert_eq!(status, 503, "refused as unavailable, never worse: {body}");
                        refused += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            refused
        }));
    }
    // An operator's slip, three times: the members' inboxes are unbound, then the room's queue
    // deleted with whatever it held.
    let conn = observer().await;
    let channel = conn.create_channel().await.unwrap();
    let mut healed = Vec::new();
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        for m in [&ann, &bob] {
            channel
                .queue_unbind(
                    format!("inbox.{}", m.alias).as_str().into(),
                    r.as_str().into(),
                    "".into(),
                    Default::default(),
                )
                .await
                .unwrap();
        }
        channel
            .queue_delete(r.as_str().into(), Default::default())
            .await
            .unwrap();
        let deleted = Instant::now();
        // The room stores again within seconds, on its own.
        loop {
            assert!(
                deleted.elapsed() < Duration::from_secs(10),
                "round {round}: the room does not store again within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            let probe = ann
                .client
                .post_message(r.as_str(), &format!("probe-{round}"))
                .await;
            if probe.is_ok_and(|sent| sent.status == "stored") {
                acked
                    .lock()
                    .unwrap()
                    .push((r.clone(), format!("probe-{round}")));
                healed.push(deleted.elapsed());
                break;
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut refused = 0;
    for sender in senders {
        refused += sender.await.unwrap();
    }
    eprintln!("stored again {healed:?} after each deletion; {refused} sends refused");
    verify_store(&t.env.mongo().await, &acked).await;
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_named_like_another_applications_queue_is_refused_with_409() {
    let _shared = SERVICES.read().await;
    let t = TestServer::start_authenticated(Backend::Real).await;
    let ann = member(&t, "ann").await;
    let taken = room("foreign");
    // Another application's queue, declared with settings of its own.
    let conn = observer().await;
    let channel = conn.create_channel().await.unwrap();
    let mut args = lapin::types::FieldTable::default();
    args.insert(
        "x-max-length".into(),
        lapin::types::AMQPValue::LongLongInt(7),
    );
    channel
        .queue_declare(
            taken.as_str().into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .unwrap();
    let (status, code) = refusal(ann.client.create_room(taken.as_str(), None).await);
    assert_eq!((status, code.as_str()), (409, "name_clash"));
    let (status, code) = refusal(
        ann.client
            .send(&SendParams {
                room_name: taken.to_string(),
                message: "hi".into(),
                from_alias: ann.alias.clone(),
                group_room: Some(true),
                ..SendParams::default()
            })
            .await,
    );
    assert_eq!((status, code.as_str()), (409, "name_clash"));
    assert!(
        t.env
            .mongo()
            .await
            .load_room(&taken)
            .await
            .unwrap()
            .is_none(),
        "the refused room was not kept"
    );
    // Nothing else is affected: another room works at once.
    let other = room("fine");
    ann.client.create_room(other.as_str(), None).await.unwrap();
    let sent = ann
        .client
        .post_message(other.as_str(), "fine")
        .await
        .unwrap();
    assert_eq!(sent.status, "stored");
    channel
        .queue_delete(taken.as_str().into(), Default::default())
        .await
        .unwrap();
    t.cleanup().await;
}

// ---------------------------------------------------------------- outages: nothing refused happened

/// Starts the store again when dropped, even if the test panicked while it was stopped.
struct RestartStoreOnDrop;

const SERVICES_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services.sh");

impl Drop for RestartStoreOnDrop {
    fn drop(&mut self) {
        let status = std::process::Command::new(SERVICES_SH)
            .arg("start-mongo")
            .stdout(Stdio::null())
            .status();
        assert!(status.is_ok_and(|s| s.success()), "services.sh start-mongo");
    }
}

/// Starts RabbitMQ's app again when dropped.
struct RestartBrokerOnDrop;

impl Drop for RestartBrokerOnDrop {
    fn drop(&mut self) {
        let status = std::process::Command::new("rabbitmqctl")
            .arg("start_app")
            .stdout(Stdio::null())
            .status();
        assert!(status.is_ok_and(|s| s.success()), "rabbitmqctl start_app");
    }
}

/// A room of the owner's with one member, and an alias that is not in it.
struct Scene {
    t: TestServer,
    owner: Member,
    member: Member,
    outsider: Member,
    room: RoomName,
}

async fn scene() -> Scene {
    let t = TestServer::start_with(
        Backend::Real,
        ServiceConfig {
            require_auth: true,
            store_wait: Duration::from_millis(500),
            ..ServiceConfig::default()
        },
    )
    .await;
    let (owner, member_, outsider) = (
        member(&t, "owner").await,
        member(&t, "member").await,
        member(&t, "outsider").await,
    );
    let r = room("steady");
    owner.client.create_room(r.as_str(), None).await.unwrap();
    member_
        .client
        .add_member(r.as_str(), &member_.alias)
        .await
        .unwrap();
    Scene {
        t,
        owner,
        member: member_,
        outsider,
        room: r,
    }
}

impl Scene {
    /// Every change is refused with 503, and nothing of it happened (checked once the outage is
    /// over, by `check`).
    async fn try_every_change(&self) -> RoomName {
        let r = self.room.as_str();
        let expect_503 = |what: &str, result: Result<(), ClientError>| {
            let (status, code) = refusal(result);
            assert_eq!((status, code.as_str()), (503, "unavailable"), "{what}");
        };
        expect_503(
            "join",
            self.outsider
                .client
                .add_member(r, &self.outsider.alias)
                .await
                .map(|_| ()),
        );
        expect_503(
            "join by a first send",
            self.outsider
                .client
                .send(&SendParams {
                    room_name: r.into(),
                    message: "let me in".into(),
                    from_alias: self.outsider.alias.clone(),
                    group_room: Some(true),
                    ..SendParams::default()
                })
                .await
                .map(|_| ()),
        );
        expect_503(
            "leave",
            self.member
                .client
                .remove_member(r, &self.member.alias)
                .await
                .map(|_| ()),
        );
        expect_503(
            "remove",
            self.owner
                .client
                .remove_member(r, &self.member.alias)
                .await
                .map(|_| ()),
        );
        let never = room("never");
        expect_503(
            "create",
            self.owner
                .client
                .create_room(never.as_str(), None)
                .await
                .map(|_| ()),
        );
        expect_503("delete", self.owner.client.delete_room(r).await);
        never
    }

    /// After the outage: the room and its members are as before, on the store and the broker,
    /// and the room refused during the outage does not exist.
    async fn check(&self, never: &RoomName) {
        let store = self.t.env.mongo().await;
        let meta = store
            .load_room(&self.room)
            .await
            .unwrap()
            .expect("the room exists");
        let mut expected = vec![self.owner.alias.clone(), self.member.alias.clone()];
        expected.sort();
        let members: Vec<String> = meta.members.iter().map(|m| m.to_string()).collect();
        assert_eq!(members, expected, "membership unchanged");
        assert!(
            store.load_room(never).await.unwrap().is_none(),
            "no room created"
        );
        let bindings = common::bindings().await;
        let bound = |alias: &str| {
            bindings
                .iter()
                .any(|(s, d)| s == self.room.as_str() && *d == format!("inbox.{alias}"))
        };
        assert!(
            bound(&self.member.alias),
            "the member's inbox is still bound"
        );
        assert!(
            !bound(&self.outsider.alias),
            "the outsider's inbox was not bound"
        );
        let queues =
            common::rabbitmqctl(&["list_queues", "-q", "--no-table-headers", "name"]).await;
        assert!(
            !queues.lines().any(|q| q.trim() == never.as_str()),
            "no queue for the refused room"
        );
        // And the room works as before.
        let sent = self
            .member
            .client
            .post_message(self.room.as_str(), "still here")
            .await
            .unwrap();
        assert_eq!(sent.status, "stored");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_refused_during_a_store_outage_change_nothing() {
    let _alone = SERVICES.write().await;
    let s = scene().await;
    let restart = RestartStoreOnDrop;
    let status = std::process::Command::new(SERVICES_SH)
        .arg("stop-mongo")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let never = s.try_every_change().await;
    // An error during the outage says what is wrong, never the driver's words.
    let url = format!("{}/api/v1/rooms/{}/search?q=x", s.t.client.base(), s.room);
    let answer = reqwest::Client::new()
        .get(&url)
        .bearer_auth(&s.owner.token)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 503);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(
        body["error"]["message"],
        "the message store is unavailable; try again shortly"
    );
    drop(restart);
    s.check(&never).await;
    s.t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_refused_during_a_broker_outage_change_nothing() {
    let _alone = SERVICES.write().await;
    let s = scene().await;
    let restart = RestartBrokerOnDrop;
    common::rabbitmqctl(&["stop_app"]).await;
    let never = s.try_every_change().await;
    // Rooms that cannot be stored are named by /readyz (after a short grace).
    let ready = reqwest::get(format!("{}/readyz", s.t.client.base()))
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    let deadline = Instant::now() + WAIT;
    loop {
        let body: serde_json::Value = reqwest::get(format!("{}/readyz", s.t.client.base()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let named = body["rooms_not_stored"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == s.room.as_str());
        if named {
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("cannot be stored")
            );
            assert!(
                body["rooms_not_stored_count"].as_u64().unwrap() >= 1,
                "{body}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readyz never named the room: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(restart);
    // Give the service a moment to reconnect, then everything is as before.
    let deadline = Instant::now() + WAIT;
    while reqwest::get(format!("{}/readyz", s.t.client.base()))
        .await
        .unwrap()
        .status()
        .as_u16()
        != 200
    {
        assert!(Instant::now() < deadline, "not ready again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.check(&never).await;
    s.t.cleanup().await;
}
