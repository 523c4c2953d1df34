//! Application protocols over the bridge. Every request the agent sends
//! names its protocol before its body: `u8 name length | name | body`.
//! The agent's own are the probe ([`PROBE`]) and the DHT
//! (`/switchyard/kad/1`); the workload names its own, outside
//! [`RESERVED_PREFIX`]. Responses carry only the body.

use bytes::{BufMut, Bytes, BytesMut};

use crate::bridge::{BridgeError, Node, PeerAddr};
use crate::stack::Transport;

/// The agent's probe: answered with its body.
pub const PROBE: &str = "/switchyard/probe/1";
/// The longest protocol name, in bytes.
pub const MAX_NAME: usize = 64;
/// Names beginning with this are the agent's own.
pub const RESERVED_PREFIX: &str = "/switchyard/";

/// `body` on `protocol`, as a request payload.
pub fn encode(protocol: &str, body: &[u8]) -> Bytes {
    let name = &protocol.as_bytes()[..protocol.len().min(MAX_NAME)];
    let mut out = BytesMut::with_capacity(1 + name.len() + body.len());
    out.put_u8(name.len() as u8);
    out.put_slice(name);
    out.put_slice(body);
    out.freeze()
}

/// The protocol and body of a request payload, or what is wrong with it.
pub fn decode(payload: &Bytes) -> Result<(&str, Bytes), String> {
    let Some((&len, rest)) = payload.split_first() else {
        return Err("an empty request: it names no protocol".into());
    };
    let len = usize::from(len);
    if len == 0 || len > MAX_NAME || rest.len() < len {
        return Err(format!(
            "a request whose protocol name is {len} bytes long ({} present, 1 to {MAX_NAME} allowed)",
            rest.len().min(len)
        ));
    }
    let name = std::str::from_utf8(&rest[..len])
        .map_err(|_| "a protocol name that is not UTF-8".to_owned())?;
    Ok((name, payload.slice(1 + len..)))
}

/// Send `body` to `addr` on `protocol` through the bridge: the answer and
/// the transport that carried it. Counted in
/// `switchyard_node_protocol_requests_total`.
pub async fn request(
    node: &Node,
    addr: &PeerAddr,
    protocol: &str,
    body: &[u8],
) -> Result<(Bytes, Transport), BridgeError> {
    let result = node.request_via(addr, encode(protocol, body)).await;
    let m = node.metrics();
    match &result {
        Ok((_, t)) => m.count_protocol(protocol, Some(*t), "ok"),
        Err(BridgeError::Refused { .. }) => m.count_protocol(protocol, None, "refused"),
        Err(_) => m.count_protocol(protocol, None, "error"),
    }
    result
}

/// Whether `name` may be a workload's protocol: 1 to [`MAX_NAME`] bytes of
/// letters, digits and `/ . _ -`, not under [`RESERVED_PREFIX`].
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!(
            "a protocol name must be 1 to {MAX_NAME} bytes long; {:?} is {}",
            name,
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "/._-".contains(*c)))
    {
        return Err(format!(
            "protocol name {name:?} has {c:?}: use letters, digits and / . _ -"
        ));
    }
    if name.starts_with(RESERVED_PREFIX) {
        return Err(format!(
            "protocol name {name:?} is under {RESERVED_PREFIX}, which the agent keeps for itself"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_names_its_protocol_and_bad_ones_say_why() {
        let p = encode("kv/1", b"hello");
        let (name, body) = decode(&p).expect("round trip");
        assert_eq!((name, &body[..]), ("kv/1", &b"hello"[..]));
        assert!(decode(&Bytes::new()).is_err());
        assert!(decode(&Bytes::from_static(&[0, 1])).is_err());
        assert!(decode(&Bytes::from_static(&[5, b'a'])).is_err());
        assert!(decode(&Bytes::from_static(&[1, 0xff])).is_err());
        assert_eq!(
            decode(&encode("x", b""))
                .map(|(n, b)| (n.to_owned(), b.len()))
                .ok(),
            Some(("x".to_owned(), 0))
        );
    }

    #[test]
    fn workload_protocol_names_are_checked() {
        assert!(check_name("kv/1").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name(&"a".repeat(65)).is_err());
        assert!(check_name("has space").is_err());
        assert!(check_name("/switchyard/kad/1").is_err());
    }
}
