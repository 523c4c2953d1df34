//! The fleet's application traffic: every agent's application puts a
//! record through its own agent's workload API once a round (a second, or
//! longer in a big fleet: see `plan::Scale`) and reads it back through
//! another agent's, over the DHT. One task per agent, one
//! request in flight each.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Records each application cycles through: the DHT holds a bounded set.
const KEYS_PER_NODE: u64 = 16;

/// What the workload has done so far.
#[derive(Debug, Default)]
pub struct Load {
    ok: AtomicU64,
    failed: AtomicU64,
    failed_under_fault: AtomicU64,
    /// Set while the demo injects a fault: failures then are expected.
    pub fault: AtomicBool,
    last_failure: Mutex<Option<String>>,
}

/// A reading of [`Load`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Operations that succeeded.
    pub ok: u64,
    /// Operations that failed.
    pub failed: u64,
    /// Of those, while a fault was injected.
    pub failed_under_fault: u64,
    /// Why the last one failed.
    pub last_failure: Option<String>,
}

impl Load {
    /// The counts now.
    pub fn counts(&self) -> Counts {
        Counts {
            ok: self.ok.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            failed_under_fault: self.failed_under_fault.load(Ordering::Relaxed),
            last_failure: self
                .last_failure
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        }
    }

    fn note(&self, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(why) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                if self.fault.load(Ordering::Relaxed) {
                    self.failed_under_fault.fetch_add(1, Ordering::Relaxed);
                }
                *self
                    .last_failure
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(why);
            }
        }
    }
}

/// Start one application per agent (`apis`: their workload APIs), each
/// making a round (a put and a get) every `round`, until `stop` turns
/// true.
pub fn start(
    apis: &[SocketAddr],
    round: Duration,
    load: &Arc<Load>,
    stop: &watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client without TLS builds");
    let n = apis.len();
    (0..n)
        .map(|i| {
            let (put, get) = (apis[i], apis[(i * 7 + 3) % n]);
            // Spread the rounds over the period.
            let offset = round.mul_f64(i as f64 / n as f64);
            let app = Application {
                i,
                put,
                get,
                http: http.clone(),
            };
            tokio::spawn(app.run(offset, round, load.clone(), stop.clone()))
        })
        .collect()
}

struct Application {
    i: usize,
    put: SocketAddr,
    get: SocketAddr,
    http: reqwest::Client,
}

impl Application {
    async fn run(
        self,
        offset: Duration,
        every: Duration,
        load: Arc<Load>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for round in 0u64.. {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let key = format!("demo-{}-{}", self.i, round % KEYS_PER_NODE);
            let value = format!("{}:{round}", self.i);
            let put = self.put(&key, &value).await;
            let stored = put.is_ok();
            load.note(put);
            if stored {
                load.note(self.get(&key, &value).await);
            }
        }
    }

    async fn put(&self, key: &str, value: &str) -> Result<(), String> {
        let url = format!("http://{}/v1/records/{key}", self.put);
        match self.http.put(&url).body(value.to_owned()).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("put {key} through {}: {}", self.put, r.status())),
            Err(e) => Err(format!("put {key} through {}: {e}", self.put)),
        }
    }

    async fn get(&self, key: &str, value: &str) -> Result<(), String> {
        let url = format!("http://{}/v1/records/{key}", self.get);
        let r = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("get {key} through {}: {e}", self.get))?;
        let status = r.status();
        let body = r.bytes().await.unwrap_or_default();
        if !status.is_success() {
            return Err(format!("get {key} through {}: {status}", self.get));
        }
        if body.as_ref() != value.as_bytes() {
            return Err(format!(
                "get {key} through {}: read {:?}, wrote {value:?}",
                self.get,
                String::from_utf8_lossy(&body)
            ));
        }
        Ok(())
    }
}
