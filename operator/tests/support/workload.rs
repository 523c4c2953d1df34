//! The DHT workload the network scenarios and the soak run throughout
//! (put a record through one agent's workload API, read it back through
//! another, ten rounds a second, counting what failed), and what they
//! read off the agents' `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;

/// What the workload saw.
#[derive(Default)]
pub struct Load {
    /// Operations that succeeded (a put and a get each round).
    pub ok: AtomicU64,
    /// Rounds that failed.
    pub failed: AtomicU64,
    /// Why the last one failed.
    pub last_failure: std::sync::Mutex<String>,
}

/// Put a record through one agent and read it back through another, ten
/// rounds a second, until `stop`; a new key each round.
pub async fn workload(apis: Vec<String>, load: Arc<Load>, stop: watch::Receiver<bool>) {
    workload_keys(apis, load, stop, usize::MAX).await;
}

/// [`workload`] over `keys` keys, each put again (a new value) when its
/// turn comes round: a long run holds a bounded number of records.
pub async fn workload_keys(
    apis: Vec<String>,
    load: Arc<Load>,
    mut stop: watch::Receiver<bool>,
    keys: usize,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut running = futures::stream::FuturesUnordered::new();
    let mut i = 0usize;
    loop {
        tokio::select! {
            _ = tick.tick(), if running.len() < 32 => {
                let (http, n) = (http.clone(), apis.len());
                let (put, get) = (apis[i % n].clone(), apis[(i * 7 + 3) % n].clone());
                let key = format!("k{}", i % keys);
                running.push(async move { round(&http, &put, &get, &key).await });
                i += 1;
            }
            Some(r) = running.next() => note(&load, r),
            _ = stop.changed() => break,
        }
    }
    while let Some(r) = running.next().await {
        note(&load, r);
    }
}

/// Put `key` through the agent at `put`, then read it through `get`.
pub async fn round(http: &reqwest::Client, put: &str, get: &str, key: &str) -> Result<(), String> {
    let r = http
        .put(format!("{put}/v1/records/{key}"))
        .body(key.to_owned())
        .send()
        .await;
    let stored = match r {
        Ok(r) if r.status().is_success() => r.text().await.unwrap_or_default(),
        r => return Err(format!("put {key} through {put}: {r:?}")),
    };
    let r = http.get(format!("{get}/v1/records/{key}")).send().await;
    match r {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!(
            "get {key} through {get}: {} {} (the put through {put} answered {stored})",
            r.status(),
            r.text().await.unwrap_or_default()
        )),
        Err(e) => Err(format!("get {key} through {get}: {e}")),
    }
}

fn note(load: &Load, r: Result<(), String>) {
    match r {
        Ok(()) => load.ok.fetch_add(2, Ordering::Relaxed),
        Err(why) => {
            *load.last_failure.lock().expect("failure") = why;
            load.failed.fetch_add(1, Ordering::Relaxed)
        }
    };
}

/// One agent's metric (the sum over matching lines), if it answers.
pub async fn metric(http: &reqwest::Client, url: &str, name: &str, label: &str) -> Option<f64> {
    let body = http.get(url).send().await.ok()?.text().await.ok()?;
    Some(
        body.lines()
            .filter(|l| l.starts_with(name) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

/// Whether every agent at `urls` has every known peer Connected on some
/// transport (its partition risk 0), a libp2p connection to each of the
/// others, and its DHT routing check Healthy.
pub async fn connected(urls: Vec<String>, http: reqwest::Client) -> Option<()> {
    connected_on(urls, http, "libp2p").await
}

/// [`connected`], with connections on `transport`.
pub async fn connected_on(urls: Vec<String>, http: reqwest::Client, transport: &str) -> Option<()> {
    let others = (urls.len() - 1) as f64;
    let on = format!("transport=\"{transport}\"");
    for u in &urls {
        let peers = metric(&http, u, "switchyard_node_peers", &on).await?;
        let risk = metric(&http, u, "switchyard_agent_partition_risk", "").await?;
        let health = metric(&http, u, "switchyard_dht_routing_health", "").await?;
        if peers < others || risk > 0.0 || health < 2.0 {
            return None;
        }
    }
    Some(())
}
