//! HTTPS for the API server when it authenticates: kubectl (client-go)
//! sends bearer tokens only over TLS, as it should. A CA and a serving
//! certificate for 127.0.0.1 and `localhost` are made at start; kubeconfigs
//! carry the CA.

use std::sync::Arc;

use base64::Engine;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

/// A test CA and a serving certificate it signs, for 127.0.0.1 and
/// `localhost`: for this server, and for any other server a test runs
/// with TLS (Prometheus's `--web.config.file`).
pub struct Chain {
    /// The CA's certificate, PEM.
    pub ca_pem: String,
    /// The serving certificate, PEM and DER.
    pub cert_pem: String,
    cert_der: Vec<u8>,
    /// The serving certificate's key, PKCS#8 PEM and DER.
    pub key_pem: String,
    key_der: Vec<u8>,
}

impl Chain {
    /// A new CA and serving certificate.
    pub fn generate() -> anyhow::Result<Chain> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "switchyard-testbed-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec!["localhost".to_owned()])?;
        params
            .subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        params
            .distinguished_name
            .push(DnType::CommonName, "switchyard-testbed");
        let cert = params.signed_by(&key, &ca, &ca_key)?;
        Ok(Chain {
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
        })
    }
}

/// The server's TLS material.
pub struct Tls {
    acceptor: TlsAcceptor,
    /// The CA that signed the serving certificate, PEM.
    pub ca_pem: String,
}

impl Tls {
    /// A new CA and a serving certificate it signs.
    pub fn generate() -> anyhow::Result<Tls> {
        let chain = Chain::generate()?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![chain.cert_der.clone().into()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(chain.key_der.clone().into()),
            )?;
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            ca_pem: chain.ca_pem,
        })
    }

    /// The CA as a kubeconfig's `certificate-authority-data`.
    pub fn ca_data(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.ca_pem)
    }

    /// A listener that answers TLS on `tcp`.
    pub fn listener(&self, tcp: TcpListener) -> TlsListener {
        TlsListener {
            tcp,
            acceptor: self.acceptor.clone(),
        }
    }
}

/// TCP connections, each after its TLS handshake; a failed handshake is
/// dropped and the next connection taken.
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, addr)) = self.tcp.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            };
            let handshake = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                self.acceptor.accept(stream),
            );
            match handshake.await {
                Ok(Ok(tls)) => return (tls, addr),
                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!("TLS handshake timed out"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}
