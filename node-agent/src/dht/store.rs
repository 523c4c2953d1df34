//! The records this node holds: bounded in size and count, each expiring
//! at a deadline. A record this node put itself is also remembered as
//! published, to be republished before it expires elsewhere.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Why a record was not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The value is over the size limit.
    #[error("a record value of {size} bytes is over the limit of {max} bytes")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The key is over the size limit.
    #[error("a record key of {size} bytes is over the limit of {max} bytes")]
    KeyTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The node holds as many records as it may.
    #[error("this node holds {max} records, its limit")]
    Full {
        /// The limit.
        max: usize,
    },
}

/// The longest record key, in bytes.
pub const MAX_KEY_LEN: usize = 1024;

/// One record held.
#[derive(Debug, Clone)]
pub struct Held {
    /// Its value.
    pub value: Bytes,
    /// When it expires here.
    pub expires: Instant,
}

/// A bounded record store.
#[derive(Debug)]
pub struct RecordStore {
    max_records: usize,
    max_value: usize,
    records: HashMap<Bytes, Held>,
}

impl RecordStore {
    /// An empty store of at most `max_records` values of at most
    /// `max_value` bytes.
    pub fn new(max_records: usize, max_value: usize) -> Self {
        RecordStore {
            max_records,
            max_value,
            records: HashMap::new(),
        }
    }

    /// Whether a record of this size may be stored at all.
    pub fn check(&self, key: &[u8], value: usize) -> Result<(), StoreError> {
        if key.len() > MAX_KEY_LEN {
            return Err(StoreError::KeyTooLarge {
                size: key.len(),
                max: MAX_KEY_LEN,
            });
        }
        if value > self.max_value {
            return Err(StoreError::TooLarge {
                size: value,
                max: self.max_value,
            });
        }
        Ok(())
    }

    /// Hold `value` under `key` for `ttl` from `now`, replacing what was
    /// there. A full store takes a new key only once an expired one is
    /// dropped.
    pub fn put(
        &mut self,
        key: Bytes,
        value: Bytes,
        ttl: Duration,
        now: Instant,
    ) -> Result<(), StoreError> {
        self.check(&key, value.len())?;
        if !self.records.contains_key(&key) && self.records.len() >= self.max_records {
            self.expire(now);
            if self.records.len() >= self.max_records {
                return Err(StoreError::Full {
                    max: self.max_records,
                });
            }
        }
        self.records.insert(
            key,
            Held {
                value,
                expires: now + ttl,
            },
        );
        Ok(())
    }

    /// The value under `key` and how long it has left, unless expired.
    pub fn get(&self, key: &[u8], now: Instant) -> Option<(Bytes, Duration)> {
        let held = self.records.get(key)?;
        let left = held.expires.checked_duration_since(now)?;
        (!left.is_zero()).then(|| (held.value.clone(), left))
    }

    /// Drop every expired record; how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.records.len();
        self.records.retain(|_, h| h.expires > now);
        before - self.records.len()
    }

    /// Records held (expired ones until the next [`RecordStore::expire`]).
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Every live record: key, value and time left.
    pub fn live(&self, now: Instant) -> Vec<(Bytes, Bytes, Duration)> {
        self.records
            .iter()
            .filter_map(|(k, h)| {
                let left = h.expires.checked_duration_since(now)?;
                Some((k.clone(), h.value.clone(), left))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_bounded_in_size_and_count_and_expire() {
        let t0 = Instant::now();
        let mut s = RecordStore::new(2, 4);
        let ttl = Duration::from_secs(10);
        assert_eq!(
            s.put(Bytes::from("a"), Bytes::from("12345"), ttl, t0),
            Err(StoreError::TooLarge { size: 5, max: 4 })
        );
        let long = Bytes::from(vec![b'k'; MAX_KEY_LEN + 1]);
        assert!(matches!(
            s.put(long, Bytes::new(), ttl, t0),
            Err(StoreError::KeyTooLarge { .. })
        ));
        s.put(Bytes::from("a"), Bytes::from("1"), ttl, t0)
            .expect("room");
        s.put(
            Bytes::from("b"),
            Bytes::from("2"),
            Duration::from_secs(1),
            t0,
        )
        .expect("room");
        assert_eq!(
            s.put(Bytes::from("c"), Bytes::from("3"), ttl, t0),
            Err(StoreError::Full { max: 2 })
        );
        // Replacing a key needs no room.
        s.put(Bytes::from("a"), Bytes::from("9"), ttl, t0)
            .expect("replace");
        assert_eq!(
            s.get(b"a", t0 + Duration::from_secs(4)),
            Some((Bytes::from("9"), Duration::from_secs(6)))
        );
        // Once b expires, c finds room.
        let later = t0 + Duration::from_secs(2);
        assert_eq!(s.get(b"b", later), None);
        s.put(Bytes::from("c"), Bytes::from("3"), ttl, later)
            .expect("b expired");
        assert_eq!(s.len(), 2);
        assert_eq!(s.expire(t0 + Duration::from_secs(11)), 1);
        assert_eq!(s.live(t0 + Duration::from_secs(11)).len(), 1);
    }
}
