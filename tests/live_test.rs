//! Live push over a WebSocket (`GET /api/v1/rooms/{room}/live`), with authentication on: each
//! new message once and in order, resuming from `after` without gap or duplicate, a socket
//! opened during a burst, refusals before the upgrade, how sockets end, and `mess-chat tail`.
//! On both back ends; every wait is bounded.

#[macro_use]
mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{Backend, TestServer, room, unique};
use futures_util::{SinkExt, StreamExt};
use mess_chat::client::Client;
use mess_chat::server::Server;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

on_both_backends!(
    a_member_gets_each_new_message_once_in_order,
    reconnecting_with_after_resumes_without_gap_or_duplicate,
    a_socket_opened_during_a_burst_sees_a_contiguous_sequence,
    refusals_come_as_json_errors_before_the_upgrade,
    sockets_close_when_the_room_is_deleted_or_the_server_stops,
    cli_registers_lists_rooms_and_tails_live_messages,
);

/// Longest wait for anything the test expects.
const WAIT: Duration = Duration::from_secs(15);
/// How long silence must last to count as "nothing more".
const QUIET: Duration = Duration::from_millis(300);

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A group room of ann's that bob joined.
struct Room {
    name: String,
    ann: Member,
    bob: Member,
}

async fn room_of_two(t: &TestServer) -> Room {
    let (ann, bob) = (member(t, "ann").await, member(t, "bob").await);
    let name = room("live").to_string();
    ann.client.create_room(&name, None).await.unwrap();
    bob.client.add_member(&name, &bob.alias).await.unwrap();
    Room { name, ann, bob }
}

/// A registered alias, its token, and a client sending that token.
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

/// How the socket request carries the token.
enum Token<'a> {
    Header(&'a str),
    Query(&'a str),
    Absent,
}

/// Opens a live socket, or returns the status and JSON body of the refusal.
async fn connect(
    t: &TestServer,
    room: &str,
    token: Token<'_>,
    after: Option<u64>,
) -> Result<Socket, (u16, Value)> {
    let mut url = format!(
        "{}/api/v1/rooms/{room}/live?",
        t.url("").replacen("http", "ws", 1)
    );
    if let Some(after) = after {
        url.push_str(&format!("after={after}&"));
    }
    if let Token::Query(token) = token {
        url.push_str(&format!("token={token}"));
    }
    let mut request = url.into_client_request().unwrap();
    if let Token::Header(token) = token {
        let value = format!("Bearer {token}").parse().unwrap();
        request.headers_mut().insert("authorization", value);
    }
    match timeout(WAIT, tokio_tungstenite::connect_async(request)).await {
        Ok(Ok((socket, _))) => Ok(socket),
        Ok(Err(tungstenite::Error::Http(response))) => {
            let body = response.body().as_deref().unwrap_or_default();
            let json = serde_json::from_slice(body)
                .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(body)));
            Err((response.status().as_u16(), json))
        }
        other => panic!("cannot connect: {other:?}"),
    }
}

