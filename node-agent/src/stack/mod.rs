//! The two transport stacks, each serving the same [`Handler`] with the
//! same [`crate::wire`] envelopes.

pub mod iroh_stack;
pub mod libp2p_stack;

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use libp2p::PeerId;

use crate::wire::{Envelope, Kind, WireError};

/// Which stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// libp2p: TCP + Noise + Yamux, request-response.
    LibP2p,
    /// iroh: QUIC, one bidirectional stream per request.
    Iroh,
}

impl Transport {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::LibP2p => "libp2p",
            Transport::Iroh => "iroh",
        }
    }
}

/// Answers requests arriving on either stack. A hedged request can arrive
/// once per transport with the same request id: implementations are
/// idempotent or de-duplicate by it.
pub trait Handler: Send + Sync + 'static {
    /// Answer `request` from `from` (its libp2p PeerId, on either stack).
    fn handle(
        &self,
        from: PeerId,
        transport: Transport,
        request: Envelope,
    ) -> BoxFuture<'static, Result<Bytes, String>>;
    /// The mode this node advertises in its responses.
    fn mode(&self) -> switchyard_crds::NetworkMode;
}

/// Counters a stack keeps; the metrics read them.
#[derive(Debug, Default)]
pub struct StackStats {
    /// Payload bytes sent.
    pub bytes_sent: AtomicU64,
    /// Payload bytes received.
    pub bytes_received: AtomicU64,
    /// Malformed frames received (each drops its connection).
    pub malformed: AtomicU64,
}

/// Why a stack could not do something.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StackError {
    /// The stack could not start.
    #[error("starting: {0}")]
    Start(String),
    /// No connection to the peer.
    #[error("connection: {0}")]
    Connection(String),
    /// The peer sent something malformed, or the frame was too large.
    #[error("protocol: {0}")]
    Protocol(String),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The stack is stopped.
    #[error("the stack is stopped")]
    Stopped,
}

impl From<WireError> for StackError {
    fn from(e: WireError) -> Self {
        if e.is_malformed() {
            StackError::Protocol(e.to_string())
        } else {
            StackError::Connection(e.to_string())
        }
    }
}

/// A refusal answering `request`, sent by a node in `mode`.
pub fn refusal(request: &Envelope, mode: switchyard_crds::NetworkMode, reason: &str) -> Envelope {
    Envelope {
        kind: Kind::Refused,
        mode,
        request_id: request.request_id,
        payload: Bytes::copy_from_slice(reason.as_bytes()),
    }
}

/// Run the handler and wrap its answer.
pub(crate) async fn answer(
    handler: &dyn Handler,
    from: PeerId,
    transport: Transport,
    request: Envelope,
) -> Envelope {
    let id = request.request_id;
    let mode = handler.mode();
    match handler.handle(from, transport, request).await {
        Ok(payload) => Envelope {
            kind: Kind::Response,
            mode,
            request_id: id,
            payload,
        },
        Err(reason) => Envelope {
            kind: Kind::Refused,
            mode,
            request_id: id,
            payload: Bytes::from(reason.into_bytes()),
        },
    }
}
