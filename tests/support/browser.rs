//! Browsers: serve a page on its own origin and drive it in headless Chromium (through
//! playwright-core and tests/browser/run_page.mjs).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Serves one HTML page on its own origin (`http://127.0.0.1:PORT`).
pub struct PageServer {
    pub url: String,
    task: tokio::task::JoinHandle<()>,
}

impl PageServer {
    pub async fn start(html: String) -> PageServer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else { return };
                let html = html.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let _ = socket.read(&mut buf).await;
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{html}",
                        html.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
        PageServer { url, task }
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A page open in headless Chromium (driven by tests/browser/run_page.mjs), reporting JSON lines.
pub struct BrowserPage {
    child: Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    /// Reports that came before the page finished loading, handed out first.
    early: std::collections::VecDeque<Value>,
}

/// Where the browser tooling is, from `cargo xtask test`; `None` (with a notice) outside CI.
pub fn browser_tooling() -> Option<(String, PathBuf)> {
    let chromium = std::env::var("HERALD_TEST_CHROMIUM").ok();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/browser");
    match chromium {
        Some(c) if dir.join("node_modules/playwright-core").exists() => Some((c, dir)),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true but the browser tooling is missing: run the tests with `cargo xtask test`")
        }
        _ => {
            eprintln!(
                "skipping browser test: run `cargo xtask test` (needs Chromium: apt-get install chromium; and npm)"
            );
            None
        }
    }
}

/// How the browser is started for a page.
#[derive(Default, Clone, Copy)]
pub struct PageOptions {
    /// Accept any server certificate (a node serving HTTPS with a self-signed one).
    pub ignore_https_errors: bool,
}

impl BrowserPage {
    pub async fn open(url: &str, screenshot: Option<&std::path::Path>) -> Option<BrowserPage> {
        BrowserPage::open_with(url, screenshot, PageOptions::default()).await
    }

    pub async fn open_with(
        url: &str,
        screenshot: Option<&std::path::Path>,
        options: PageOptions,
    ) -> Option<BrowserPage> {
        let (chromium, dir) = browser_tooling()?;
        let mut cmd = Command::new("node");
        cmd.arg(dir.join("run_page.mjs"));
        if options.ignore_https_errors {
            cmd.arg("--ignore-https-errors");
        }
        cmd.arg(url);
        if let Some(path) = screenshot {
            cmd.arg(path);
        }
        let mut child = cmd
            .env("HERALD_TEST_CHROMIUM", chromium)
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut page = BrowserPage { child, lines, early: Default::default() };
        // Scripts may report while the page loads: keep those for `next`.
        let mut early = std::collections::VecDeque::new();
        loop {
            let line = page.next().await;
            if line["loaded"] == true {
                break;
            }
            early.push_back(line);
        }
        page.early = early;
        Some(page)
    }

    /// The next line the page reported.
    pub async fn next(&mut self) -> Value {
        if let Some(v) = self.early.pop_front() {
            return v;
        }
        let line = tokio::time::timeout(Duration::from_secs(30), self.lines.next_line())
            .await
            .expect("the page reports in time")
            .expect("read")
            .expect("browser still running");
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("JSON from the page: {line}"))
    }

    pub async fn close(mut self) {
        use tokio::io::AsyncWriteExt;
        if let Some(mut stdin) = self.child.stdin.take() {
            let _ = stdin.write_all(b"quit\n").await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await;
    }
}
