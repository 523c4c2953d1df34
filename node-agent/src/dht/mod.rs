//! A Kademlia DHT over the dual-stack bridge.
//!
//! - [`key`]: 256-bit keys from the node's identity, XOR distance.
//! - [`table`]: k-buckets (k = 20), fed from the agent's one peer view.
//! - [`store`]: the records a node holds, bounded, with expiry.
//! - [`proto`]: PING, FIND_NODE, FIND_VALUE and STORE, versioned, carried
//!   as bridge requests on `/switchyard/kad/1`: each goes over whichever
//!   transport the two nodes' modes allow, so a lookup keeps working
//!   through every mode switch.
//! - [`lookup`]: the iterative lookup (α = 3) as a pure state machine.
//! - [`Dht`]: the node's DHT: answering peers, lookups, put and get,
//!   republishing, bucket refresh, and the routing health check of seed
//!   001 (the 20 closest to a random key; Healthy at 10 or more).

pub mod key;
pub mod lookup;
pub mod maintain;
pub mod proto;
pub mod store;
pub mod table;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use libp2p::PeerId;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::Semaphore;

use crate::bridge::{Node, PeerAddr};
use crate::stack::Transport;
use key::Key;
use lookup::Lookup;
use proto::{Contact, Request, Response};
use store::{RecordStore, StoreError};
use table::RoutingTable;

/// DHT settings.
#[derive(Debug, Clone)]
pub struct DhtConfig {
    /// Bucket size and replication factor; defaults to 20.
    pub k: usize,
    /// Requests in flight per lookup; defaults to 3.
    pub alpha: usize,
    /// Largest record value, in bytes; defaults to 64 KiB.
    pub max_record_size: usize,
    /// Most records a node holds; defaults to 20,000.
    pub max_records: usize,
    /// How long a record lives after its last store; defaults to 36 h.
    pub record_ttl: Duration,
    /// How often a node stores again the records it put (refreshing their
    /// lifetime) and those it holds (to the current k closest); defaults
    /// to 1 h.
    pub republish_interval: Duration,
    /// How often each filled bucket is refreshed with a lookup of a random
    /// key in it; defaults to 10 min.
    pub refresh_interval: Duration,
    /// How often routing health is checked; defaults to 30 s.
    pub check_interval: Duration,
    /// Closest peers found for routing to count as Healthy; defaults to
    /// 10 (seed 001), or every peer known when fewer are.
    pub healthy_at: usize,
    /// Lookups in flight at once; past it, callers wait; defaults to 32.
    pub max_lookups: usize,
    /// How long a lookup, a put or a get may take; defaults to 10 s.
    pub lookup_timeout: Duration,
    /// How long one DHT request may take before its peer counts as
    /// failed for this operation (a lookup goes on with the others);
    /// defaults to 2 s.
    pub request_timeout: Duration,
}

impl Default for DhtConfig {
    fn default() -> Self {
        DhtConfig {
            k: table::K,
            alpha: 3,
            max_record_size: 64 * 1024,
            max_records: 20_000,
            record_ttl: Duration::from_secs(36 * 3600),
            republish_interval: Duration::from_secs(3600),
            refresh_interval: Duration::from_secs(600),
            check_interval: Duration::from_secs(30),
            healthy_at: 10,
            max_lookups: 32,
            lookup_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(2),
        }
    }
}

/// Why a DHT operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DhtError {
    /// The routing table is empty.
    #[error("no peers known yet: the routing table is empty")]
    NoPeers,
    /// The record breaks a limit.
    #[error(transparent)]
    Record(#[from] StoreError),
    /// No peer took the record.
    #[error("no peer stored the record: {0}")]
    NotStored(String),
    /// Too many lookups in flight for too long.
    #[error("the DHT is busy: {0} lookups in flight")]
    Busy(usize),
    /// Took longer than the lookup timeout.
    #[error("the lookup took longer than {0:?}")]
    Timeout(Duration),
}

/// Routing health (seed 001's KademliaRoutingCheck).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum RoutingHealth {
    /// Enough of the closest peers were found.
    Healthy,
    /// Some were found, or none are known yet.
    Degraded,
    /// The check's lookup failed.
    Failed,
}

impl RoutingHealth {
    /// The gauge value: 2, 1, 0.
    pub fn value(self) -> i64 {
        match self {
            RoutingHealth::Healthy => 2,
            RoutingHealth::Degraded => 1,
            RoutingHealth::Failed => 0,
        }
    }

