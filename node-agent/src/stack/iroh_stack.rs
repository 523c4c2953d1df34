//! The iroh stack: an Endpoint with relays off and no address lookup
//! (nothing leaves the configured network unless a relay URL is given),
//! ALPN `switchyard/rpc/1`, one bidirectional stream per request carrying
//! one frame each way.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use iroh::endpoint::{Connection, VarInt, presets};
use iroh::{Endpoint, EndpointAddr, EndpointId, RelayMode};
use tokio::sync::Mutex;

use super::{Handler, StackError, StackStats, Transport};
use crate::identity::{Identity, endpoint_to_peer};
use crate::wire::{self, Envelope, Kind};

/// The ALPN both sides must offer.
pub const ALPN: &[u8] = b"switchyard/rpc/1";

/// Close code for a peer that sent a malformed frame.
const CLOSE_MALFORMED: u32 = 1;

/// iroh stack settings.
#[derive(Debug, Clone)]
pub struct IrohConfig {
    /// UDP address to bind.
    pub bind: SocketAddr,
    /// A relay to use; none by default.
    pub relay_url: Option<iroh::RelayUrl>,
    /// Largest frame body accepted or sent.
    pub max_frame: usize,
}

impl Default for IrohConfig {
    fn default() -> Self {
        IrohConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            relay_url: None,
            max_frame: wire::DEFAULT_MAX_FRAME,
        }
    }
}

/// A running iroh stack.
pub struct IrohStack {
    endpoint: Endpoint,
    conns: Mutex<HashMap<EndpointId, Connection>>,
    max_frame: usize,
    /// Cleared when the stack retires: inbound requests are refused.
    accepting: Arc<AtomicBool>,
    stats: Arc<StackStats>,
    server: tokio::task::JoinHandle<()>,
}

impl IrohStack {
    /// Bind the endpoint and serve requests with `handler`.
    pub async fn start(
        identity: &Identity,
        config: IrohConfig,
        handler: Arc<dyn Handler>,
        stats: Arc<StackStats>,
    ) -> Result<Self, StackError> {
        let relay_mode = match &config.relay_url {
            Some(url) => RelayMode::custom([url.clone()]),
            None => RelayMode::Disabled,
        };
        let endpoint = Endpoint::builder(presets::Minimal)
            .secret_key(identity.iroh_secret())
            .alpns(vec![ALPN.to_vec()])
            .relay_mode(relay_mode)
            .clear_ip_transports()
            .bind_addr(config.bind)
            .map_err(|e| StackError::Start(format!("iroh bind address {}: {e}", config.bind)))?
            .bind()
            .await
            .map_err(|e| StackError::Start(format!("iroh endpoint: {e}")))?;
        let accepting = Arc::new(AtomicBool::new(true));
        let server = tokio::spawn(serve(
            endpoint.clone(),
            handler,
            accepting.clone(),
            stats.clone(),
            config.max_frame,
        ));
        Ok(IrohStack {
            endpoint,
            conns: Mutex::new(HashMap::new()),
            max_frame: config.max_frame,
            accepting,
            stats,
            server,
        })
    }

    /// This endpoint's id and bound addresses, for peers to dial.
    pub fn addr(&self) -> EndpointAddr {
        let mut addr = EndpointAddr::new(self.endpoint.id());
        for s in self.endpoint.bound_sockets() {
            addr = addr.with_ip_addr(s);
        }
        addr
    }

    /// Refuse new inbound requests from now on (the stack is retiring).
    pub fn refuse_inbound(&self) {
        self.accepting.store(false, Ordering::SeqCst);
    }

    /// Send one request and wait for its response.
    pub async fn request(
        &self,
        peer: &EndpointAddr,
        envelope: &Envelope,
        timeout: Duration,
    ) -> Result<Envelope, StackError> {
        let attempt = async {
            let conn = self.connection(peer).await?;
            let (mut send, mut recv) = conn
                .open_bi()
                .await
                .map_err(|e| StackError::Connection(e.to_string()))?;
            wire::write_frame(&mut send, envelope, self.max_frame)
                .await
                .map_err(StackError::from)?;
            let _ = send.finish();
            self.stats
                .bytes_sent
                .fetch_add(envelope.payload.len() as u64, Ordering::Relaxed);
            let response = wire::read_frame(&mut recv, self.max_frame)
                .await
                .map_err(StackError::from)?;
            self.stats
                .bytes_received
                .fetch_add(response.payload.len() as u64, Ordering::Relaxed);
            Ok(response)
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                // A broken connection is dialled afresh next time.
                self.conns.lock().await.remove(&peer.id);
                Err(e)
            }
            Err(_) => Err(StackError::Timeout(timeout)),
        }
    }

    async fn connection(&self, peer: &EndpointAddr) -> Result<Connection, StackError> {
        let mut conns = self.conns.lock().await;
        if let Some(c) = conns.get(&peer.id)
            && c.close_reason().is_none()
        {
            return Ok(c.clone());
        }
        let conn = self
            .endpoint
            .connect(peer.clone(), ALPN)
            .await
            .map_err(|e| {
                StackError::Connection(format!("dialling {}: {e}", peer.id.fmt_short()))
            })?;
        conns.insert(peer.id, conn.clone());
        Ok(conn)
    }

    /// Close every connection and the endpoint.
    pub async fn stop(&self) {
        self.accepting.store(false, Ordering::SeqCst);
        self.conns.lock().await.clear();
        self.endpoint.close().await;
        self.server.abort();
    }
}

async fn serve(
    endpoint: Endpoint,
    handler: Arc<dyn Handler>,
    accepting: Arc<AtomicBool>,
    stats: Arc<StackStats>,
    max_frame: usize,
) {
    while let Some(incoming) = endpoint.accept().await {
        let handler = handler.clone();
        let accepting = accepting.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            let Ok(peer) = endpoint_to_peer(&conn.remote_id()) else {
                return;
            };
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let handler = handler.clone();
                let accepting = accepting.clone();
                let stats = stats.clone();
                let conn = conn.clone();
                tokio::spawn(async move {
                    let request = match wire::read_frame(&mut recv, max_frame).await {
                        Ok(r) if r.kind == Kind::Request => r,
                        Ok(_) | Err(_) => {
                            // Garbage from this peer: drop the connection.
                            stats.malformed.fetch_add(1, Ordering::Relaxed);
                            conn.close(VarInt::from_u32(CLOSE_MALFORMED), b"malformed frame");
                            return;
                        }
                    };
                    stats
                        .bytes_received
                        .fetch_add(request.payload.len() as u64, Ordering::Relaxed);
                    let response = if accepting.load(Ordering::SeqCst) {
                        super::answer(&*handler, peer, Transport::Iroh, request).await
                    } else {
                        super::refusal(
                            &request,
                            handler.mode(),
                            "the iroh stack is retiring on this node",
                        )
                    };
                    stats
                        .bytes_sent
                        .fetch_add(response.payload.len() as u64, Ordering::Relaxed);
                    if wire::write_frame(&mut send, &response, max_frame)
                        .await
                        .is_ok()
                    {
                        let _ = send.finish();
                        // Let the peer read it before the stream goes.
                        let _ = send.stopped().await;
                    }
                });
            }
        });
    }
}
