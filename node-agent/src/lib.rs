//! Switchyard's node agent: a dual-stack transport (libp2p and iroh side by
//! side, one ed25519 identity) that routes each message by the node's
//! `NetworkMode` and switches mode live without losing messages.
//!
//! - [`identity`]: one secret, the libp2p and iroh ids derived from it and
//!   mapped to each other by pure functions.
//! - [`wire`]: the one message model: versioned envelopes in
//!   length-prefixed frames with a maximum size.
//! - [`stack`]: the libp2p and iroh stacks serving the same handler.
//! - [`bridge`]: a dual-stack node routing by mode and strategy, with
//!   failover and live mode switching.
//! - [`app`]: application protocols over the bridge (the probe, the DHT,
//!   the workload's).
//! - [`dht`]: a Kademlia DHT whose every message goes over the bridge.
//! - [`workload`]: the API the application container uses.
//! - [`health`]: seed 001's health model per transport, and the
//!   partition risk.
//! - [`metrics`]: the node's Prometheus metrics.
//! - [`settings`]: the agent binary's flags, environment and file.

pub mod agent;
pub mod app;
pub mod bootstrap;
pub mod bridge;
pub mod dht;
pub mod fuzzing;
pub mod health;
pub mod identity;
pub mod manager;
pub mod metrics;
pub mod peers;
pub mod routing;
pub mod settings;
pub mod stack;
pub mod transport;
pub mod wire;
pub mod workload;

pub use switchyard_crds::{NetworkMode, RoutingStrategy};
