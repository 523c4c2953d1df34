//! The fuzz targets' seeds and regressions as a plain test: every file in
//! `fuzz/seeds/<target>/` and `fuzz/regressions/<target>/` goes through
//! its parser (`switchyard_node_agent::fuzzing`), which must not panic.
//! CI runs this on stable; `scripts/fuzz.sh` fuzzes from the same seeds.
//!
//! The binary seeds come from the real encoders: `UPDATE_SEEDS=1` writes
//! them again, and without it the test checks they are on disk.

use bytes::Bytes;
use switchyard_node_agent::NetworkMode;
use switchyard_node_agent::dht::key::Key;
use switchyard_node_agent::dht::proto::{self, Contact, Request, Response};
use switchyard_node_agent::fuzzing;
use switchyard_node_agent::wire::{Envelope, Kind};
use switchyard_testbed::fuzz_corpus::{Parser, fuzz_dir, run_all};

fn frame(env: &Envelope) -> Vec<u8> {
    let body = env.encode();
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// Seeds made by the encoders the agent sends with.
fn encoded() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let dht = switchyard_node_agent::app::encode(
        proto::PROTOCOL,
        &proto::encode(&Request::FindValue {
            key: b"k1".to_vec(),
        }),
    );
    let envs = [
        (
            "request",
            Envelope {
                kind: Kind::Request,
                mode: NetworkMode::DualPreferIroh,
                request_id: 7,
                payload: dht.clone(),
            },
        ),
        (
            "ping",
            Envelope {
                kind: Kind::Ping,
                mode: NetworkMode::LibP2pOnly,
                request_id: 1,
                payload: Bytes::new(),
            },
        ),
        (
            "pong",
            Envelope {
                kind: Kind::Pong,
                mode: NetworkMode::IrohOnly,
                request_id: 1,
                payload: Bytes::from_static(
                    br#"{"libp2p":["/ip4/10.0.0.2/tcp/4001"],"iroh":["10.0.0.2:4002"]}"#,
                ),
            },
        ),
    ];
    let mut out = Vec::new();
    for (name, env) in &envs {
        out.push(("wire_frame", *name, frame(env)));
        out.push(("envelope", *name, env.encode().to_vec()));
    }
    let contact = Contact {
        peer: libp2p::PeerId::random().to_bytes(),
        libp2p: vec!["/ip4/10.0.0.3/tcp/4001".into()],
        iroh: vec!["10.0.0.3:4002".into()],
    };
    let msgs: Vec<(&str, Vec<u8>)> = vec![
        ("ping", proto::encode(&Request::Ping)),
        (
            "find-node",
            proto::encode(&Request::FindNode {
                target: Key::for_record(b"k"),
            }),
        ),
        (
            "store",
            proto::encode(&Request::Store {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                ttl_secs: 60,
            }),
        ),
        (
            "nodes",
            proto::encode(&Response::Nodes {
                closer: vec![contact],
            }),
        ),
        (
            "value",
            proto::encode(&Response::Value {
                value: b"v".to_vec(),
                ttl_secs: 60,
            }),
        ),
    ];
    for (name, m) in msgs {
        out.push(("dht_message", name, m));
    }
    out
}

#[test]
fn the_encoders_seeds_are_on_disk() {
    let update = std::env::var_os("UPDATE_SEEDS").is_some();
    for (target, name, bytes) in encoded() {
        let path = fuzz_dir().join("seeds").join(target).join(name);
        if update {
            std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
            std::fs::write(&path, &bytes).expect("write");
        }
        assert!(
            path.exists(),
            "{} is missing: run with UPDATE_SEEDS=1",
            path.display()
        );
    }
}

#[test]
fn every_corpus_file_goes_through_its_parser() {
    let targets: [(&str, Parser); 7] = [
        ("wire_frame", fuzzing::wire_frame),
        ("envelope", fuzzing::envelope),
        ("dht_message", fuzzing::dht_message),
        ("advert", fuzzing::advert),
        ("bootstrap_entries", fuzzing::bootstrap_entries),
        ("agent_config", fuzzing::agent_config),
        ("workload_request", fuzzing::workload_request),
    ];
    run_all(&targets);
}
