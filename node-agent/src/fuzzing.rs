//! The node agent's parsers of untrusted input, as the fuzz targets
//! (`fuzz/`) and the corpus regression test (`tests/fuzz_corpus.rs`) call
//! them. Each takes arbitrary bytes and must never panic, hang or
//! allocate beyond its bound; where a parser accepts, what it read must
//! survive a round trip.

use bytes::Bytes;

use crate::{app, bootstrap, dht, stack, wire};

/// The largest frame the fuzzers let through (the stacks' own bound is
/// larger; this keeps a run's memory small).
const MAX_FRAME: usize = 1 << 20;

/// A frame as a stack reads it off a connection: length, header, body.
pub fn wire_frame(data: &[u8]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let mut r = data;
    if let Ok(env) = rt.block_on(wire::read_frame(&mut r, MAX_FRAME)) {
        assert_eq!(wire::Envelope::decode(env.encode()).ok(), Some(env));
    }
}

/// An envelope's body as a stack decodes it (header, then payload), and
/// the application request inside it (protocol name, body).
pub fn envelope(data: &[u8]) {
    if let Ok(env) = wire::Envelope::decode(Bytes::copy_from_slice(data)) {
        assert_eq!(wire::Envelope::decode(env.encode()).ok(), Some(env.clone()));
        if let Ok((name, body)) = app::decode(&env.payload) {
            let again = app::encode(name, &body);
            assert_eq!(app::decode(&again).ok(), Some((name, body)));
        }
    }
}

/// A DHT request and a DHT response, as a node reads them from a peer.
pub fn dht_message(data: &[u8]) {
    if let Ok(req) = dht::proto::decode::<dht::proto::Request>(data) {
        let bytes = dht::proto::encode(&req);
        assert_eq!(
            dht::proto::decode::<dht::proto::Request>(&bytes).ok(),
            Some(req)
        );
    }
    if let Ok(resp) = dht::proto::decode::<dht::proto::Response>(data) {
        let bytes = dht::proto::encode(&resp);
        assert_eq!(
            dht::proto::decode::<dht::proto::Response>(&bytes).ok(),
            Some(resp.clone())
        );
        if let dht::proto::Response::Nodes { closer } = resp {
            for c in closer {
                let _ = c.to_addr();
            }
        }
    }
}

/// A pong's address advert; what is accepted stays within its bounds.
pub fn advert(data: &[u8]) {
    if let Ok(a) = stack::Advert::parse(data) {
        for addr in a.libp2p.iter().chain(&a.iroh) {
            assert!(addr.len() <= stack::MAX_ADVERTISED_LEN);
        }
    }
}

/// A bootstrap entry (`--bootstrap`, the chart's list), and a list of
/// them split at newlines: every entry is either read or reported.
pub fn bootstrap_entries(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = bootstrap::parse_entry(text);
    let entries: Vec<String> = text.lines().map(str::to_owned).collect();
    let (ok, bad) = bootstrap::parse(&entries);
    assert!(ok.len() + bad.len() <= entries.len());
}

/// The agent's YAML config file.
pub fn agent_config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::settings::Settings::from_yaml(text);
    }
}

/// What the workload API reads from a caller besides raw bodies: a
/// record key with its value's length, a peer id, a protocol name.
pub fn workload_request(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut store = dht::store::RecordStore::new(16, 1024);
    let now = std::time::Instant::now();
    let value = Bytes::copy_from_slice(data);
    let key = Bytes::copy_from_slice(text.as_bytes());
    if store.check(&key, value.len()).is_ok() {
        let ttl = std::time::Duration::from_secs(60);
        if store.put(key.clone(), value.clone(), ttl, now).is_ok() {
            assert_eq!(store.get(&key, now).map(|(v, _)| v), Some(value));
        }
    }
    let _ = text.parse::<libp2p::PeerId>();
    let _ = app::check_name(text);
}
