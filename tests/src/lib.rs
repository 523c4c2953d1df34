//! Switchyard's local testbed: an in-memory Kubernetes API server, the
//! local fleet harness, the system tests and the local demo. The API server
//! and harness arrive with their own issues.
