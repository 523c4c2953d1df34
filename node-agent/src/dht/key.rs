//! The DHT's key space: 256-bit keys, the SHA-256 of a node's libp2p
//! PeerId (so a node's key follows from its one identity) or of a
//! record's key, and the XOR distance between them.

use std::fmt;

use libp2p::PeerId;
use sha2::{Digest, Sha256};

/// Bits in a key.
pub const BITS: usize = 256;

/// A point in the key space.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Key(pub [u8; 32]);

/// The XOR of two keys, ordered as a 256-bit big-endian number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Distance(pub [u8; 32]);

impl Key {
    /// A node's key: the SHA-256 of its PeerId's bytes.
    pub fn for_peer(peer: &PeerId) -> Key {
        Key(Sha256::digest(peer.to_bytes()).into())
    }

    /// A record's key: the SHA-256 of the application's key.
    pub fn for_record(key: &[u8]) -> Key {
        Key(Sha256::digest(key).into())
    }

    /// A uniformly random key.
    pub fn random() -> Key {
        Key(rand::random())
    }

    /// The XOR distance to `other`.
    pub fn distance(&self, other: &Key) -> Distance {
        let mut d = [0u8; 32];
        for (i, b) in d.iter_mut().enumerate() {
            *b = self.0[i] ^ other.0[i];
        }
        Distance(d)
    }

    /// Which bucket `other` falls in, in a table centred on this key: the
    /// index of the highest bit in which they differ (0 for the nearest,
    /// 255 for the farthest half of the space). `None` for this key.
    pub fn bucket_of(&self, other: &Key) -> Option<usize> {
        self.distance(other).ilog2()
    }

    /// A random key in bucket `i` of a table centred on this key, for a
    /// bucket refresh. `i` must be below [`BITS`].
    pub fn random_in_bucket(&self, i: usize) -> Key {
        let mut d: [u8; 32] = rand::random();
        let byte = 31 - i / 8;
        let bit = i % 8;
        // Clear every bit above `i`, set bit `i`.
        for b in d.iter_mut().take(byte) {
            *b = 0;
        }
        let below = ((1u16 << bit) - 1) as u8;
        d[byte] = (d[byte] & below) | (1 << bit);
        let mut k = [0u8; 32];
        for (j, b) in k.iter_mut().enumerate() {
            *b = self.0[j] ^ d[j];
        }
        Key(k)
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl Distance {
    /// The index of the highest set bit; `None` for zero.
    pub fn ilog2(&self) -> Option<usize> {
        let (i, b) = self.0.iter().enumerate().find(|(_, b)| **b != 0)?;
        Some((31 - i) * 8 + (7 - b.leading_zeros() as usize))
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_distance_is_xor_and_its_log_names_the_bucket() {
        let zero = Key([0; 32]);
        let mut one = [0u8; 32];
        one[31] = 1;
        let mut top = [0u8; 32];
        top[0] = 0x80;
        assert_eq!(zero.bucket_of(&zero), None);
        assert_eq!(zero.bucket_of(&Key(one)), Some(0));
        assert_eq!(zero.bucket_of(&Key(top)), Some(255));
        let mut mid = [0u8; 32];
        mid[30] = 0x03;
        assert_eq!(zero.bucket_of(&Key(mid)), Some(9));
        assert_eq!(Key(one).distance(&Key(one)), Distance([0; 32]));
    }

    #[test]
    fn a_random_key_in_a_bucket_lands_in_that_bucket() {
        let me = Key::random();
        for i in [0, 1, 7, 8, 9, 100, 254, 255] {
            for _ in 0..20 {
                assert_eq!(me.bucket_of(&me.random_in_bucket(i)), Some(i));
            }
        }
    }

    #[test]
    fn a_peer_key_is_the_hash_of_its_id() {
        let peer = PeerId::random();
        assert_eq!(Key::for_peer(&peer), Key::for_peer(&peer));
        assert_ne!(Key::for_peer(&peer), Key::for_peer(&PeerId::random()));
        assert_eq!(Key::for_record(b"a").to_hex().len(), 64);
    }
}
