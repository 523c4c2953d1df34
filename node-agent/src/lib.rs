//! Switchyard's node agent: a dual-stack transport (libp2p and iroh side by
//! side, one ed25519 identity) that routes each message by the node's
//! `NetworkMode` and switches mode live without losing messages.
//!
//! The transport, peer management and Kubernetes integration arrive with
//! their own issues; this crate currently re-exports the shared mode types
//! the agent is built around.

pub use switchyard_crds::{NetworkMode, RoutingStrategy};
