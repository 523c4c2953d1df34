//! The DHT's upkeep, as three small loops: the routing table follows the
//! peer view every second (and contacts learned in lookups go to the
//! view); routing health is checked every `check_interval`; buckets are
//! refreshed and records republished on their intervals.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::manager::{PeerManager, PeerState, PeerStatus};
use crate::stack::Transport;

use super::Dht;

/// The peers with a live path.
pub fn live(peers: &[PeerStatus]) -> impl Iterator<Item = crate::bridge::PeerAddr> + '_ {
    peers
        .iter()
        .filter(|p| {
            Transport::ALL
                .iter()
                .any(|t| p.state(*t) == Some(PeerState::Connected))
        })
        .map(|p| p.addr.clone())
}

/// Keep `dht`'s table in step with `manager`'s peers, every second.
pub async fn follow(dht: Arc<Dht>, manager: Arc<PeerManager>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let peers = manager.status().await;
        dht.sync(live(&peers));
        for a in dht.take_learned() {
            manager.add_peer(a).await;
        }
    }
}

/// Check routing health every `check_interval` (the first soon after the
/// table fills).
pub async fn check(dht: Arc<Dht>) {
    let every = dht.config().check_interval;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first check waits for peers, up to one interval.
    let started = Instant::now();
    while dht.table_len() == 0 && started.elapsed() < every {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    loop {
        tick.tick().await;
        dht.check().await;
    }
}

/// Refresh buckets and republish records on their intervals.
pub async fn upkeep(dht: Arc<Dht>) {
    let refresh_every = dht.config().refresh_interval;
    let republish_every = dht.config().republish_interval;
    let mut refresh =
        tokio::time::interval_at(tokio::time::Instant::now() + refresh_every, refresh_every);
    let mut republish = tokio::time::interval_at(
        tokio::time::Instant::now() + republish_every,
        republish_every,
    );
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    republish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = refresh.tick() => dht.refresh().await,
            _ = republish.tick() => dht.republish(Instant::now()).await,
        }
    }
}
