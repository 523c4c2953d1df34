//! Switchyard's local testbed: an in-memory Kubernetes API server that
//! kube-rs and real kubectl work against ([`apiserver`]), and stand-in node
//! agents ([`agents`]) for system tests and the local demo.

pub mod agents;
pub mod apiserver;
