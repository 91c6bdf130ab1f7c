//! Bounded by design: no client holds what others need. A request that never finishes its headers
//! and an idle keep-alive connection are closed in time; connections over the cap are answered 503
//! in the usual JSON shape; a live reader that falls behind is cut off with a close code that
//! tells it where to resume, and resumes without a gap or a duplicate.

#[macro_use]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Backend, Env, TestServer, unique};
use futures_util::StreamExt;
use mess_chat::model::ChatMessage;
use mess_chat::server::{HttpLimits, Server};
use mess_chat::service::{ChatService, ServiceConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

on_both_backends!(a_slow_live_reader_is_cut_off_and_resumes_without_a_gap);

/// A server on the embedded back ends with these HTTP limits.
async fn server_with(limits: HttpLimits) -> (Env, Server) {
    let env = Env::new(Backend::Embedded);
    let service = ChatService::start(
        env.broker.clone(),
        env.store().await,
        ServiceConfig::default(),
    )
    .await
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = Server::serve(listener, service, limits).unwrap();
    (env, server)
}

/// Reads until the server closes the connection; returns what it sent, or panics after `limit`.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut answer = Vec::new();
    timeout(limit, stream.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection in time")
        .unwrap_or_default();
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_request_and_an_idle_connection_are_closed_in_time() {
    let limits = HttpLimits {
        header_read_timeout: Duration::from_secs(1),
        ..HttpLimits::default()
    };
    let (_env, server) = server_with(limits).await;
    // Headers that never end.
    let mut half = TcpStream::connect(server.addr()).await.unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    read_until_closed(&mut half, Duration::from_secs(5)).await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "not before the timeout"
    );
    // A keep-alive connection left idle after its request.
    let mut idle = TcpStream::connect(server.addr()).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut idle, Duration::from_secs(5)).await;
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_answered_503() {
    let limits = HttpLimits {
        max_connections: 3,
        ..HttpLimits::default()
    };
    let (_env, server) = server_with(limits).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(server.addr()).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        held.push(stream);
    }
    let mut extra = TcpStream::connect(server.addr()).await.unwrap();
    let answer = read_until_closed(&mut extra, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("retry-after: 1"), "{text}");
    assert!(text.ends_with(
        r#""code":"unavailable","message":"too many connections; try again shortly"}}"#
    ));
    // A slot freed is a slot to use.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ok = reqwest::get(format!("http://{}/healthz", server.addr()))
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    server.stop().await.unwrap();
}

async fn a_slow_live_reader_is_cut_off_and_resumes_without_a_gap(backend: Backend) {
    let t = TestServer::start_authenticated(backend).await;
    let registered = t.client.register(&unique("ann")).await.unwrap();
    let ann = t.client.clone().with_token(Some(registered.token.clone()));
    let r = common::room("slow");
    ann.create_room(r.as_str(), None).await.unwrap();
    let url = format!(
        "{}/api/v1/rooms/{r}/live?after=0&token={}",
        t.client.base().replacen("http", "ws", 1),
        registered.token
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(url.into_client_request().unwrap())
        .await
        .unwrap();
    // Big messages, sent while the reader reads nothing: the socket's buffers fill, the server
    // falls more than its live buffer behind the room.
    let total = 1600u64;
    let text = Arc::new("x".repeat(16 * 1024 - 64));
    let sends: Vec<_> = (0..16)
        .map(|w| {
            let (ann, r, text) = (ann.clone(), r.clone(), text.clone());
            tokio::spawn(async move {
                for i in (w..total).step_by(16) {
                    ann.post_message(r.as_str(), &format!("{i:05}{text}"))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for send in sends {
        send.await.unwrap();
    }
    // Now read: messages in order, then the end. The server says where to resume in a 4408 close
    // frame when its buffers let it; if it had to drop the connection before (the reader read
    // nothing for longer than the server waits), the reader resumes after the last it saw.
    let mut seen = Vec::new();
    let resume_after = loop {
        let frame = match timeout(Duration::from_secs(30), socket.next())
            .await
            .expect("a frame in time")
        {
            Some(Ok(frame)) => frame,
            Some(Err(_)) | None => break *seen.last().unwrap_or(&0),
        };
        match frame {
            Message::Text(text) => {
                let m: ChatMessage = serde_json::from_str(text.as_str()).unwrap();
                seen.push(m.mess_props.sequence_number.unwrap());
            }
            Message::Close(Some(frame)) => {
                assert_eq!(u16::from(frame.code), 4408, "{frame:?}");
                let after: u64 = frame
                    .reason
                    .as_str()
                    .rsplit("after=")
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert_eq!(
                    after,
                    *seen.last().unwrap_or(&0),
                    "the close names the last sent"
                );
                break after;
            }
            _ => {}
        }
    };
    assert!(
        (seen.len() as u64) < total,
        "the slow reader was cut off before the end"
    );
    // Resume where the close frame said: the rest, once each, in order.
    let url = format!(
        "{}/api/v1/rooms/{r}/live?after={resume_after}&token={}",
        t.client.base().replacen("http", "ws", 1),
        registered.token
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(url.into_client_request().unwrap())
        .await
        .unwrap();
    while (seen.len() as u64) < total {
        let frame = timeout(Duration::from_secs(30), socket.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("no error");
        if let Message::Text(text) = frame {
            let m: ChatMessage = serde_json::from_str(text.as_str()).unwrap();
            seen.push(m.mess_props.sequence_number.unwrap());
        }
    }
    assert_eq!(
        seen,
        (1..=total).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    t.cleanup().await;
}
