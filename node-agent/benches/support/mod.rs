//! What the node-agent's transport benches share.

use bytes::Bytes;
use futures::future::BoxFuture;
use libp2p::PeerId;
use switchyard_node_agent::NetworkMode;
use switchyard_node_agent::stack::{Handler, Transport};
use switchyard_node_agent::wire::Envelope;

/// Echoes small requests; answers large ones with their length, so a
/// throughput run moves its bytes one way.
pub struct BenchEcho;

impl Handler for BenchEcho {
    fn handle(
        &self,
        _: PeerId,
        _: Transport,
        request: Envelope,
    ) -> BoxFuture<'static, Result<Bytes, String>> {
        Box::pin(async move {
            if request.payload.len() <= 4096 {
                Ok(request.payload)
            } else {
                Ok(Bytes::copy_from_slice(
                    &(request.payload.len() as u64).to_be_bytes(),
                ))
            }
        })
    }
    fn mode(&self) -> NetworkMode {
        NetworkMode::DualPreferLibP2p
    }
}
