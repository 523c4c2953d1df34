//! The DHT's messages: a version byte, then a postcard-encoded
//! [`Request`] or [`Response`]. They travel as the body of a bridge
//! request on the protocol [`PROTOCOL`], so each goes over whichever
//! transport the two nodes' modes allow.
//!
//! A message that does not decode, has another version, or breaks a
//! limit (too many contacts, an address too long) is refused with the
//! reason; the node counts it and keeps serving.

use std::net::SocketAddr;

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use crate::bridge::PeerAddr;
use crate::stack::{MAX_ADVERTISED, MAX_ADVERTISED_LEN};

use super::key::Key;

/// The application protocol name DHT requests carry.
pub const PROTOCOL: &str = "/switchyard/kad/1";
/// The message version this build speaks.
pub const VERSION: u8 = 1;

/// A peer and where to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    /// Its libp2p PeerId, as bytes.
    pub peer: Vec<u8>,
    /// Its libp2p addresses (without `/p2p`).
    pub libp2p: Vec<String>,
    /// Its iroh socket addresses.
    pub iroh: Vec<String>,
}

/// A DHT request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Are you there?
    Ping,
    /// The peers you know closest to `target`.
    FindNode {
        /// The key looked up.
        target: Key,
    },
    /// The value under `key`, or the peers you know closest to it.
    FindValue {
        /// The record's key.
        key: Vec<u8>,
    },
    /// Hold `value` under `key` for `ttl_secs`.
    Store {
        /// The record's key.
        key: Vec<u8>,
        /// Its value.
        value: Vec<u8>,
        /// Seconds it lives.
        ttl_secs: u32,
    },
}

/// A DHT response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Here.
    Pong,
    /// Closer peers.
    Nodes {
        /// At most the replier's per-reply limit.
        closer: Vec<Contact>,
    },
    /// The value asked for.
    Value {
        /// The value.
        value: Vec<u8>,
        /// Seconds it has left.
        ttl_secs: u32,
    },
    /// The record is held.
    Stored,
}

/// Encode a message.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut out = vec![VERSION];
    // Encoding our own types into a Vec cannot fail.
    out.extend(postcard::to_stdvec(msg).unwrap_or_default());
    out
}

/// Whether `bytes` is a message of another version of this protocol (a
/// newer node in a rolling upgrade, say): refused, but not garbage.
pub fn other_version(bytes: &[u8]) -> bool {
    bytes.first().is_some_and(|v| *v != VERSION)
}

/// Decode a message, saying what is wrong with a bad one.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
    match bytes.split_first() {
        None => Err("an empty DHT message".into()),
        Some((&VERSION, rest)) => {
            postcard::from_bytes(rest).map_err(|e| format!("a malformed DHT message: {e}"))
        }
        Some((v, _)) => Err(format!(
            "DHT message version {v}; this node speaks {VERSION}"
        )),
    }
}

impl Contact {
    /// The contact for `addr`.
    pub fn of(addr: &PeerAddr) -> Contact {
        let (mut libp2p, mut iroh) = addr.advertised();
        libp2p.truncate(MAX_ADVERTISED);
        iroh.truncate(MAX_ADVERTISED);
        Contact {
            peer: addr.peer.to_bytes(),
            libp2p,
            iroh,
        }
    }

    /// Where to reach the peer, or why the contact is unusable.
    pub fn to_addr(&self) -> Result<PeerAddr, String> {
        let peer =
            PeerId::from_bytes(&self.peer).map_err(|e| format!("a contact's peer id: {e}"))?;
        if self.libp2p.len() > MAX_ADVERTISED || self.iroh.len() > MAX_ADVERTISED {
            return Err(format!(
                "contact {peer} carries more than {MAX_ADVERTISED} addresses"
            ));
        }
        let long = self.libp2p.iter().chain(&self.iroh);
        if let Some(a) = long.into_iter().find(|a| a.len() > MAX_ADVERTISED_LEN) {
            return Err(format!(
                "contact {peer} carries an address of {} bytes",
                a.len()
            ));
        }
        let libp2p = self
            .libp2p
            .iter()
            .map(|a| a.parse::<Multiaddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("contact {peer}: a libp2p address: {e}"))?;
        let iroh = self
            .iroh
            .iter()
            .map(|a| a.parse::<SocketAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("contact {peer}: an iroh address: {e}"))?;
        PeerAddr::new(peer, libp2p, iroh).map_err(|e| format!("contact {peer}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_bad_ones_say_why() {
        let req = Request::Store {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ttl_secs: 60,
        };
        let bytes = encode(&req);
        assert_eq!(decode::<Request>(&bytes), Ok(req));
        assert!(decode::<Request>(&[]).is_err());
        let mut v2 = bytes.clone();
        v2[0] = 2;
        assert!(
            decode::<Request>(&v2)
                .expect_err("version 2")
                .contains("version 2")
        );
        assert!(
            decode::<Request>(&[VERSION, 200, 1, 2])
                .expect_err("garbage")
                .contains("malformed")
        );
        // A truncated Store says so rather than reading past the end.
        assert!(decode::<Request>(&bytes[..bytes.len() - 2]).is_err());
    }

    #[test]
    fn a_contact_carries_both_transports_and_bad_ones_are_refused() {
        let peer = PeerId::from(libp2p::identity::Keypair::generate_ed25519().public());
        let addr = PeerAddr::new(
            peer,
            vec!["/ip4/127.0.0.1/tcp/4001".parse().expect("multiaddr")],
            vec!["127.0.0.1:4002".parse().expect("socket")],
        )
        .expect("an ed25519 peer");
        let c = Contact::of(&addr);
        let back = c.to_addr().expect("round trip");
        assert_eq!(back.peer, peer);
        assert_eq!(back.libp2p, addr.libp2p);
        assert_eq!(Contact::of(&back), c);
        let mut bad = c.clone();
        bad.peer = vec![1, 2, 3];
        assert!(bad.to_addr().is_err());
        let mut bad = c.clone();
        bad.iroh = vec!["not a socket".into()];
        assert!(bad.to_addr().expect_err("bad iroh").contains("iroh"));
        let mut bad = c;
        bad.libp2p = vec!["/ip4/1.2.3.4/tcp/1".into(); MAX_ADVERTISED + 1];
        assert!(bad.to_addr().is_err());
    }
}
