//! Blocking HTTP calls for the cluster harness, made on one shared runtime so that any thread
//! (a test, a background deployer) can call them. Never call these from inside an async
//! runtime: `block_on` would panic.
//!
//! Connections are not pooled: a node that was killed and restarted on the same port must not
//! be reached through a dead pooled connection, and every timed call pays the same connect.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::Value;

/// A whole HTTP answer.
#[derive(Clone, Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The response headers.
    pub headers: reqwest::header::HeaderMap,
    /// The body, read to its end.
    pub body: Vec<u8>,
}

impl Reply {
    /// The value of header `name`, if it is there and is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.to_str().ok()
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("not JSON (status {}): {}", self.status, self.text()))
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("the harness's HTTP runtime")
    })
}

fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(0)
            .connect_timeout(Duration::from_secs(2))
            .build()
            .expect("the harness's HTTP client")
    })
}

/// One request: `bearer` becomes `Authorization: Bearer <token>`, a `body` is sent as
/// `application/zstd` (the only body the harness sends is a bundle). Fails on a transport
/// error or after `timeout`; any status is an answer.
pub fn request(
    method: reqwest::Method,
    url: &str,
    bearer: Option<&str>,
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<Reply> {
    runtime().block_on(send(method, url, bearer, body, timeout))
}

/// [`request`] on the harness's runtime.
async fn send(
    method: reqwest::Method,
    url: &str,
    bearer: Option<&str>,
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<Reply> {
    let mut request = client().request(method.clone(), url).timeout(timeout);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/zstd")
            .body(body);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("{method} {url}"))?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .bytes()
        .await
        .with_context(|| format!("{method} {url}: reading the body"))?
        .to_vec();
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// `GET url` without credentials.
pub fn get(url: &str, timeout: Duration) -> Result<Reply> {
    request(reqwest::Method::GET, url, None, None, timeout)
}

/// One GET without credentials to each of `urls`, all sent at once; each answer (or error)
/// comes back in the order of `urls`, with the time it took.
pub fn get_all_at_once(urls: &[String], timeout: Duration) -> Vec<(Duration, Result<Reply>)> {
    runtime().block_on(async {
        let requests: Vec<_> = urls
            .iter()
            .map(|url| {
                let url = url.clone();
                tokio::spawn(async move {
                    let began = Instant::now();
                    let reply = send(reqwest::Method::GET, &url, None, None, timeout).await;
                    (began.elapsed(), reply)
                })
            })
            .collect();
        let mut answers = Vec::new();
        for request in requests {
            answers.push(
                request
                    .await
                    .unwrap_or_else(|error| (Duration::ZERO, Err(error.into()))),
            );
        }
        answers
    })
}
