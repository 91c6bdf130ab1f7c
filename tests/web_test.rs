//! The web page in a real browser: `tests/web/two_windows.mjs` drives two Chromium windows
//! (playwright-core on Debian's `chromium`) against a server on the real back ends with
//! authentication on — two aliases register, create and join a room, chat live both ways,
//! scroll back through history, see an error as a sentence, and see a rate-limited message wait
//! and go out once. Its screenshots are kept in
//! `target/web-artifacts/`. Missing Chromium or node modules fail the test; `scripts/test.sh`
//! installs both.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{Backend, TestServer};
use mess_chat::service::{Limits, Rate, ServiceConfig};

/// Longest the browser script may run (it bounds each of its own waits to 15 s).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(240);

const INSTALL: &str = "scripts/test.sh installs it (apt-get install chromium; \
                       npm ci --prefix tests/web)";

fn chromium() -> PathBuf {
    std::env::var_os("MESS_CHAT_CHROMIUM").map_or_else(|| "/usr/bin/chromium".into(), Into::into)
}

/// Panics, naming what is missing, unless Chromium, node and playwright-core are all there.
fn require_browser_tools(web: &Path) {
    let chromium = chromium();
    assert!(
        chromium.exists(),
        "no Chromium at {}: {INSTALL}",
        chromium.display()
    );
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "node is not on PATH: install Debian's nodejs"
    );
    assert!(
        web.join("node_modules/playwright-core/package.json")
            .exists(),
        "playwright-core is not in tests/web/node_modules: {INSTALL}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browser_windows_chat_live_through_the_page() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let web = root.join("tests/web");
    require_browser_tools(&web);
    let config = ServiceConfig {
        require_auth: true,
        // The script spends A's bursts of 100 sends, then sees the page wait out a 429.
        limits: Limits {
            sends: Rate::per_minute(12, 100),
            ..Limits::NONE
        },
        ..ServiceConfig::default()
    };
    let t = TestServer::start_with(Backend::Real, config).await;
    let screenshots = root.join("target/web-artifacts/two-windows");
    let pngs = ["a", "b"].map(|who| screenshots.with_file_name(format!("two-windows-{who}.png")));
    for png in &pngs {
        let _ = std::fs::remove_file(png);
    }

    let run = tokio::process::Command::new("node")
        .arg(web.join("two_windows.mjs"))
        .arg(t.client.base())
        .arg(&screenshots)
        .env("MESS_CHAT_CHROMIUM", chromium())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let outcome = tokio::time::timeout(SCRIPT_TIMEOUT, run).await;
    t.cleanup().await;

    let output = outcome
        .unwrap_or_else(|_| panic!("two_windows.mjs still running after {SCRIPT_TIMEOUT:?}"))
        .expect("node starts");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{log}");
    assert!(
        output.status.success(),
        "two_windows.mjs failed ({}); screenshots in {}-{{a,b}}.png:\n{log}",
        output.status,
        screenshots.display()
    );
    for png in &pngs {
        assert!(png.exists(), "no screenshot at {}", png.display());
    }
}
