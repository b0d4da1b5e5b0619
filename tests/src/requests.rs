//! The HTTP calls the system tests make again and again: a JSON body sent with a bearer token.

// Test support: a failed request should stop the test with its message.
#![allow(clippy::unwrap_used)]

/// Sends `request` with `key` as its bearer token and `body` as JSON; the answer.
pub async fn send_json(
    request: reqwest::RequestBuilder,
    key: &str,
    body: &serde_json::Value,
) -> reqwest::Response {
    request.bearer_auth(key).json(body).send().await.unwrap()
}

/// The `name=value` of the session cookie a login answer sets, as a browser sends it back.
pub fn session_cookie(r: &reqwest::Response) -> String {
    let set = r.headers()["set-cookie"].to_str().unwrap();
    set.split(';').next().unwrap().to_owned()
}

/// The body of `POST /api/v1/events` with `n` production counts of one good part on PRESS-01.
pub fn count_batch(n: usize) -> serde_json::Value {
    let count = serde_json::json!({"type": "production_count", "equipment": "PRESS-01", "good": 1});
    serde_json::json!({ "events": vec![count; n] })
}
