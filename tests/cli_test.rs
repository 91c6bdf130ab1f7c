//! The `mess-chat` binary's own behaviour: configuration file and its precedence, JSON logs,
//! clear start-up errors. Each test runs the binary on the embedded back ends.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

fn serve(config: Option<&Path>) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mess-chat"));
    command.args(["serve", "--no-auth"]);
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    command
        .env_remove("MESS_CHAT_AMQP_URL")
        .env_remove("MESS_CHAT_MONGO_URL")
        .env_remove("MESS_CHAT_DATA_DIR")
        .env_remove("MESS_CHAT_LISTEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Waits for the "listening on" line and returns the base URL.
async fn base_url(child: &mut Child) -> String {
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("announces its address")
        .unwrap()
        .expect("a line");
    line.strip_prefix("mess-chat listening on ")
        .expect("the listening line")
        .to_string()
}

async fn send_one(base: &str) {
    let url = format!("{base}/send/?room_name=cfg&message=hi&from_alias=ann&group_room=true");
    assert_eq!(reqwest::get(url).await.unwrap().status().as_u16(), 200);
}

#[tokio::test]
async fn config_file_settings_apply_and_environment_overrides_them() {
    let dir = tempfile::tempdir().unwrap();
    let (from_file, from_env) = (dir.path().join("file-data"), dir.path().join("env-data"));
    let config = dir.path().join("mess-chat.toml");
    let text = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\ncache_capacity = 5\n",
        from_file
    );
    std::fs::write(&config, text).unwrap();

    let mut child = serve(Some(&config)).spawn().unwrap();
    send_one(&base_url(&mut child).await).await;
    child.kill().await.unwrap();
    assert!(
        from_file.join("mess-chat.redb").exists(),
        "the file's data_dir is used"
    );

    let mut child = serve(Some(&config))
        .env("MESS_CHAT_DATA_DIR", &from_env)
        .spawn()
        .unwrap();
    send_one(&base_url(&mut child).await).await;
    child.kill().await.unwrap();
    assert!(
        from_env.join("mess-chat.redb").exists(),
        "the environment wins over the file"
    );
}

#[tokio::test]
async fn a_bad_config_file_stops_start_up_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "lisen = \"127.0.0.1:0\"\n").unwrap();
    let output = serve(Some(&config)).output().await.unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad.toml") && stderr.contains("lisen"),
        "{stderr}"
    );
}

#[tokio::test]
async fn json_log_format_writes_one_json_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = serve(None)
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .env("MESS_CHAT_DATA_DIR", dir.path())
        .spawn()
        .unwrap();
    let base = base_url(&mut child).await;
    send_one(&base).await;
    // SIGTERM: a graceful stop, so the log is complete.
    let pid = child.id().unwrap().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    let output = child.wait_with_output().await.unwrap();
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(lines.len() >= 2, "{stderr}");
    for line in lines {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            event["level"].is_string() && event["fields"].is_object(),
            "{line}"
        );
    }
}

#[tokio::test]
async fn a_second_process_on_the_same_embedded_data_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let mut first = serve(None)
        .args(["--listen", "127.0.0.1:0", "--data-dir", data])
        .spawn()
        .unwrap();
    let base = base_url(&mut first).await;
    let second = serve(None)
        .args(["--listen", "127.0.0.1:0", "--data-dir", data])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let output = tokio::time::timeout(Duration::from_secs(20), second.wait_with_output())
        .await
        .expect("the second process exits")
        .unwrap();
    assert!(!output.status.success(), "a second process must not start");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("in use by another mess-chat process"),
        "the error says why: {stderr}"
    );
    // The first is unharmed.
    send_one(&base).await;
    first.kill().await.unwrap();
}

#[tokio::test]
async fn rate_limits_from_the_config_file_apply_and_send_waits_out_a_429() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("limits.toml");
    let text = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\nsends_per_second = 1\nsend_burst = 1\n",
        dir.path().join("data")
    );
    std::fs::write(&config, text).unwrap();
    let mut child = serve(Some(&config)).spawn().unwrap();
    let base = base_url(&mut child).await;
    send_one(&base).await;
    let url = format!("{base}/send/?room_name=cfg&message=hi&from_alias=ann");
    let refused = reqwest::get(url).await.unwrap();
    assert_eq!(refused.status().as_u16(), 429, "one a second, bursts of 1");
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");

    // Still within the second: the CLI is refused, waits as told, and sends the text once.
    let output = Command::new(env!("CARGO_BIN_EXE_mess-chat"))
        .args(["send", "--server", &base, "--room", "cfg", "--from", "ann"])
        .arg("kept text")
        .env_remove("MESS_CHAT_TOKEN")
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), output)
        .await
        .expect("send finishes")
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let messages = reqwest::get(format!("{base}/messages/?room_name=cfg"))
        .await
        .unwrap()
        .json::<Vec<String>>()
        .await
        .unwrap();
    assert_eq!(
        messages.iter().filter(|m| *m == "kept text").count(),
        1,
        "{messages:?}"
    );
    child.kill().await.unwrap();
}
