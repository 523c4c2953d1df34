//! Bootstrap peers from configuration, one entry per string:
//!
//! - `<peer id>@<multiaddr>`: a libp2p peer, e.g.
//!   `12D3KooW…@/ip4/10.0.0.7/tcp/4001`;
//! - `<endpoint id>@<ip>:<port>`: an iroh peer, e.g. `6f1c…@10.0.0.7:4002`
//!   (its PeerId follows from the id);
//! - `dns:<name>`: every address a DNS name resolves to (a Kubernetes
//!   headless Service gives one per pod), on the ports from configuration;
//!   the identities are learned when the libp2p handshake answers.
//!
//! A malformed entry is reported (which one, and why) and skipped; the
//! others are still used.

use std::net::SocketAddr;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

use crate::identity::{endpoint_to_peer, peer_to_endpoint};

/// One valid bootstrap entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// A libp2p peer at an address.
    Libp2p {
        /// Its id.
        peer: PeerId,
        /// Where it listens (without `/p2p/`).
        addr: Multiaddr,
    },
    /// An iroh peer at a socket address.
    Iroh {
        /// Its PeerId (mapped from the endpoint id).
        peer: PeerId,
        /// Where it listens.
        addr: SocketAddr,
    },
    /// A DNS name whose addresses are dialled on the configured ports.
    Dns {
        /// The name.
        name: String,
    },
}

/// A bootstrap entry that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bootstrap entry {index} ({entry:?}): {reason}")]
pub struct BadEntry {
    /// Its position in the list, from 0.
    pub index: usize,
    /// The entry as given.
    pub entry: String,
    /// What is wrong and what to write instead.
    pub reason: String,
}

const FORMS: &str = "expected <peer id>@<multiaddr>, <endpoint id>@<ip>:<port>, or dns:<name>";

/// Parse one entry.
pub fn parse_entry(entry: &str) -> Result<Bootstrap, String> {
    let entry = entry.trim();
    if let Some(name) = entry.strip_prefix("dns:") {
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if !valid {
            return Err(format!("{name:?} is not a DNS name"));
        }
        return Ok(Bootstrap::Dns {
            name: name.to_owned(),
        });
    }
    let Some((id, addr)) = entry.split_once('@') else {
        return Err(format!("no '@' between an id and an address; {FORMS}"));
    };
    if addr.starts_with('/') {
        let peer: PeerId = id
            .parse()
            .map_err(|e| format!("{id:?} is not a libp2p peer id: {e}"))?;
        // A PeerId that is not ed25519 has no iroh twin: refuse it now.
        peer_to_endpoint(&peer).map_err(|e| e.to_string())?;
        let mut addr: Multiaddr = addr
            .parse()
            .map_err(|e| format!("{addr:?} is not a multiaddr: {e}"))?;
        match addr.iter().last() {
            Some(Protocol::P2p(p)) if p != peer => {
                return Err(format!("the address names peer {p}, the entry {peer}"));
            }
            Some(Protocol::P2p(_)) => {
                addr.pop();
            }
            _ => {}
        }
        if !addr
            .iter()
            .any(|p| matches!(p, Protocol::Tcp(_) | Protocol::Udp(_)))
        {
            return Err(format!("{addr} has no port (tcp or udp)"));
        }
        return Ok(Bootstrap::Libp2p { peer, addr });
    }
    let addr: SocketAddr = addr.parse().map_err(|e| {
        format!("{addr:?} is neither a multiaddr (/ip4/…/tcp/…) nor <ip>:<port>: {e}")
    })?;
    let endpoint: iroh::EndpointId = id
        .parse()
        .map_err(|e| format!("{id:?} is not an iroh endpoint id: {e}"))?;
    if addr.port() == 0 {
        return Err(format!("{addr} has port 0"));
    }
    let peer = endpoint_to_peer(&endpoint).map_err(|e| e.to_string())?;
    Ok(Bootstrap::Iroh { peer, addr })
}

/// Parse every entry: the valid ones, and a report for each bad one.
pub fn parse(entries: &[String]) -> (Vec<Bootstrap>, Vec<BadEntry>) {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        match parse_entry(entry) {
            Ok(b) => good.push(b),
            Err(reason) => bad.push(BadEntry {
                index,
                entry: entry.clone(),
                reason,
            }),
        }
    }
    (good, bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    #[test]
    fn the_three_forms_parse_and_map_to_one_identity() {
        let id = Identity::generate();
        let libp2p = format!("{}@/ip4/10.0.0.7/tcp/4001", id.peer_id());
        assert_eq!(
            parse_entry(&libp2p),
            Ok(Bootstrap::Libp2p {
                peer: id.peer_id(),
                addr: "/ip4/10.0.0.7/tcp/4001".parse().expect("addr"),
            })
        );
        let with_p2p = format!(
            "{}@/ip4/10.0.0.7/tcp/4001/p2p/{}",
            id.peer_id(),
            id.peer_id()
        );
        assert!(matches!(
            parse_entry(&with_p2p),
            Ok(Bootstrap::Libp2p { .. })
        ));
        let iroh = format!("{}@10.0.0.7:4002", id.endpoint_id());
        assert_eq!(
            parse_entry(&iroh),
            Ok(Bootstrap::Iroh {
                peer: id.peer_id(),
                addr: "10.0.0.7:4002".parse().expect("addr"),
            })
        );
        assert_eq!(
            parse_entry("dns:fleet.default.svc.cluster.local"),
            Ok(Bootstrap::Dns {
                name: "fleet.default.svc.cluster.local".into()
            })
        );
    }

    #[test]
    fn bad_entries_are_reported_with_the_reason_and_the_rest_kept() {
        let id = Identity::generate();
        let other = Identity::generate();
        // An RSA-style (non-ed25519) PeerId: a sha256 multihash.
        let rsa = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N";
        let entries: Vec<String> = vec![
            format!("{}@/ip4/10.0.0.7/tcp/4001", id.peer_id()),
            "not-an-entry".into(),
            format!("{rsa}@/ip4/10.0.0.8/tcp/4001"),
            format!("{}@/ip4/10.0.0.9", id.peer_id()),
            format!(
                "{}@/ip4/10.0.0.9/tcp/1/p2p/{}",
                id.peer_id(),
                other.peer_id()
            ),
            "zzzz@10.0.0.7:4002".into(),
            format!("{}@10.0.0.7", id.endpoint_id()),
            "dns:bad_name!".into(),
            "dns:fleet-headless".into(),
        ];
        let (good, bad) = parse(&entries);
        assert_eq!(good.len(), 2, "{good:?}");
        let indexes: Vec<usize> = bad.iter().map(|b| b.index).collect();
        assert_eq!(indexes, vec![1, 2, 3, 4, 5, 6, 7]);
        let text: Vec<String> = bad.iter().map(ToString::to_string).collect();
        assert!(
            text[0].contains("no '@'") && text[0].contains("dns:<name>"),
            "{}",
            text[0]
        );
        assert!(text[1].contains("ed25519"), "{}", text[1]);
        assert!(text[2].contains("no port"), "{}", text[2]);
        assert!(text[3].contains("names peer"), "{}", text[3]);
        assert!(text[4].contains("not an iroh endpoint id"), "{}", text[4]);
        assert!(text[5].contains("<ip>:<port>"), "{}", text[5]);
        assert!(text[6].contains("not a DNS name"), "{}", text[6]);
    }
}
