//! A headless Chromium driven over WebDriver (Debian `chromium` and `chromium-driver`;
//! `.ci/run` installs them), for the UI tests of the HQ dashboard and the operator terminal.
//!
//! [`Browser`] starts chromedriver on a free port with one session on a private profile, and
//! kills both (and any Chromium left on that profile) when dropped, also after a failed
//! assertion. Screenshots and the driver's log go to `target/test-artifacts/`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::hq::temp_dir;

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long the page may take to show its figures after an action.
pub const RENDER_WAIT: Duration = Duration::from_secs(20);

/// A chromedriver with one headless Chromium session. Dropping it ends the session and kills
/// both, also when an assertion failed half-way.
#[allow(missing_debug_implementations)]
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    profile: PathBuf,
    http: reqwest::Client,
}

impl Browser {
    pub async fn start() -> Browser {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: the browser tests need Debian's headless browser, \
                 `apt-get install --no-install-recommends chromium chromium-driver` (.ci/run does it)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(artifacts().join("chromedriver.log")).unwrap();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            // Times on the page are the browser's local time: make them the same everywhere.
            .env("TZ", "UTC")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting chromedriver");
        let profile = temp_dir("chromium-profile");
        let mut browser = Browser {
            driver,
            port,
            session: String::new(),
            profile,
            http: reqwest::Client::new(),
        };
        let start = Instant::now();
        loop {
            let ready = browser
                .http
                .get(format!("http://127.0.0.1:{port}/status"))
                .send()
                .await;
            if let Ok(r) = ready
                && let Ok(v) = r.json::<Value>().await
                && v["value"]["ready"] == json!(true)
            {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "chromedriver did not become ready within 15 s (see target/test-artifacts/chromedriver.log)"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--hide-scrollbars", "--no-first-run", "--lang=en-US",
                    "--window-size=1600,1000",
                    format!("--user-data-dir={}", browser.profile.display()),
                ],
            },
        }}});
        let v = browser.call("POST", "/session", caps).await;
        browser.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {v}"))
            .to_owned();
        browser
    }

    /// One WebDriver command; its `value`, or a panic naming the WebDriver error.
    pub async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let req = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body),
        };
        let r = req
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let v: Value = r.json().await.unwrap();
        if v["value"].get("error").is_some() {
            panic!("WebDriver {method} {path}: {}", v["value"]);
        }
        v["value"].clone()
    }

    pub async fn session_call(&self, method: &str, path: &str, body: Value) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
            .await
    }

    pub async fn goto(&self, url: &str) {
        self.session_call("POST", "/url", json!({ "url": url }))
            .await;
    }

    pub async fn js(&self, script: &str) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
    }

    pub async fn find(&self, css: &str) -> String {
        let e = self
            .session_call(
                "POST",
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        e["element-6066-11e4-a52e-4f735466cecf"]
            .as_str()
            .unwrap_or_else(|| panic!("finding {css:?}: {e}"))
            .to_owned()
    }

    pub async fn click(&self, css: &str) {
        let id = self.find(css).await;
        self.session_call("POST", &format!("/element/{id}/click"), json!({}))
            .await;
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        self.session_call(
            "POST",
            &format!("/element/{id}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    pub async fn refreshes(&self) -> u64 {
        self.js("return Number(document.body.dataset.refreshes || 0);")
            .await
            .as_u64()
            .unwrap_or(0)
    }

    /// Waits until the page finished a refresh after the `seen`-th one, then returns every
    /// element with a `data-testid`: its text, class, and data attributes.
    pub async fn rendered_after(&self, seen: u64) -> Page {
        let start = Instant::now();
        while self.refreshes().await <= seen {
            assert!(
                start.elapsed() < RENDER_WAIT,
                "the page did not finish a refresh within {RENDER_WAIT:?}; page text:\n{}",
                self.js("return document.body.innerText;").await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let v = self
            .js(r#"
                const out = {};
                for (const e of document.querySelectorAll("[data-testid]")) {
                    out[e.dataset.testid] = {
                        text: e.textContent, class: e.getAttribute("class") || "",
                        hidden: e.hidden || e.getBoundingClientRect().width === 0,
                        data: Object.assign({}, e.dataset),
                        width: e.getAttribute("width"), height: e.getAttribute("height"),
                    };
                }
                return {elements: out, loaded: document.body.dataset.loaded, href: location.href};"#)
            .await;
        Page(v)
    }

    pub async fn screenshot(&self) -> Vec<u8> {
        let v = self.session_call("GET", "/screenshot", json!(null)).await;
        base64_decode(v.as_str().unwrap())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ending the session makes chromedriver close Chromium; a plain blocking request, as
        // drop cannot await.
        if !self.session.is_empty()
            && let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port))
        {
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = write!(
                s,
                "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.session
            );
            let _ = s.read_to_end(&mut Vec::new());
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        // Whatever Chromium process survived is ours only if it runs on our own profile.
        let marker = format!("--user-data-dir={}", self.profile.display());
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains(&marker) {
                    let _ = Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status();
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// What the page showed: elements by `data-testid`.
#[derive(Debug)]
pub struct Page(pub Value);

impl Page {
    pub fn get(&self, id: &str) -> &Value {
        let e = &self.0["elements"][id];
        assert!(
            !e.is_null(),
            "no element data-testid={id:?} on the page; elements: {}",
            self.0["elements"]
        );
        e
    }
    pub fn has(&self, id: &str) -> bool {
        !self.0["elements"][id].is_null()
    }
    pub fn text(&self, id: &str) -> String {
        self.get(id)["text"].as_str().unwrap().to_owned()
    }
    pub fn data(&self, id: &str, key: &str) -> String {
        self.get(id)["data"][key].as_str().unwrap_or("").to_owned()
    }
    pub fn class(&self, id: &str) -> String {
        self.get(id)["class"].as_str().unwrap().to_owned()
    }
    pub fn number(&self, id: &str, attr: &str) -> f64 {
        let v = &self.get(id)[attr];
        v.as_str()
            .and_then(|s| s.parse().ok())
            .or_else(|| v.as_f64())
            .unwrap_or_else(|| panic!("{id}: {attr} is not a number: {v}"))
    }
    pub fn assert_loaded(&self) {
        assert_eq!(
            self.0["loaded"],
            json!("ok"),
            "the page shows an error: {:?}",
            self.0["elements"]["error"]["text"]
        );
        assert!(self.get("error")["hidden"].as_bool().unwrap());
    }
    pub fn banner(&self) -> String {
        assert!(
            !self.get("error")["hidden"].as_bool().unwrap(),
            "no error banner shown"
        );
        self.text("error")
    }
}

pub fn artifacts() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&p).unwrap();
    p
}

pub fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for chunk in bytes.chunks(4) {
        let data: Vec<u8> = chunk.iter().copied().filter(|&c| c != b'=').collect();
        let mut n = 0u32;
        for (i, &c) in data.iter().enumerate() {
            n |= value(c) << (18 - 6 * i);
        }
        let n = n.to_be_bytes();
        out.extend_from_slice(&n[1..data.len()]);
    }
    out
}

impl Browser {
    /// Types on the keyboard into whatever has the focus, as a scanner or a person would
    /// (WebDriver key actions; `\u{E007}` is Enter, `\u{E004}` Tab).
    pub async fn keys(&self, text: &str) {
        let mut actions = Vec::new();
        for c in text.chars() {
            actions.push(json!({"type": "keyDown", "value": c.to_string()}));
            actions.push(json!({"type": "keyUp", "value": c.to_string()}));
        }
        self.session_call(
            "POST",
            "/actions",
            json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]}),
        )
        .await;
    }

    /// Waits (at most [`RENDER_WAIT`]) until the JavaScript expression is truthy; panics with
    /// `what` and the page's text otherwise.
    pub async fn wait_until(&self, expression: &str, what: &str) {
        let start = Instant::now();
        loop {
            let v = self.js(&format!("return !!({expression});")).await;
            if v == json!(true) {
                return;
            }
            if start.elapsed() > RENDER_WAIT {
                panic!(
                    "waited {RENDER_WAIT:?} for {what} ({expression}); page text:\n{}",
                    self.js("return document.body.innerText;").await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Keeps a screenshot as `target/test-artifacts/NAME.png`; with `UPDATE_SCREENSHOTS=1`
    /// also as `docs/screenshots/NAME.png`, the copy the README shows.
    pub async fn keep_screenshot(&self, name: &str) {
        let png = self.screenshot().await;
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
        std::fs::write(artifacts().join(format!("{name}.png")), &png).unwrap();
        if std::env::var_os("UPDATE_SCREENSHOTS").is_some() {
            let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots");
            std::fs::create_dir_all(&docs).unwrap();
            std::fs::write(docs.join(format!("{name}.png")), &png).unwrap();
        }
    }
}