    /// Seed 001's rule: Healthy at `healthy_at` found (or all `known`
    /// peers, when fewer are known), Degraded below, Failed on error.
    pub fn judge(found: Result<usize, &DhtError>, known: usize, healthy_at: usize) -> Self {
        match found {
            Err(DhtError::NoPeers) => RoutingHealth::Degraded,
            Err(_) => RoutingHealth::Failed,
            Ok(n) if n > 0 && n >= healthy_at.min(known) => RoutingHealth::Healthy,
            Ok(_) => RoutingHealth::Degraded,
        }
    }
}

/// The DHT's metrics.
#[derive(Clone)]
pub struct DhtMetrics {
    lookups: IntCounterVec,
    duration: Histogram,
    table_peers: IntGauge,
    health: IntGauge,
    records: IntGauge,
    malformed: IntCounter,
    served: IntCounterVec,
}

impl DhtMetrics {
    fn new(r: &Registry) -> Self {
        let lookups = IntCounterVec::new(
            Opts::new(
                "switchyard_dht_lookups_total",
                "DHT operations, by kind (closest, get, put, check, refresh), outcome (ok, not_found, error) and the transports that answered (libp2p, iroh, both, none)",
            ),
            &["kind", "outcome", "transport"],
        )
        .expect("valid metric");
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "switchyard_dht_lookup_duration_seconds",
                "Duration of DHT operations",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
            ]),
        )
        .expect("valid metric");
        let table_peers = IntGauge::new(
            "switchyard_dht_routing_table_peers",
            "Peers in the DHT routing table",
        )
        .expect("valid metric");
        let health = IntGauge::new(
            "switchyard_dht_routing_health",
            "Routing health: 2 Healthy, 1 Degraded, 0 Failed",
        )
        .expect("valid metric");
        let records = IntGauge::new("switchyard_dht_records", "Records this node holds")
            .expect("valid metric");
        let malformed = IntCounter::new(
            "switchyard_dht_malformed_messages_total",
            "DHT messages from peers that did not decode or broke a limit, refused",
        )
        .expect("valid metric");
        let served = IntCounterVec::new(
            Opts::new(
                "switchyard_dht_requests_served_total",
                "DHT requests answered for peers, by message",
            ),
            &["message"],
        )
        .expect("valid metric");
        for c in [
            Box::new(lookups.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(table_peers.clone()),
            Box::new(health.clone()),
            Box::new(records.clone()),
            Box::new(malformed.clone()),
            Box::new(served.clone()),
        ] {
            let _ = r.register(c);
        }
        DhtMetrics {
            lookups,
            duration,
            table_peers,
            health,
            records,
            malformed,
            served,
        }
    }
}

/// A record this node put, kept to republish.
struct Published {
    value: Bytes,
    next: Instant,
}

struct State {
    table: RoutingTable<PeerAddr>,
    store: RecordStore,
    published: HashMap<Bytes, Published>,
    /// Contacts learned in lookups, for the peer view (bounded).
    learned: VecDeque<PeerAddr>,
    /// Every peer the peer view reaches now (a full bucket keeps only k
    /// of them).
    live: HashMap<PeerId, PeerAddr>,
    /// Peers that sent a malformed DHT message, kept out of the routing
    /// table (and so out of every lookup) until the instant given.
    shunned: HashMap<PeerId, Instant>,
}

impl State {
    /// The routing table follows the peer view: `live` peers in (but not
    /// one shunned at `now`), every other peer out.
    fn sync(&mut self, live: HashMap<PeerId, PeerAddr>, now: Instant) {
        let gone: Vec<PeerId> = self
            .live
            .keys()
            .filter(|p| !live.contains_key(p))
            .copied()
            .collect();
        for p in gone {
            self.table.remove(&p);
        }
        for a in live.values() {
            if !self.is_shunned(&a.peer, now) {
                self.table.insert(a.peer, a.clone());
            }
        }
        self.live = live;
    }

    /// Whether `peer` sent garbage less than [`SHUN_FOR`] before `now`.
    fn is_shunned(&self, peer: &PeerId, now: Instant) -> bool {
        self.shunned.get(peer).is_some_and(|until| *until > now)
    }

