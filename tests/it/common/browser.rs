//! A headless Chromium driven through WebDriver, for the console's browser tests: Debian's `chromium` and
//! `chromium-driver` (scripts/test.sh installs them). Each browser gets its own chromedriver on a free loopback
//! port and a fresh profile directory; both go away with the [`Browser`].

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

/// How long a condition may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(15);

pub struct Browser {
    pub client: Client,
    driver: tokio::process::Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver runs in a process group of its own with the browser it started: end them all, also when
        // the test failed before closing the session.
        if let Some(pid) = self.driver.id() {
            let _ = std::process::Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).status();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A new headless browser session.
pub async fn browser() -> Browser {
    let driver_bin = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let profile = tempfile::tempdir().unwrap();
    // A port taken between the probe and chromedriver's bind: try another.
    for _ in 0..3 {
        let port = free_port();
        let mut driver = tokio::process::Command::new(&driver_bin)
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{driver_bin} did not start ({e}); scripts/test.sh installs chromium-driver"));
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + WAIT;
        let mut up = false;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = driver.try_wait() {
                break; // exited: the port was taken
            }
            if reqwest::get(format!("{url}/status")).await.is_ok_and(|r| r.status().is_success()) {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !up {
            continue;
        }
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1400,1000",
        ]
        .map(String::from)
        .into_iter()
        .chain([format!("--user-data-dir={}", profile.path().display())])
        .collect::<Vec<_>>();
        let caps = json!({ "browserName": "chrome", "goog:chromeOptions": { "binary": chromium, "args": args } });
        let caps = caps.as_object().unwrap().clone();
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&url)
            .await
            .expect("a WebDriver session");
        return Browser { client, driver, _profile: profile };
    }
    panic!("chromedriver did not come up on a free port");
}

impl Browser {
    /// Wait until `css` matches an element whose text satisfies `ok`; its text.
    pub async fn text_where(&self, css: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        let mut last = String::new();
        loop {
            if let Ok(elements) = self.client.find_all(Locator::Css(css)).await {
                for e in elements {
                    if let Ok(text) = e.text().await {
                        if ok(&text) {
                            return text;
                        }
                        last = text;
                    }
                }
            }
            assert!(Instant::now() < deadline, "timed out waiting for {css}; last text: {last:?}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Wait until `css` matches an element containing `text`.
    pub async fn wait_text(&self, css: &str, text: &str) -> String {
        self.text_where(css, |t| t.contains(text)).await
    }

    /// Sign in through the console's form with `token`, and wait for the signed-in header.
    pub async fn sign_in(&self, base: &str, token: &str) {
        self.client.goto(&format!("{base}/console")).await.unwrap();
        let input = self.client.wait().at_most(WAIT).for_element(Locator::Css("#token")).await.unwrap();
        input.send_keys(token).await.unwrap();
        self.client.find(Locator::Css("#signin button[type=submit]")).await.unwrap().click().await.unwrap();
        self.text_where("#who", |t| !t.is_empty()).await;
    }

    /// Click the (first) button labelled `label`.
    pub async fn click(&self, label: &str) {
        let xpath = format!("//button[normalize-space(text())='{label}']");
        self.client.wait().at_most(WAIT).for_element(Locator::XPath(&xpath)).await.unwrap().click().await.unwrap();
    }

    /// Click the button labelled `label` and confirm in the console's dialog.
    pub async fn click_confirmed(&self, label: &str) {
        self.click(label).await;
        self.client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css("#confirm[open] #confirm-ok"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }

    /// Save a screenshot of the page as `target/console-screenshots/<name>.png` (a test artifact, not committed).
    pub async fn screenshot(&self, name: &str) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    pub async fn close(mut self) {
        let client = self.client.clone();
        let _ = client.close().await;
        let _ = self.driver.kill().await;
    }
}
