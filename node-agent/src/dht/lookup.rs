//! An iterative lookup as a pure state machine: which peers to ask next,
//! what their answers teach, and when it is done. The DHT's driver sends
//! the requests; this decides.
//!
//! At most `alpha` requests are in flight. A lookup is done when the `k`
//! closest peers that have not failed have all answered, or when nobody
//! is left to ask. The candidates are bounded: past `4 k` the farthest
//! not yet asked are dropped.

use std::collections::BTreeMap;

use libp2p::PeerId;

use super::key::{Distance, Key};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    No,
    Waiting,
    Answered,
    Failed,
}

/// One lookup's progress.
#[derive(Debug)]
pub struct Lookup {
    target: Key,
    k: usize,
    alpha: usize,
    candidates: BTreeMap<Distance, (PeerId, Asked)>,
    in_flight: usize,
    /// Requests sent, for the metrics.
    pub sent: usize,
}

impl Lookup {
    /// A lookup of `target` starting from `seeds` (the local table's
    /// closest).
    pub fn new(
        target: Key,
        k: usize,
        alpha: usize,
        seeds: impl IntoIterator<Item = PeerId>,
    ) -> Self {
        let mut l = Lookup {
            target,
            k: k.max(1),
            alpha: alpha.max(1),
            candidates: BTreeMap::new(),
            in_flight: 0,
            sent: 0,
        };
        l.learn(seeds);
        l
    }

    fn learn(&mut self, peers: impl IntoIterator<Item = PeerId>) {
        for p in peers {
            let d = Key::for_peer(&p).distance(&self.target);
            self.candidates.entry(d).or_insert((p, Asked::No));
        }
        let cap = self.k * 4;
        while self.candidates.len() > cap {
            // The farthest not yet asked goes; those asked stay to be
            // accounted for.
            let Some(d) = self
                .candidates
                .iter()
                .rev()
                .find(|(_, (_, a))| *a == Asked::No)
                .map(|(d, _)| *d)
            else {
                break;
            };
            self.candidates.remove(&d);
        }
    }

    /// The k closest candidates that have not failed.
    fn closest_live(&self) -> impl Iterator<Item = (&Distance, &(PeerId, Asked))> {
        self.candidates
            .iter()
            .filter(|(_, (_, a))| *a != Asked::Failed)
            .take(self.k)
    }

    /// The peers to ask now (marked as asked); empty when the lookup
    /// must wait for answers or is done.
    pub fn to_ask(&mut self) -> Vec<PeerId> {
        let room = self.alpha.saturating_sub(self.in_flight);
        let pick: Vec<Distance> = self
            .closest_live()
            .filter(|(_, (_, a))| *a == Asked::No)
            .take(room)
            .map(|(d, _)| *d)
            .collect();
        let mut out = Vec::with_capacity(pick.len());
        for d in pick {
            if let Some((p, a)) = self.candidates.get_mut(&d) {
                *a = Asked::Waiting;
                out.push(*p);
            }
        }
        self.in_flight += out.len();
        self.sent += out.len();
        out
    }

    fn mark(&mut self, peer: &PeerId, to: Asked) {
        let d = Key::for_peer(peer).distance(&self.target);
        if let Some((_, a)) = self.candidates.get_mut(&d)
            && *a == Asked::Waiting
        {
            *a = to;
            self.in_flight -= 1;
        }
    }

    /// `peer` answered with `closer` peers.
    pub fn on_answer(&mut self, peer: &PeerId, closer: impl IntoIterator<Item = PeerId>) {
        self.mark(peer, Asked::Answered);
        self.learn(closer);
    }

    /// `peer` did not answer.
    pub fn on_failure(&mut self, peer: &PeerId) {
        self.mark(peer, Asked::Failed);
    }

    /// Whether nothing more will be asked.
    pub fn done(&self) -> bool {
        self.in_flight == 0 && self.closest_live().all(|(_, (_, a))| *a == Asked::Answered)
    }

    /// The closest peers that answered, closest first, at most k.
    pub fn result(&self) -> Vec<PeerId> {
        self.candidates
            .values()
            .filter(|(_, a)| *a == Asked::Answered)
            .map(|(p, _)| *p)
            .take(self.k)
            .collect()
    }

    /// Peers asked that have not answered yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A network where every peer knows every other: each answers with
    /// the `k` closest to the target it knows.
    fn run(target: Key, all: &[PeerId], seeds: &[PeerId], dead: &[PeerId], k: usize) -> Lookup {
        let mut l = Lookup::new(target, k, 3, seeds.iter().copied());
        for _ in 0..10_000 {
            let asked = l.to_ask();
            assert!(l.in_flight() <= 3, "never more than alpha in flight");
            if asked.is_empty() && l.done() {
                return l;
            }
            for p in asked {
                if dead.contains(&p) {
                    l.on_failure(&p);
                } else {
                    // The k closest live peers, and a few dead ones a
                    // stale table still holds.
                    let mut known: Vec<PeerId> =
                        all.iter().filter(|q| !dead.contains(q)).copied().collect();
                    known.sort_by_key(|q| Key::for_peer(q).distance(&target));
                    known.truncate(k);
                    known.extend(dead.iter().take(5));
                    l.on_answer(&p, known);
                }
            }
        }
        panic!("the lookup never finished");
    }

    #[test]
    fn a_lookup_finds_the_true_closest_around_dead_peers() {
        let all: Vec<PeerId> = (0..100).map(|_| PeerId::random()).collect();
        let dead: Vec<PeerId> = all[..30].to_vec();
        let target = Key::random();
        let l = run(target, &all, &all[50..53], &dead, 20);
        let mut want: Vec<PeerId> = all[30..].to_vec();
        want.sort_by_key(|q| Key::for_peer(q).distance(&target));
        want.truncate(20);
        assert_eq!(l.result(), want);
        assert!(l.sent <= 100, "{} requests", l.sent);
        // Seeded with dead peers only among live ones: still found.
        let l = run(target, &all, &all[..5], &dead, 20);
        assert!(l.result().is_empty(), "dead seeds teach nothing");
        let seeds: Vec<PeerId> = all[..5].iter().chain(&all[90..91]).copied().collect();
        let l = run(target, &all, &seeds, &dead, 20);
        assert_eq!(l.result(), want);
    }

    #[test]
    fn a_lookup_with_no_seeds_or_only_dead_ones_ends_empty() {
        let target = Key::random();
        let l = run(target, &[], &[], &[], 20);
        assert!(l.result().is_empty());
        let p = PeerId::random();
        let l = run(target, &[p], &[p], &[p], 20);
        assert!(l.result().is_empty());
    }

    #[test]
    fn candidates_are_bounded() {
        let target = Key::random();
        let mut l = Lookup::new(target, 5, 3, (0..1000).map(|_| PeerId::random()));
        assert!(l.candidates.len() <= 20);
        let asked = l.to_ask();
        l.on_answer(&asked[0], (0..1000).map(|_| PeerId::random()));
        assert!(l.candidates.len() <= 20);
    }
}