    /// `peer` sent a malformed message: out of the routing table for
    /// [`SHUN_FOR`], like a peer sending garbage frames loses its
    /// connection. Its requests are still answered; it is only never
    /// asked. Bounded: expired entries go first, and past
    /// [`MAX_SHUNNED`] a newcomer is not remembered.
    fn shun(&mut self, peer: PeerId, now: Instant) {
        self.table.remove(&peer);
        if self.shunned.len() >= MAX_SHUNNED {
            self.shunned.retain(|_, until| *until > now);
        }
        if self.shunned.len() < MAX_SHUNNED || self.shunned.contains_key(&peer) {
            self.shunned.insert(peer, now + SHUN_FOR);
        }
    }
}

/// How long a peer that sent a malformed DHT message stays out of the
/// routing table.
pub const SHUN_FOR: Duration = Duration::from_secs(600);

/// Peers remembered as shunned, at most.
const MAX_SHUNNED: usize = 1024;

/// Contacts waiting to be handed to the peer view, at most.
const MAX_LEARNED: usize = 256;

/// What a lookup found.
enum Found {
    Peers(Vec<PeerAddr>),
    Value(Bytes),
}

/// The node's DHT.
pub struct Dht {
    node: Arc<Node>,
    local: PeerId,
    config: DhtConfig,
    state: Mutex<State>,
    lookups: Semaphore,
    metrics: DhtMetrics,
    health: Mutex<RoutingHealth>,
    /// Operations that succeeded (found or not) and failed, for the
    /// agent's health score.
    ops: (AtomicU64, AtomicU64),
}

