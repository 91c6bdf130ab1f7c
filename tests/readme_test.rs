//! The README's commands, run as written (against a server on an ephemeral port instead of
//! 127.0.0.1:8080, and this build's binary instead of `./target/release/mess-chat`), so that
//! what a newcomer copies keeps working. Each block under test is marked in the README with
//! `<!-- readme-test: NAME -->` on the line before it.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{Backend, TestServer};
use mess_chat::service::ServiceConfig;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const README: &str = include_str!("../README.md");
const BINARY: &str = env!("CARGO_BIN_EXE_mess-chat");

/// The shell block marked `name` in the README.
fn block(name: &str) -> String {
    let marker = format!("<!-- readme-test: {name} -->");
    let after = README
        .split_once(&marker)
        .unwrap_or_else(|| panic!("no block {name:?} in the README"))
        .1;
    let body = after
        .trim_start()
        .strip_prefix("```sh\n")
        .unwrap_or_else(|| panic!("block {name:?} is not a sh block"));
    body.split_once("```")
        .expect("a closed block")
        .0
        .to_string()
}

/// Runs a README block with bash (stopping at the first failing command) against `t`; returns
/// its stdout.
async fn run(t: &TestServer, name: &str, token: Option<&str>) -> String {
    let addr = t.client.base().trim_start_matches("http://").to_string();
    let script = block(name)
        .replace("http://127.0.0.1:8080", t.client.base())
        .replace("localhost:8080", &addr)
        .replace("./target/release/mess-chat", BINARY);
    let mut command = Command::new("bash");
    command
        .args(["-euo", "pipefail", "-c", &script])
        .env("MESS_CHAT_SERVER", t.client.base())
        .env_remove("MESS_CHAT_TOKEN")
        .stdin(Stdio::null());
    if let Some(token) = token {
        command.env("MESS_CHAT_TOKEN", token);
    }
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("the block finishes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "README block {name:?} failed: {}\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quick_start_works_as_written() {
    let t = TestServer::start(Backend::Embedded).await;
    let out = run(&t, "quick-start", None).await;
    assert!(out.trim_end().ends_with(r#"["hello world"]"#), "{out}");
    let out = run(&t, "quick-start-cli", None).await;
    assert!(out.trim_end().ends_with("hello world"), "{out}");
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_walkthrough_runs_as_written_twice() {
    let t = TestServer::start_authenticated(Backend::Embedded).await;
    for _ in 0..2 {
        let out = run(&t, "rest", None).await;
        // curl prints the bodies one after the other: the room, the send, the history page.
        let bodies: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&out)
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(bodies.len(), 3, "{out}");
        assert_eq!(bodies[1]["status"], "stored");
        assert_eq!(bodies[2]["messages"][0]["message"], "hello");
    }
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eval_of_register_sets_the_token() {
    let t = TestServer::start_with(
        Backend::Embedded,
        ServiceConfig {
            require_auth: true,
            ..ServiceConfig::default()
        },
    )
    .await;
    // The block lists the caller's rooms with the token eval set: a refusal would fail it.
    let out = run(&t, "register", None).await;
    assert!(
        !out.contains("MESS_CHAT_TOKEN"),
        "eval consumed the export line: {out}"
    );
    t.cleanup().await;
}

/// Starts `mess-chat serve` (embedded) with `MESS_CHAT_NO_AUTH=value` and says whether `/send/`
/// works without a token.
async fn open_without_token(value: &str) -> bool {
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(BINARY)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("MESS_CHAT_NO_AUTH", value)
        .env("MESS_CHAT_DATA_DIR", data.path())
        .env_remove("MESS_CHAT_AMQP_URL")
        .env_remove("MESS_CHAT_MONGO_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap_or_else(|| panic!("MESS_CHAT_NO_AUTH={value} was refused"));
    let base = line.strip_prefix("mess-chat listening on ").unwrap();
    let url = format!("{base}/send/?room_name=open&message=hi&from_alias=ann&group_room=true");
    let status = reqwest::get(url).await.unwrap().status().as_u16();
    child.kill().await.unwrap();
    assert!(status == 200 || status == 401, "{status}");
    status == 200
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_auth_takes_the_usual_spellings_of_a_boolean() {
    for yes in ["1", "yes", "ON", "true"] {
        assert!(open_without_token(yes).await, "MESS_CHAT_NO_AUTH={yes}");
    }
    for no in ["0", "No", "off", "false"] {
        assert!(!open_without_token(no).await, "MESS_CHAT_NO_AUTH={no}");
    }
}
