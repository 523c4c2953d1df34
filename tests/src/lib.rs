//! Switchyard's local testbed: an in-memory Kubernetes API server that
//! kube-rs and real kubectl work against ([`apiserver`]), a cluster with
//! the Switchyard CRDs and a registered fleet ([`cluster`]), and stand-in
//! node agents ([`agents`]) for system tests and the local demo.

pub mod agents;
pub mod apiserver;
pub mod argocd;
pub mod chart;
pub mod cluster;
pub mod fuzz_corpus;
pub mod netdelay;
pub mod netfleet;
pub mod netns;
pub mod ports;
pub mod prometheus;
pub mod serial;
pub mod stats;