impl Dht {
    /// The DHT of `node`, its metrics in the node's registry.
    pub fn new(node: Arc<Node>, config: DhtConfig) -> Arc<Self> {
        let local = node.identity().peer_id();
        let metrics = DhtMetrics::new(node.metrics().registry());
        metrics.health.set(RoutingHealth::Degraded.value());
        Arc::new(Dht {
            local,
            state: Mutex::new(State {
                table: RoutingTable::new(Key::for_peer(&local), config.k),
                store: RecordStore::new(config.max_records, config.max_record_size),
                published: HashMap::new(),
                learned: VecDeque::new(),
                live: HashMap::new(),
                shunned: HashMap::new(),
            }),
            lookups: Semaphore::new(config.max_lookups.max(1)),
            config,
            node,
            metrics,
            health: Mutex::new(RoutingHealth::Degraded),
            ops: (AtomicU64::new(0), AtomicU64::new(0)),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("dht state lock")
    }

    /// The settings.
    pub fn config(&self) -> &DhtConfig {
        &self.config
    }

    /// The last routing health check's verdict.
    pub fn health(&self) -> RoutingHealth {
        *self.health.lock().expect("health lock")
    }

    /// Operations (lookups, puts, gets) that succeeded, and that failed.
    pub fn operations(&self) -> (u64, u64) {
        (
            self.ops.0.load(Ordering::Relaxed),
            self.ops.1.load(Ordering::Relaxed),
        )
    }

    /// Peers in the routing table.
    pub fn table_len(&self) -> usize {
        self.state().table.len()
    }

    /// Records held.
    pub fn records(&self) -> usize {
        self.state().store.len()
    }

    /// Make the routing table match the peer view: `live` peers in,
    /// every other peer out.
    pub fn sync(&self, live: impl IntoIterator<Item = PeerAddr>) {
        self.sync_at(live, Instant::now());
    }

    /// [`Self::sync`] at `now`: a live peer that sent garbage in the last
    /// [`SHUN_FOR`] stays out of the table.
    pub fn sync_at(&self, live: impl IntoIterator<Item = PeerAddr>, now: Instant) {
        let mut s = self.state();
        s.sync(live.into_iter().map(|a| (a.peer, a)).collect(), now);
        self.metrics.table_peers.set(s.table.len() as i64);
    }

    /// Where to reach `peer`, if the peer view reaches it now.
    pub fn peer(&self, peer: &PeerId) -> Option<PeerAddr> {
        self.state().live.get(peer).cloned()
    }

    /// Every peer the peer view reaches now.
    pub fn peers(&self) -> Vec<PeerAddr> {
        let mut out: Vec<PeerAddr> = self.state().live.values().cloned().collect();
        out.sort_by_key(|a| a.peer.to_bytes());
        out
    }

    /// Contacts learned in lookups since the last call, for the peer view.
    pub fn take_learned(&self) -> Vec<PeerAddr> {
        self.state().learned.drain(..).collect()
    }

    /// Answer a peer's DHT request: the encoded response, or the reason
    /// it was refused (a malformed message is also counted).
    pub fn handle(&self, from: PeerId, body: &[u8], now: Instant) -> Result<Vec<u8>, String> {
        let request: Request = match proto::decode(body) {
            Ok(r) => r,
            Err(why) => {
                self.metrics.malformed.inc();
                if !proto::other_version(body) {
                    self.state().shun(from, now);
                }
                tracing::debug!(peer = %from, %why, "DHT message refused");
                return Err(why);
            }
        };
        let k = self.config.k;
        let contacts = |s: &State, target: &Key| -> Vec<Contact> {
            s.table
                .closest(target, k + 1)
                .into_iter()
                .filter(|e| e.peer != from)
                .take(k)
                .map(|e| Contact::of(&e.value))
                .collect()
        };
        let (message, response) = match request {
            Request::Ping => ("ping", Response::Pong),
            Request::FindNode { target } => (
                "find_node",
                Response::Nodes {
                    closer: contacts(&self.state(), &target),
                },
            ),
            Request::FindValue { key } => {
                let s = self.state();
                let response = match s.store.get(&key, now) {
                    Some((value, left)) => Response::Value {
                        value: value.to_vec(),
                        ttl_secs: left.as_secs().clamp(1, u64::from(u32::MAX)) as u32,
                    },
                    None => Response::Nodes {
                        closer: contacts(&s, &Key::for_record(&key)),
                    },
                };
                ("find_value", response)
            }
            Request::Store {
                key,
                value,
                ttl_secs,
            } => {
                let ttl = Duration::from_secs(u64::from(ttl_secs)).min(self.config.record_ttl);
                let mut s = self.state();
                if let Err(e) = s.store.put(Bytes::from(key), Bytes::from(value), ttl, now) {
                    if !matches!(e, StoreError::Full { .. }) {
                        // Over a limit: as malformed as garbage.
                        self.metrics.malformed.inc();
                        s.shun(from, now);
                    }
                    return Err(e.to_string());
                }
                self.metrics.records.set(s.store.len() as i64);
                ("store", Response::Stored)
            }
        };
        self.metrics.served.with_label_values(&[message]).inc();
        Ok(proto::encode(&response))
    }

    /// One request to `addr` and its decoded answer, with the transport
    /// that carried it.
    async fn ask(
        &self,
        addr: &PeerAddr,
        request: &Request,
    ) -> Result<(Response, Transport), String> {
        let timeout = self.config.request_timeout;
        let body = proto::encode(request);
        let sent = crate::app::request(&self.node, addr, proto::PROTOCOL, &body);
        let (body, t) = tokio::time::timeout(timeout, sent)
            .await
            .map_err(|_| format!("no answer from {} within {timeout:?}", addr.peer))?
            .map_err(|e| e.to_string())?;
        let response = proto::decode(&body).inspect_err(|_| {
            self.metrics.malformed.inc();
            if !proto::other_version(&body) {
                self.state().shun(addr.peer, Instant::now());
            }
        })?;
        Ok((response, t))
    }

    /// An iterative lookup of `target`: FIND_VALUE for `value_key`, else
    /// FIND_NODE.
    async fn iterate(
        &self,
        target: Key,
        value_key: Option<&[u8]>,
        used: &Used,
    ) -> Result<Found, DhtError> {
        let seeds: Vec<(PeerId, PeerAddr)> = self
            .state()
            .table
            .closest(&target, self.config.k)
            .into_iter()
            .map(|e| (e.peer, e.value.clone()))
            .collect();
        if seeds.is_empty() {
            return Err(DhtError::NoPeers);
        }
        let mut addrs: HashMap<PeerId, PeerAddr> = seeds.iter().cloned().collect();
        let mut lookup = Lookup::new(
            target,
            self.config.k,
            self.config.alpha,
            seeds.iter().map(|s| s.0),
        );
        let request = match value_key {
            Some(key) => Request::FindValue { key: key.to_vec() },
            None => Request::FindNode { target },
        };
        let mut pending = FuturesUnordered::new();
        loop {
            for p in lookup.to_ask() {
                let Some(addr) = addrs.get(&p).cloned() else {
                    lookup.on_failure(&p);
                    continue;
                };
                let request = &request;
                pending.push(async move { (p, self.ask(&addr, request).await) });
            }
            let Some((peer, answer)) = pending.next().await else {
                break;
            };
            match answer {
                Ok((Response::Nodes { closer }, t)) => {
                    used.note(t);
                    let found = self.learn(&closer, &mut addrs);
                    lookup.on_answer(&peer, found);
                }
                Ok((Response::Value { value, .. }, t)) if value_key.is_some() => {
                    used.note(t);
                    return Ok(Found::Value(Bytes::from(value)));
                }
                Ok((other, _)) => {
                    tracing::debug!(%peer, ?other, "unexpected DHT answer");
                    lookup.on_failure(&peer);
                }
                Err(why) => {
                    tracing::debug!(%peer, %why, "DHT request failed");
                    lookup.on_failure(&peer);
                }
            }
        }
        Ok(Found::Peers(
            lookup
                .result()
                .into_iter()
                .filter_map(|p| addrs.get(&p).cloned())
                .collect(),
        ))
    }

    /// The usable contacts of a reply, remembered; their ids.
    fn learn(&self, closer: &[Contact], addrs: &mut HashMap<PeerId, PeerAddr>) -> Vec<PeerId> {
        let mut ids = Vec::with_capacity(closer.len());
        let mut s = self.state();
        let now = Instant::now();
        for c in closer.iter().take(self.config.k) {
            let Ok(a) = c.to_addr() else {
                self.metrics.malformed.inc();
                continue;
            };
            if a.peer == self.local || s.is_shunned(&a.peer, now) {
                continue;
            }
            ids.push(a.peer);
            if let std::collections::hash_map::Entry::Vacant(slot) = addrs.entry(a.peer) {
                if !s.live.contains_key(&a.peer) && s.learned.len() < MAX_LEARNED {
                    s.learned.push_back(a.clone());
                }
                slot.insert(a);
            }
        }
        ids
    }

    /// Run `op` (of `kind`) with a lookup permit and the lookup timeout,
    /// counted and timed.
    async fn counted<T>(
        &self,
        kind: &str,
        op: impl std::future::Future<Output = Result<(T, bool), DhtError>>,
        used: &Used,
    ) -> Result<T, DhtError> {
        let started = Instant::now();
        let timeout = self.config.lookup_timeout;
        let result = tokio::time::timeout(timeout, async {
            let _permit = self.lookups.acquire().await.map_err(|_| {
                DhtError::Busy(self.config.max_lookups - self.lookups.available_permits())
            })?;
            op.await
        })
        .await
        .unwrap_or(Err(DhtError::Timeout(timeout)));
        let outcome = match &result {
            Ok((_, true)) => "ok",
            Ok((_, false)) => "not_found",
            Err(_) => "error",
        };
        match result {
            Ok(_) => &self.ops.0,
            Err(_) => &self.ops.1,
        }
        .fetch_add(1, Ordering::Relaxed);
        self.metrics
            .lookups
            .with_label_values(&[kind, outcome, used.label()])
            .inc();
        self.metrics
            .duration
            .observe(started.elapsed().as_secs_f64());
        result.map(|(t, _)| t)
    }

    /// The closest peers to `key` (a record key), closest first.
    pub async fn closest(&self, key: &[u8]) -> Result<Vec<PeerAddr>, DhtError> {
        let used = Used::default();
        self.closest_to(Key::for_record(key), "closest", &used)
            .await
    }

    async fn closest_to(
        &self,
        target: Key,
        kind: &str,
        used: &Used,
    ) -> Result<Vec<PeerAddr>, DhtError> {
        let op = async {
            let u = used.clone();
            let found = self.iterate(target, None, &u).await;
            match found? {
                Found::Peers(p) => {
                    let any = !p.is_empty();
                    Ok((p, any))
                }
                Found::Value(_) => Ok((Vec::new(), false)),
            }
        };
        self.counted(kind, op, used).await
    }

    /// Put `value` under `key` on the k closest peers (and here, if this
    /// node is among them); how many stored it. The record is republished
    /// by this node until it is put again or the node stops.
    pub async fn put(&self, key: Bytes, value: Bytes) -> Result<usize, DhtError> {
        self.state().store.check(&key, value.len())?;
        {
            let mut s = self.state();
            if s.published.len() < self.config.max_records || s.published.contains_key(&key) {
                s.published.insert(
                    key.clone(),
                    Published {
                        value: value.clone(),
                        next: Instant::now() + self.config.republish_interval,
                    },
                );
            }
        }
        self.store_at_closest("put", key, value, self.config.record_ttl)
            .await
    }

    async fn store_at_closest(
        &self,
        kind: &str,
        key: Bytes,
        value: Bytes,
        ttl: Duration,
    ) -> Result<usize, DhtError> {
        let used = Used::default();
        let op = async {
            let u = used.clone();
            let target = Key::for_record(&key);
            let found = self.iterate(target, None, &u).await;
            let peers = match found {
                Ok(Found::Peers(p)) => p,
                Ok(Found::Value(_)) => Vec::new(),
                Err(DhtError::NoPeers) => Vec::new(),
                Err(e) => return Err(e),
            };
            let request = Request::Store {
                key: key.to_vec(),
                value: value.to_vec(),
                ttl_secs: ttl.as_secs().clamp(1, u64::from(u32::MAX)) as u32,
            };
            let mut stores: FuturesUnordered<_> =
                peers.iter().map(|p| self.ask(p, &request)).collect();
            let mut stored = 0;
            let mut last = String::from("no peers known");
            while let Some(r) = stores.next().await {
                match r {
                    Ok((Response::Stored, t)) => {
                        u.note(t);
                        stored += 1;
                    }
                    Ok((other, _)) => last = format!("unexpected answer {other:?}"),
                    Err(why) => last = why,
                }
            }
            // Here too, when this node is among the k closest.
            let me = Key::for_peer(&self.local).distance(&target);
            let among = peers.len() < self.config.k
                || peers
                    .last()
                    .is_some_and(|p| me < Key::for_peer(&p.peer).distance(&target));
            if among {
                let mut s = self.state();
                if s.store
                    .put(key.clone(), value.clone(), ttl, Instant::now())
                    .is_ok()
                {
                    stored += 1;
                }
                self.metrics.records.set(s.store.len() as i64);
            }
            if stored == 0 {
                return Err(DhtError::NotStored(last));
            }
            Ok((stored, true))
        };
        self.counted(kind, op, &used).await
    }

    /// The value under `key`: held here, or found on the way to its
    /// closest peers.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Bytes>, DhtError> {
        if let Some((value, _)) = self.state().store.get(key, Instant::now()) {
            self.metrics
                .lookups
                .with_label_values(&["get", "ok", "none"])
                .inc();
            self.ops.0.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(value));
        }
        let used = Used::default();
        let op = async {
            let u = used.clone();
            let found = self.iterate(Key::for_record(key), Some(key), &u).await;
            match found {
                Ok(Found::Value(v)) => Ok((Some(v), true)),
                Ok(Found::Peers(_)) | Err(DhtError::NoPeers) => Ok((None, false)),
                Err(e) => Err(e),
            }
        };
        self.counted("get", op, &used).await
    }

