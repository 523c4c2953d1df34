//! A workload beside a Switchyard node-agent, in Rust: it uses the fleet
//! through the agent's workload API (HTTP/JSON on 127.0.0.1:9091 by
//! default; see `docs/workload-api.yaml`) with `reqwest`.
//!
//! ```text
//! cargo run -p switchyard-node-agent --example workload_client -- put greeting hello
//! cargo run -p switchyard-node-agent --example workload_client -- get greeting
//! cargo run -p switchyard-node-agent --example workload_client -- send <peer id> echo/1 hi
//! cargo run -p switchyard-node-agent --example workload_client -- serve echo/1
//! ```
//!
//! Set `SWITCHYARD_WORKLOAD_API` to reach another agent. The functions are
//! what to copy; `main` only parses the command line.

use std::time::Duration;

/// A client of one agent's workload API.
pub struct Workload {
    http: reqwest::Client,
    api: String,
}

/// The agent refused a call: its status and the message saying what to
/// change.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

impl std::error::Error for ApiError {}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A request to this node's workload, from a peer.
pub struct Inbound {
    pub id: String,
    pub from: String,
    pub body: Vec<u8>,
}

impl Workload {
    /// The agent at `api` (e.g. `http://127.0.0.1:9091`).
    pub fn new(api: impl Into<String>) -> Self {
        // In this workspace reqwest shares rustls with iroh, which installs
        // no default crypto provider; plain HTTP never uses one, but the
        // client wants it set. (With reqwest's default features, drop this.)
        let _ = rustls::crypto::ring::default_provider().install_default();
        Workload {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("a plain HTTP client"),
            api: api.into(),
        }
    }

    /// Turn a non-2xx answer into an [`ApiError`] with the agent's message.
    async fn checked(r: reqwest::Response) -> Result<reqwest::Response> {
        if r.status().is_success() {
            return Ok(r);
        }
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or(text);
        Err(Box::new(ApiError { status, message }))
    }

    /// Store `value` under `key` on the k closest nodes; how many took it.
    pub async fn put(&self, key: &str, value: impl Into<Vec<u8>>) -> Result<u64> {
        let url = format!("{}/v1/records/{}", self.api, encode(key));
        let r = Self::checked(self.http.put(url).body(value.into()).send().await?).await?;
        let v: serde_json::Value = serde_json::from_slice(&r.bytes().await?)?;
        Ok(v["stored"].as_u64().unwrap_or(0))
    }

    /// The value under `key`, if any node holds it.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let url = format!("{}/v1/records/{}", self.api, encode(key));
        let r = self.http.get(url).send().await?;
        if r.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Ok(Some(Self::checked(r).await?.bytes().await?.to_vec()))
    }

    /// Send `body` to `peer` on `protocol`; its answer.
    pub async fn send(
        &self,
        peer: &str,
        protocol: &str,
        body: impl Into<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        let url = format!(
            "{}/v1/send?peer={}&protocol={}",
            self.api,
            encode(peer),
            encode(protocol)
        );
        let r = self.http.post(url).body(body.into()).send().await?;
        Ok(Self::checked(r).await?.bytes().await?.to_vec())
    }

    /// The next request to this node on `protocol`, waiting up to `wait`.
    pub async fn next(&self, protocol: &str, wait: Duration) -> Result<Option<Inbound>> {
        let url = format!(
            "{}/v1/inbound?protocol={}&wait={}",
            self.api,
            encode(protocol),
            wait.as_secs_f64()
        );
        let r = Self::checked(self.http.get(url).send().await?).await?;
        if r.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let header = |name: &str| {
            r.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let (id, from) = (header("x-switchyard-request"), header("x-switchyard-from"));
        Ok(Some(Inbound {
            id,
            from,
            body: r.bytes().await?.to_vec(),
        }))
    }

    /// Answer request `id`.
    pub async fn answer(&self, id: &str, body: impl Into<Vec<u8>>) -> Result<()> {
        let url = format!("{}/v1/inbound/{}", self.api, encode(id));
        Self::checked(self.http.post(url).body(body.into()).send().await?).await?;
        Ok(())
    }

    /// Answer every request on `protocol` with `answer(sender, body)`,
    /// forever.
    pub async fn serve(
        &self,
        protocol: &str,
        answer: impl Fn(&str, &[u8]) -> Vec<u8>,
    ) -> Result<()> {
        loop {
            if let Some(req) = self.next(protocol, Duration::from_secs(10)).await? {
                self.answer(&req.id, answer(&req.from, &req.body)).await?;
            }
        }
    }
}

/// Percent-encode a path segment or query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[allow(dead_code)]
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let api = std::env::var("SWITCHYARD_WORKLOAD_API")
        .unwrap_or_else(|_| "http://127.0.0.1:9091".to_owned());
    let w = Workload::new(api);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["put", key, value] => println!("stored on {} nodes", w.put(key, *value).await?),
        ["get", key] => match w.get(key).await? {
            Some(v) => println!("{}", String::from_utf8_lossy(&v)),
            None => {
                eprintln!("no record under {key:?}");
                std::process::exit(1);
            }
        },
        ["send", peer, protocol, body] => {
            println!(
                "{}",
                String::from_utf8_lossy(&w.send(peer, protocol, *body).await?)
            );
        }
        ["serve", protocol] => {
            w.serve(protocol, |_from, body| {
                [b"echo: ".as_slice(), body].concat()
            })
            .await?;
        }
        _ => {
            eprintln!(
                "usage: workload_client put KEY VALUE | get KEY | send PEER PROTOCOL BODY | serve PROTOCOL"
            );
            std::process::exit(2);
        }
    }
    Ok(())
}
