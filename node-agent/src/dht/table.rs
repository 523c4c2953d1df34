//! The routing table: 256 k-buckets around this node's key.
//!
//! Written here rather than taken from libp2p-kad, whose `kbucket` module
//! is deprecated for outside use and assumes its own behaviour owns the
//! connections. Here the table is fed from the agent's one peer view: a
//! peer is inserted when the PeerManager holds a live path to it and
//! removed when it loses every path.
//!
//! Eviction follows Kademlia's preference for long-lived nodes: a full
//! bucket keeps its entries, and a newcomer waits in the bucket's
//! replacement cache (at most k, the newest kept). When an entry is
//! removed, the newest replacement takes its place.

use libp2p::PeerId;

use super::key::{BITS, Key};

/// Kademlia's k: entries per bucket, and the replication factor.
pub const K: usize = 20;

/// One peer in the table.
#[derive(Debug, Clone)]
pub struct Entry<V> {
    /// Its key.
    pub key: Key,
    /// Its id.
    pub peer: PeerId,
    /// What the table keeps with it (its addresses).
    pub value: V,
}

#[derive(Debug, Clone)]
struct Bucket<V> {
    /// Oldest first.
    entries: Vec<Entry<V>>,
    /// Waiting for room, oldest first.
    replacements: Vec<Entry<V>>,
}

impl<V> Default for Bucket<V> {
    fn default() -> Self {
        Bucket {
            entries: Vec::new(),
            replacements: Vec::new(),
        }
    }
}

/// What [`RoutingTable::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// A new entry.
    Added,
    /// Already there: its value was updated.
    Updated,
    /// Its bucket is full: kept as a replacement.
    Pending,
    /// This node itself: not kept.
    Local,
}

/// A Kademlia routing table.
#[derive(Debug, Clone)]
pub struct RoutingTable<V> {
    local: Key,
    k: usize,
    buckets: Vec<Bucket<V>>,
}

impl<V: Clone> RoutingTable<V> {
    /// An empty table around `local`, with buckets of `k` (at least 1).
    pub fn new(local: Key, k: usize) -> Self {
        RoutingTable {
            local,
            k: k.max(1),
            buckets: (0..BITS).map(|_| Bucket::default()).collect(),
        }
    }

    /// The key the table is centred on.
    pub fn local(&self) -> &Key {
        &self.local
    }

    /// Put `peer` in its bucket, or refresh it there.
    pub fn insert(&mut self, peer: PeerId, value: V) -> Inserted {
        let key = Key::for_peer(&peer);
        let Some(i) = self.local.bucket_of(&key) else {
            return Inserted::Local;
        };
        let k = self.k;
        let bucket = &mut self.buckets[i];
        if let Some(e) = bucket.entries.iter_mut().find(|e| e.peer == peer) {
            e.value = value;
            return Inserted::Updated;
        }
        let entry = Entry { key, peer, value };
        if bucket.entries.len() < k {
            bucket.replacements.retain(|e| e.peer != peer);
            bucket.entries.push(entry);
            return Inserted::Added;
        }
        bucket.replacements.retain(|e| e.peer != peer);
        bucket.replacements.push(entry);
        if bucket.replacements.len() > k {
            bucket.replacements.remove(0);
        }
        Inserted::Pending
    }

    /// Take `peer` out (its bucket's newest replacement moves in); whether
    /// it was there, as an entry or a replacement.
    pub fn remove(&mut self, peer: &PeerId) -> bool {
        let key = Key::for_peer(peer);
        let Some(i) = self.local.bucket_of(&key) else {
            return false;
        };
        let bucket = &mut self.buckets[i];
        if let Some(at) = bucket.entries.iter().position(|e| e.peer == *peer) {
            bucket.entries.remove(at);
            if let Some(r) = bucket.replacements.pop() {
                bucket.entries.push(r);
            }
            return true;
        }
        let before = bucket.replacements.len();
        bucket.replacements.retain(|e| e.peer != *peer);
        before != bucket.replacements.len()
    }

    /// The entry for `peer`, if it is in a bucket (not a replacement).
    pub fn get(&self, peer: &PeerId) -> Option<&Entry<V>> {
        let i = self.local.bucket_of(&Key::for_peer(peer))?;
        self.buckets[i].entries.iter().find(|e| e.peer == *peer)
    }

    /// Entries in buckets (replacements not counted).
    pub fn len(&self) -> usize {
        self.buckets.iter().map(|b| b.entries.len()).sum()
    }

    /// Whether no bucket holds an entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every entry, bucket by bucket.
    pub fn entries(&self) -> impl Iterator<Item = &Entry<V>> {
        self.buckets.iter().flat_map(|b| b.entries.iter())
    }

    /// The indices of the buckets that hold an entry.
    pub fn filled_buckets(&self) -> Vec<usize> {
        (0..BITS)
            .filter(|i| !self.buckets[*i].entries.is_empty())
            .collect()
    }