/// The next message frame, as JSON.
async fn next_message(socket: &mut Socket) -> Value {
    loop {
        let frame = timeout(WAIT, socket.next())
            .await
            .expect("a message in time")
            .expect("the socket is open")
            .expect("a frame");
        match frame {
            Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

/// The sequence numbers of the next `n` messages.
async fn next_numbers(socket: &mut Socket, n: usize) -> Vec<u64> {
    let mut numbers = Vec::with_capacity(n);
    for _ in 0..n {
        numbers.push(seq(&next_message(socket).await));
    }
    numbers
}

fn seq(message: &Value) -> u64 {
    message["mess_props"]["sequence_number"]
        .as_u64()
        .unwrap_or_else(|| panic!("no sequence number in {message}"))
}

/// Nothing more arrives for a while.
async fn assert_quiet(socket: &mut Socket) {
    if let Ok(frame) = timeout(QUIET, socket.next()).await {
        panic!("expected nothing more, got {frame:?}");
    }
}

/// The code of the close frame the server sends next.
async fn close_code(socket: &mut Socket) -> u16 {
    loop {
        let frame = timeout(WAIT, socket.next())
            .await
            .expect("a close frame in time");
        match frame {
            Some(Ok(Message::Close(Some(frame)))) => return frame.code.into(),
            Some(Ok(Message::Text(text))) => panic!("expected a close, got {text}"),
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

async fn post(client: &Client, room: &str, texts: impl IntoIterator<Item = String>) {
    for text in texts {
        client.post_message(room, &text).await.unwrap();
    }
}

fn texts(prefix: &str, numbers: std::ops::RangeInclusive<u64>) -> Vec<String> {
    numbers.map(|i| format!("{prefix}{i}")).collect()
}

async fn a_member_gets_each_new_message_once_in_order(backend: Backend) {
    let t = TestServer::start_authenticated(backend).await;
    let r = room_of_two(&t).await;
    post(&r.ann.client, &r.name, texts("old", 1..=2)).await;
    let mut socket = connect(&t, &r.name, Token::Header(&r.bob.token), None)
        .await
        .unwrap();
    // Pings are answered.
    socket.send(Message::Ping("hi".into())).await.unwrap();
    let pong = timeout(WAIT, socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(pong, Message::Pong("hi".into()));

    let mut sent = Vec::new();
    for i in 1..=20 {
        sent.push(
            r.ann
                .client
                .post_message(&r.name, &format!("new{i}"))
                .await
                .unwrap(),
        );
    }
    for expected in &sent {
        let got = next_message(&mut socket).await;
        assert_eq!(
            got,
            serde_json::to_value(&expected.message).unwrap(),
            "the message as the REST API returns it"
        );
    }
    assert_eq!(
        sent.iter()
            .map(|s| s.message.mess_props.sequence_number.unwrap())
            .collect::<Vec<_>>(),
        (3..=22).collect::<Vec<_>>(),
        "without `after`, only new messages"
    );
    assert_quiet(&mut socket).await;
    t.cleanup().await;
}

async fn reconnecting_with_after_resumes_without_gap_or_duplicate(backend: Backend) {
    let t = TestServer::start_authenticated(backend).await;
    let r = room_of_two(&t).await;
    post(&r.ann.client, &r.name, texts("m", 1..=10)).await;
    let mut socket = connect(&t, &r.name, Token::Query(&r.bob.token), Some(0))
        .await
        .unwrap();
    assert_eq!(
        next_numbers(&mut socket, 10).await,
        (1..=10).collect::<Vec<_>>()
    );
    drop(socket);

    // Missed while away: 11..15; bob last saw 7.
    post(&r.ann.client, &r.name, texts("m", 11..=15)).await;
    let mut socket = connect(&t, &r.name, Token::Query(&r.bob.token), Some(7))
        .await
        .unwrap();
    assert_eq!(
        next_numbers(&mut socket, 8).await,
        (8..=15).collect::<Vec<_>>()
    );
    post(&r.ann.client, &r.name, texts("m", 16..=18)).await;
    let mut live = Vec::new();
    for _ in 0..3 {
        live.push(next_message(&mut socket).await);
    }
    assert_eq!(live.iter().map(seq).collect::<Vec<_>>(), [16, 17, 18]);
    assert_eq!(live[2]["message"], "m18");
    assert_quiet(&mut socket).await;

    // Resuming from the very last message: only new ones.
    let mut socket = connect(&t, &r.name, Token::Query(&r.bob.token), Some(18))
        .await
        .unwrap();
    assert_quiet(&mut socket).await;
    post(&r.ann.client, &r.name, texts("m", 19..=19)).await;
    assert_eq!(next_numbers(&mut socket, 1).await, [19]);
    t.cleanup().await;
}

async fn a_socket_opened_during_a_burst_sees_a_contiguous_sequence(backend: Backend) {
    const POSTERS: u64 = 3;
    const EACH: u64 = 20;
    let total = POSTERS * EACH;
    let t = TestServer::start_authenticated(backend).await;
    let r = room_of_two(&t).await;
    let mut posters = Vec::new();
    for p in 0..POSTERS {
        let (ann, name) = (r.ann.client.clone(), r.name.clone());
        posters.push(tokio::spawn(async move {
            post(&ann, &name, texts(&format!("p{p}-"), 1..=EACH)).await
        }));
    }
    // Open sockets while the burst is under way: one for new messages, one from the start.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut from_now = connect(&t, &r.name, Token::Header(&r.bob.token), None)
        .await
        .unwrap();
    let mut from_start = connect(&t, &r.name, Token::Query(&r.bob.token), Some(0))
        .await
        .unwrap();
    for poster in posters {
        timeout(WAIT, poster).await.unwrap().unwrap();
    }

    assert_eq!(
        next_numbers(&mut from_start, total as usize).await,
        (1..=total).collect::<Vec<_>>()
    );
    assert_quiet(&mut from_start).await;
    let first = seq(&next_message(&mut from_now).await);
    let rest = next_numbers(&mut from_now, (total - first) as usize).await;
    assert_eq!(
        rest,
        (first + 1..=total).collect::<Vec<_>>(),
        "no gap, no repeat"
    );
    assert_quiet(&mut from_now).await;
    t.cleanup().await;
}

async fn refusals_come_as_json_errors_before_the_upgrade(backend: Backend) {
    let t = TestServer::start_authenticated(backend).await;
    let r = room_of_two(&t).await;
    let eve_token = member(&t, "eve").await.token;
    post(&r.ann.client, &r.name, texts("m", 1..=2)).await;
    let missing = unique("none");
    let cases: Vec<(&str, Token, Option<u64>, u16, &str)> = vec![
        (&r.name, Token::Absent, None, 401, "unauthorized"),
        (
            &r.name,
            Token::Query("nobody.secret"),
            None,
            401,
            "unauthorized",
        ),
        (
            &r.name,
            Token::Header("nobody.secret"),
            None,
            401,
            "unauthorized",
        ),
        (&r.name, Token::Query(&eve_token), None, 403, "not_a_member"),
        (
            &missing,
            Token::Query(&eve_token),
            None,
            404,
            "room_not_found",
        ),
        (
            "bad.name",
            Token::Query(&eve_token),
            None,
            400,
            "invalid_name",
        ),
        (
            &r.name,
            Token::Header(&r.bob.token),
            Some(3),
            400,
            "bad_request",
        ),
    ];
    for (room, token, after, status, code) in cases {
        let (got, body) = connect(&t, room, token, after).await.err().unwrap();
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}"
        );
    }
    // A plain GET (no upgrade) from a member is refused with a JSON error too.
    let response = reqwest::Client::new()
        .get(t.url(&format!("/api/v1/rooms/{}/live", r.name)))
        .bearer_auth(&r.bob.token)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_client_error(), "{}", response.status());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "websocket_required");
    // The last message is a valid `after`.
    assert!(
        connect(&t, &r.name, Token::Header(&r.bob.token), Some(2))
            .await
            .is_ok()
    );
    t.cleanup().await;
}

async fn sockets_close_when_the_room_is_deleted_or_the_server_stops(backend: Backend) {
    let mut t = TestServer::start_authenticated(backend).await;
    let r = room_of_two(&t).await;
    let other = room("other").to_string();
    r.ann.client.create_room(&other, None).await.unwrap();

    let mut socket = connect(&t, &r.name, Token::Header(&r.bob.token), None)
        .await
        .unwrap();
    let response = reqwest::Client::new()
        .delete(t.url(&format!("/api/v1/rooms/{}", r.name)))
        .bearer_auth(&r.ann.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);
    assert_eq!(close_code(&mut socket).await, 1000, "room deleted");

    let mut socket = connect(&t, &other, Token::Header(&r.ann.token), None)
        .await
        .unwrap();
    timeout(WAIT, t.stop())
        .await
        .expect("an open socket does not hold up shutdown");
    assert_eq!(close_code(&mut socket).await, 1001, "server shutting down");
    t.restart().await;
    t.cleanup().await;
}

async fn cli_registers_lists_rooms_and_tails_live_messages(backend: Backend) {
    let mut t = TestServer::start_authenticated(backend).await;
    let base = t.url("");
    let cli = |args: &[&str]| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_mess-chat"));
        command
            .args(args)
            .args(["--server", &base])
            .env_remove("MESS_CHAT_TOKEN")
            .env_remove("MESS_CHAT_SERVER")
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        command
    };
    let ann = unique("ann");
    let output = timeout(WAIT, cli(&["register", &ann]).output())
        .await
        .unwrap()
        .unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    let token = stdout
        .trim()
        .strip_prefix("export MESS_CHAT_TOKEN='")
        .and_then(|t| t.strip_suffix('\''))
        .unwrap_or_else(|| panic!("an export line: {stdout}"))
        .to_string();
    assert!(token.starts_with(&format!("{ann}.")), "{token}");

    let ann_client = t.client.clone().with_token(Some(token.clone()));
    let name = room("tail").to_string();
    ann_client.create_room(&name, None).await.unwrap();
    let output = timeout(WAIT, cli(&["rooms", "--token", &token]).output())
        .await
        .unwrap()
        .unwrap();
    let listed = String::from_utf8(output.stdout).unwrap();
    assert!(
        listed.starts_with(&format!("{name}\tgroup\towner {ann}")),
        "{listed}"
    );

    ann_client.post_message(&name, "first").await.unwrap();
    let mut tail = cli(&["tail", &name, "--after", "0", "--token", &token])
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(tail.stdout.take().unwrap()).lines();
    let mut next_line = async || {
        timeout(WAIT, lines.next_line())
            .await
            .expect("a line in time")
            .unwrap()
            .expect("tail is running")
    };
    assert_eq!(next_line().await, format!("[1] {ann}: first"));
    ann_client.post_message(&name, "second").await.unwrap();
    assert_eq!(next_line().await, format!("[2] {ann}: second"));

    // The server restarts on the same port; tail reconnects and resumes after 2.
    let addr = t.server().addr();
    t.stop().await;
    let listener = TcpListener::bind(addr).await.unwrap();
    let restarted = Server::start_with(
        listener,
        t.env.broker.clone(),
        t.env.store().await,
        t.config.clone(),
    )
    .await
    .unwrap();
    t.server = Some(restarted);
    ann_client.post_message(&name, "third").await.unwrap();
    assert_eq!(next_line().await, format!("[3] {ann}: third"));
    ann_client.post_message(&name, "fourth").await.unwrap();
    assert_eq!(next_line().await, format!("[4] {ann}: fourth"));
    tail.kill().await.unwrap();
    t.cleanup().await;
}
