//! A real headless Chromium for the support console's tests, driven over W3C WebDriver: each
//! [`Browser`] starts its own `chromedriver` (Debian's `chromium-driver`, installed by
//! scripts/test) on a free 127.0.0.1 port, with a fresh profile directory.
//!
//! The WebDriver protocol is a handful of JSON endpoints, spoken here with the suite's reqwest:
//! no client crate, no second HTTP stack.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

/// The W3C name of an element reference in WebDriver answers.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long one WebDriver command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait for chromedriver to answer after starting it.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A headless Chromium with one WebDriver session.
pub struct Browser {
    driver: Child,
    client: reqwest::Client,
    /// `http://127.0.0.1:<port>/session/<id>`
    session: String,
    profile: PathBuf,
}

/// The chromedriver binary: `CHROMEDRIVER` or Debian's on the PATH.
fn chromedriver() -> String {
    std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".to_string())
}

impl Browser {
    /// Starts chromedriver and a headless Chromium of `width` x `height` CSS pixels.
    pub async fn start(width: u32, height: u32) -> Browser {
        let port = crate::process::free_port();
        let mut command = Command::new(chromedriver());
        command
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Its own process group: dropping the browser ends chromedriver and every Chromium process.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let driver = command.spawn().unwrap_or_else(|e| {
            panic!("chromedriver could not start ({e}): the console's browser tests need Debian's chromium and chromium-driver; scripts/test installs them")
        });
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(COMMAND_TIMEOUT)
            .build()
            .expect("client");
        let base = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        loop {
            let status = client.get(format!("{base}/status")).send().await;
            if let Ok(reply) = status {
                let body: Value = reply.json().await.unwrap_or_default();
                if body["value"]["ready"] == true {
                    break;
                }
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "chromedriver did not start on port {port}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = std::env::temp_dir().join(format!("coffer-chromium-{}", uuid::Uuid::new_v4().simple()));
        let args = [
            "--headless".to_string(),
            "--no-sandbox".to_string(),
            "--disable-gpu".to_string(),
            "--disable-quic".to_string(),
            "--no-first-run".to_string(),
            "--disable-background-networking".to_string(),
            "--disable-component-update".to_string(),
            "--disable-sync".to_string(),
            "--disable-dev-shm-usage".to_string(),
            "--hide-scrollbars".to_string(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", profile.display()),
        ];
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "args": args },
        } } });
        let reply: Value = client
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .expect("create a WebDriver session")
            .json()
            .await
            .expect("a WebDriver answer");
        let id = reply["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("Chromium did not start: {reply}"))
            .to_string();
        let mut browser = Browser {
            driver,
            client,
            session: format!("{base}/session/{id}"),
            profile,
        };
        browser.resize(width, height).await;
        browser
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.session);
        let mut request = self.client.request(method, &url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let reply = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {path}: {e}"));
        let status = reply.status();
        let body: Value = reply.json().await.unwrap_or_default();
        assert!(status.is_success(), "WebDriver {path} failed ({status}): {body}");
        body["value"].clone()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.command(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> Value {
        self.command(reqwest::Method::GET, path, None).await
    }

    /// Sets the viewport to `width` x `height` CSS pixels (the window's inner size).
    pub async fn resize(&mut self, width: u32, height: u32) {
        self.post("/window/rect", json!({ "width": width, "height": height }))
            .await;
        // The window's frame may take some of the size: grow it until the viewport fits.
        let inner = self
            .execute("return [window.innerWidth, window.innerHeight];")
            .await;
        let (w, h) = (inner[0].as_u64().unwrap_or(0), inner[1].as_u64().unwrap_or(0));
        if w != u64::from(width) || h != u64::from(height) {
            let (dw, dh) = (
                u64::from(width).saturating_sub(w),
                u64::from(height).saturating_sub(h),
            );
            let rect = json!({ "width": u64::from(width) + dw, "height": u64::from(height) + dh });
            self.post("/window/rect", rect).await;
        }
    }

    /// Opens `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    /// The page's URL now.
    pub async fn url(&self) -> String {
        self.get("/url").await.as_str().unwrap_or_default().to_string()
    }

    /// The page's source (for assertion messages).
    pub async fn source(&self) -> String {
        self.get("/source").await.as_str().unwrap_or_default().to_string()
    }

    /// The elements matching a CSS selector.
    pub async fn elements(&self, css: &str) -> Vec<String> {
        let found = self
            .post("/elements", json!({ "using": "css selector", "value": css }))
            .await;
        found
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|e| e[ELEMENT_KEY].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The first element matching `css`; fails the test with the page's text if there is none.
    pub async fn find(&self, css: &str) -> String {
        match self.elements(css).await.into_iter().next() {
            Some(element) => element,
            None => panic!(
                "no element matches {css:?} on {}:\n{}",
                self.url().await,
                self.text().await
            ),
        }
    }

    /// How many elements match `css`.
    pub async fn count(&self, css: &str) -> usize {
        self.elements(css).await.len()
    }

    /// Types `text` into the field `css`.
    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.post(&format!("/element/{element}/clear"), json!({})).await;
        self.post(&format!("/element/{element}/value"), json!({ "text": text }))
            .await;
    }

    /// Clicks the element `css` (a submit button waits for the next page).
    pub async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.post(&format!("/element/{element}/click"), json!({})).await;
    }

    /// The rendered text of the element `css`.
    pub async fn text_of(&self, css: &str) -> String {
        let element = self.find(css).await;
        self.get(&format!("/element/{element}/text"))
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The rendered text of the whole page ("" while a self-reloading page is between loads).
    pub async fn text(&self) -> String {
        let script = json!({ "script": "return document.body ? document.body.innerText : '';", "args": [] });
        let url = format!("{}/execute/sync", self.session);
        let Ok(reply) = self.client.post(&url).json(&script).send().await else {
            return String::new();
        };
        let body: Value = reply.json().await.unwrap_or_default();
        body["value"].as_str().unwrap_or_default().to_string()
    }

    /// The value of attribute `name` of the element `css`.
    pub async fn attribute(&self, css: &str, name: &str) -> Option<String> {
        let element = self.find(css).await;
        self.get(&format!("/element/{element}/attribute/{name}"))
            .await
            .as_str()
            .map(str::to_string)
    }

    /// Runs `script` in the page (WebDriver scripts are not subject to the page's CSP).
    pub async fn execute(&self, script: &str) -> Value {
        self.post("/execute/sync", json!({ "script": script, "args": [] }))
            .await
    }

    /// The browser's cookie `name` (HttpOnly ones included: WebDriver sees every cookie).
    pub async fn cookie(&self, name: &str) -> Option<Value> {
        let all = self.get("/cookie").await;
        all.as_array()?.iter().find(|c| c["name"] == name).cloned()
    }

    /// Polls until `css` matches (e.g. a page that reloads itself), at most `timeout`.
    pub async fn wait_for(&self, css: &str, timeout: Duration) {
        let started = Instant::now();
        while self.count(css).await == 0 {
            if started.elapsed() > timeout {
                panic!(
                    "{css:?} did not appear within {timeout:?}:\n{}",
                    self.text().await
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Polls until the page's URL satisfies `check` (a click that submits a form may return
    /// before the next page is there), at most `timeout`; answers the URL.
    pub async fn wait_for_url(&self, check: impl Fn(&str) -> bool, timeout: Duration) -> String {
        let started = Instant::now();
        loop {
            let url = self.url().await;
            if check(&url) {
                return url;
            }
            if started.elapsed() > timeout {
                panic!(
                    "the page is still {url} after {timeout:?}:\n{}",
                    self.text().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls until the page's text contains `text`, at most `timeout`.
    pub async fn wait_for_text(&self, text: &str, timeout: Duration) {
        let started = Instant::now();
        while !self.text().await.contains(text) {
            if started.elapsed() > timeout {
                panic!(
                    "{text:?} did not appear within {timeout:?}:\n{}",
                    self.text().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a PNG of the viewport (the whole page when it is taller: the window grows to it).
    pub async fn screenshot(&mut self, path: &Path) {
        let size = self
            .execute("return [window.innerWidth, window.innerHeight, document.documentElement.scrollHeight];")
            .await;
        let (width, height, full) = (
            size[0].as_u64().unwrap_or(1200) as u32,
            size[1].as_u64().unwrap_or(900) as u32,
            size[2].as_u64().unwrap_or(900) as u32,
        );
        let tall = full.clamp(height, 4000);
        if tall > height {
            self.resize(width, tall).await;
        }
        let png = self.get("/screenshot").await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or_default())
            .expect("a base64 PNG");
        std::fs::write(path, bytes).expect("write the screenshot");
        if tall > height {
            self.resize(width, height).await;
        }
    }

    /// Ends the session (Chromium exits) and chromedriver.
    pub async fn close(mut self) {
        let _ = self
            .client
            .delete(&self.session)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        self.stop();
    }

    fn stop(&mut self) {
        // The whole group: chromedriver and the Chromium it started.
        let pid = self.driver.id();
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .stderr(Stdio::null())
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if self.driver.try_wait().ok().flatten().is_none() {
            self.stop();
        }
    }
}
