//! Switchyard's local testbed: an in-memory Kubernetes API server that
//! kube-rs and real kubectl work against ([`apiserver`]); the local fleet
//! harness, system tests and demo build on it.

pub mod apiserver;