    /// Seed 001's routing check: the closest peers to a random key; the
    /// verdict is kept, exported, and returned.
    pub async fn check(&self) -> RoutingHealth {
        let known = self.table_len();
        let used = Used::default();
        let found = self.closest_to(Key::random(), "check", &used).await;
        let verdict =
            RoutingHealth::judge(found.as_ref().map(Vec::len), known, self.config.healthy_at);
        if let Err(e) = &found {
            tracing::debug!(error = %e, "routing check");
        }
        *self.health.lock().expect("health lock") = verdict;
        self.metrics.health.set(verdict.value());
        verdict
    }

    /// Refresh every filled bucket with a lookup of a random key in it.
    pub async fn refresh(&self) {
        let (local, filled) = {
            let s = self.state();
            (*s.table.local(), s.table.filled_buckets())
        };
        for i in filled {
            let used = Used::default();
            let _ = self
                .closest_to(local.random_in_bucket(i), "refresh", &used)
                .await;
        }
    }

    /// Store again what is due: records this node put, with their full
    /// lifetime; every other record held, with what it has left, to the
    /// current closest peers. Expired records are dropped first.
    pub async fn republish(&self, now: Instant) {
        let (mine, held) = {
            let mut s = self.state();
            s.store.expire(now);
            self.metrics.records.set(s.store.len() as i64);
            let interval = self.config.republish_interval;
            let mut mine = Vec::new();
            for (k, p) in s.published.iter_mut() {
                if p.next <= now {
                    p.next = now + interval;
                    mine.push((k.clone(), p.value.clone()));
                }
            }
            let mine_keys: HashSet<Bytes> = s.published.keys().cloned().collect();
            let held: Vec<_> = s
                .store
                .live(now)
                .into_iter()
                .filter(|(k, _, _)| !mine_keys.contains(k))
                .collect();
            (mine, held)
        };
        for (k, v) in mine {
            let _ = self
                .store_at_closest("republish", k, v, self.config.record_ttl)
                .await;
        }
        for (k, v, left) in held {
            let _ = self.store_at_closest("republish", k, v, left).await;
        }
    }
}

