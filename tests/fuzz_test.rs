//! A bounded schemathesis run against the OpenAPI description: every generated request, valid or
//! not, must get an answer that is not a 5xx. schemathesis comes from Python's package index;
//! `scripts/test.sh` installs it and exports its path as `MESS_CHAT_SCHEMATHESIS`.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{Backend, TestServer, unique};
use mess_chat::service::ServiceConfig;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_requests_never_get_a_server_error() {
    let schemathesis = std::env::var("MESS_CHAT_SCHEMATHESIS")
        .expect("MESS_CHAT_SCHEMATHESIS unset: run the suite with scripts/test.sh");
    let config = ServiceConfig {
        require_auth: true,
        ..ServiceConfig::default()
    };
    let t = TestServer::start_with(Backend::Embedded, config).await;
    let http = reqwest::Client::new();
    // A registered caller with a room, so that authorised operations get past the door.
    let registered: Value = http
        .post(t.url("/api/v1/users"))
        .json(&json!({ "alias": unique("fuzzer") }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = registered["token"].as_str().unwrap().to_string();
    let created = http
        .post(t.url("/api/v1/rooms"))
        .bearer_auth(&token)
        .json(&json!({ "name": unique("fuzzroom"), "group_room": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);

    let report = tempfile::tempdir().unwrap();
    let run = tokio::process::Command::new(&schemathesis)
        .current_dir(report.path())
        .args(["run", &t.url("/api/v1/openapi.json")])
        .args([
            "--checks",
            "not_a_server_error",
            "--max-time",
            "30",
            "--max-examples",
            "20",
        ])
        .args(["--seed", "1", "--no-color", "--generation-database", "none"])
        .arg("--header")
        .arg(format!("Authorization: Bearer {token}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("schemathesis finishes within 3 minutes")
        .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found a problem:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("passed"), "no test case ran:\n{stdout}");
    t.cleanup().await;
}