    /// The `n` entries closest to `target`, closest first.
    ///
    /// Buckets are visited nearest to `target` first: the bucket `target`
    /// itself falls in, then every bucket below it (all closer to `target`
    /// than anything above), then the buckets above in increasing order
    /// of their index; each is sorted by distance as it is taken, and the
    /// walk stops once `n` are found past a bucket boundary.
    pub fn closest(&self, target: &Key, n: usize) -> Vec<&Entry<V>> {
        let mut out: Vec<&Entry<V>> = Vec::with_capacity(n.min(self.len()));
        if n == 0 {
            return out;
        }
        match self.local.bucket_of(target) {
            None => {
                // The target is this node: bucket i holds distances of
                // 2^i and up, so the buckets in increasing order are
                // already in distance order.
                for b in &self.buckets {
                    take_sorted(&mut out, b.entries.iter(), target);
                    if out.len() >= n {
                        break;
                    }
                }
            }
            Some(t) => {
                // Bucket t shares the target's top bit of difference; the
                // buckets below t differ from the target at bit t, so they
                // come next, all at once (they are ordered among
                // themselves by the lower bits); then buckets above t, each
                // farther than everything before it.
                take_sorted(&mut out, self.buckets[t].entries.iter(), target);
                if out.len() < n {
                    let below = self.buckets[..t].iter().flat_map(|b| b.entries.iter());
                    take_sorted(&mut out, below, target);
                }
                for b in &self.buckets[t + 1..] {
                    if out.len() >= n {
                        break;
                    }
                    take_sorted(&mut out, b.entries.iter(), target);
                }
            }
        }
        out.truncate(n);
        out
    }

    #[cfg(test)]
    fn bucket_sizes(&self) -> Vec<(usize, usize)> {
        self.buckets
            .iter()
            .map(|b| (b.entries.len(), b.replacements.len()))
            .collect()
    }
}

/// Append `entries` to `out`, sorted by distance to `target`.
fn take_sorted<'a, V>(
    out: &mut Vec<&'a Entry<V>>,
    entries: impl Iterator<Item = &'a Entry<V>>,
    target: &Key,
) {
    let from = out.len();
    out.extend(entries);
    out[from..].sort_by_key(|e| e.key.distance(target));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn peers(n: usize) -> Vec<PeerId> {
        (0..n).map(|_| PeerId::random()).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever goes in and out, every bucket holds at most k, every
        /// entry is in the bucket of its distance, and closest(n) is the
        /// brute-force answer over what the table holds.
        #[test]
        fn buckets_stay_bounded_and_closest_matches_brute_force(
            k in 1usize..6,
            n in 1usize..40,
            adds in 1usize..300,
            removes in proptest::collection::vec(any::<prop::sample::Index>(), 0..60),
        ) {
            let local = Key::random();
            let mut table = RoutingTable::new(local, k);
            let all = peers(adds);
            for p in &all {
                table.insert(*p, ());
            }
            for r in &removes {
                table.remove(r.get(&all));
            }
            for (entries, replacements) in table.bucket_sizes() {
                prop_assert!(entries <= k);
                prop_assert!(replacements <= k);
            }
            for e in table.entries() {
                let i = local.bucket_of(&e.key).expect("not local");
                prop_assert!(table.buckets[i].entries.iter().any(|x| x.peer == e.peer));
            }
            for target in [Key::random(), local, all[0].into_key()] {
                let mut brute: Vec<Key> = table.entries().map(|e| e.key).collect();
                brute.sort_by_key(|x| x.distance(&target));
                brute.truncate(n);
                let got: Vec<Key> = table.closest(&target, n).iter().map(|e| e.key).collect();
                prop_assert_eq!(got, brute);
            }
        }
    }

    trait IntoKey {
        fn into_key(self) -> Key;
    }
    impl IntoKey for PeerId {
        fn into_key(self) -> Key {
            Key::for_peer(&self)
        }
    }

    #[test]
    fn a_full_bucket_keeps_its_entries_and_a_removal_promotes_the_newest_replacement() {
        let local = Key::random();
        let mut table = RoutingTable::new(local, 2);
        // Peers that land in the farthest bucket (half of all keys do).
        let far: Vec<PeerId> = std::iter::repeat_with(PeerId::random)
            .filter(|p| local.bucket_of(&Key::for_peer(p)) == Some(255))
            .take(5)
            .collect();
        assert_eq!(table.insert(far[0], 0), Inserted::Added);
        assert_eq!(table.insert(far[1], 1), Inserted::Added);
        assert_eq!(table.insert(far[2], 2), Inserted::Pending);
        assert_eq!(table.insert(far[3], 3), Inserted::Pending);
        assert_eq!(table.insert(far[4], 4), Inserted::Pending);
        // The oldest replacement was dropped: at most k wait.
        assert_eq!(table.bucket_sizes()[255], (2, 2));
        assert_eq!(table.insert(far[0], 10), Inserted::Updated);
        assert_eq!(table.get(&far[0]).map(|e| e.value), Some(10));
        assert!(table.get(&far[2]).is_none(), "the old entries stay");
        assert!(table.remove(&far[1]));
        assert_eq!(table.get(&far[4]).map(|e| e.value), Some(4));
        assert!(table.remove(&far[3]), "a replacement can be removed");
        assert!(!table.remove(&far[3]));
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn the_local_node_is_never_an_entry() {
        let me = PeerId::random();
        let mut table = RoutingTable::new(Key::for_peer(&me), K);
        assert_eq!(table.insert(me, ()), Inserted::Local);
        assert!(table.is_empty());
    }
}