/// The transports that answered an operation's requests (clones share
/// the record).
#[derive(Debug, Clone, Default)]
struct Used(Arc<Mutex<(bool, bool)>>);

impl Used {
    fn note(&self, t: Transport) {
        let mut u = self.0.lock().expect("used lock");
        match t {
            Transport::LibP2p => u.0 = true,
            Transport::Iroh => u.1 = true,
        }
    }

    fn label(&self) -> &'static str {
        match *self.0.lock().expect("used lock") {
            (true, true) => "both",
            (true, false) => "libp2p",
            (false, true) => "iroh",
            (false, false) => "none",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(k: usize) -> State {
        State {
            table: RoutingTable::new(Key::for_peer(&PeerId::random()), k),
            store: RecordStore::new(10, 1024),
            published: HashMap::new(),
            learned: VecDeque::new(),
            live: HashMap::new(),
            shunned: HashMap::new(),
        }
    }

    fn view(peers: &[PeerId]) -> HashMap<PeerId, PeerAddr> {
        peers
            .iter()
            .map(|p| {
                let a = PeerAddr {
                    peer: *p,
                    libp2p: Vec::new(),
                    iroh: None,
                };
                (*p, a)
            })
            .collect()
    }

    #[test]
    fn a_peer_that_sent_garbage_stays_out_of_the_table_for_a_while() {
        let t0 = Instant::now();
        let peers: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        let mut s = state(20);
        s.sync(view(&peers), t0);
        assert_eq!(s.table.len(), 3);
        s.shun(peers[0], t0);
        assert_eq!(s.table.len(), 2, "out at once");
        // The peer view still reaches it; the table does not take it back.
        s.sync(view(&peers), t0 + Duration::from_secs(1));
        assert_eq!(s.table.len(), 2);
        assert!(s.is_shunned(&peers[0], t0 + SHUN_FOR - Duration::from_secs(1)));
        s.sync(view(&peers), t0 + SHUN_FOR + Duration::from_secs(1));
        assert_eq!(s.table.len(), 3, "back once its time is served");
        assert!(!s.is_shunned(&peers[1], t0));
    }

    #[test]
    fn the_shunned_list_is_bounded_and_expired_entries_go_first() {
        let t0 = Instant::now();
        let mut s = state(20);
        for _ in 0..MAX_SHUNNED + 10 {
            s.shun(PeerId::random(), t0);
        }
        assert_eq!(s.shunned.len(), MAX_SHUNNED);
        let late = PeerId::random();
        s.shun(late, t0 + SHUN_FOR + Duration::from_secs(1));
        assert!(
            s.is_shunned(&late, t0 + SHUN_FOR + Duration::from_secs(2)),
            "room made by dropping the expired"
        );
        assert_eq!(s.shunned.len(), 1);
    }

    #[test]
    fn routing_health_follows_seed_001() {
        let judge = RoutingHealth::judge;
        assert_eq!(judge(Ok(20), 50, 10), RoutingHealth::Healthy);
        assert_eq!(judge(Ok(10), 50, 10), RoutingHealth::Healthy);
        assert_eq!(judge(Ok(9), 50, 10), RoutingHealth::Degraded);
        // A fleet smaller than the bar: finding every peer known is
        // Healthy.
        assert_eq!(judge(Ok(4), 4, 10), RoutingHealth::Healthy);
        assert_eq!(judge(Ok(0), 0, 10), RoutingHealth::Degraded);
        assert_eq!(
            judge(Err(&DhtError::NoPeers), 0, 10),
            RoutingHealth::Degraded
        );
        assert_eq!(
            judge(Err(&DhtError::Timeout(Duration::from_secs(1))), 30, 10),
            RoutingHealth::Failed
        );
    }
}
