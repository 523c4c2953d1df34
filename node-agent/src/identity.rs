//! One ed25519 secret, two networks: the libp2p keypair and the iroh secret
//! key are the same key, so a node's libp2p `PeerId` and its iroh
//! `EndpointId` name the same public key and map to each other by pure
//! functions, with no table to keep in sync.

use std::io::Write as _;
use std::path::Path;

use libp2p::PeerId;

/// A node's identity: one ed25519 secret key.
#[derive(Clone)]
pub struct Identity {
    secret: [u8; 32],
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("Identity")
            .field("peer_id", &self.peer_id())
            .finish_non_exhaustive()
    }
}

/// Why an identity or an id could not be used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The secret file could not be read or written.
    #[error("identity file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The secret file does not hold a 32-byte ed25519 secret.
    #[error(
        "identity file {path} holds {len} bytes; it must hold exactly 32 (a raw ed25519 secret). Remove it to generate a new identity"
    )]
    BadSecret {
        /// The file.
        path: String,
        /// Its length.
        len: usize,
    },
    /// The PeerId is not an inlined ed25519 key, so no iroh id matches it.
    #[error(
        "PeerId {0} is not an ed25519 key: only ed25519 PeerIds (12D3KooW...) have an iroh EndpointId"
    )]
    NotEd25519(PeerId),
    /// The bytes are not a valid ed25519 public key.
    #[error("not a valid ed25519 public key: {0}")]
    BadKey(String),
}

impl Identity {
    /// A fresh random identity.
    pub fn generate() -> Self {
        let secret = iroh::SecretKey::generate().to_bytes();
        Identity { secret }
    }

    /// The raw secret, to persist it or to start the same node again.
    /// Never log it.
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.secret
    }

    /// The identity with this secret.
    pub fn from_secret(secret: [u8; 32]) -> Self {
        Identity { secret }
    }

    /// Read the raw 32-byte secret from `path`, or generate one and write
    /// it there with mode 0600 if the file does not exist.
    pub fn load_or_generate(path: &Path) -> Result<Self, IdentityError> {
        let io = |source| IdentityError::Io {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read(path) {
            Ok(bytes) => {
                let secret: [u8; 32] =
                    bytes
                        .as_slice()
                        .try_into()
                        .map_err(|_| IdentityError::BadSecret {
                            path: path.display().to_string(),
                            len: bytes.len(),
                        })?;
                Ok(Identity { secret })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = Identity::generate();
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    options.mode(0o600);
                }
                let mut file = options.open(path).map_err(io)?;
                file.write_all(&id.secret).map_err(io)?;
                file.sync_all().map_err(io)?;
                Ok(id)
            }
            Err(e) => Err(io(e)),
        }
    }

    /// The libp2p keypair.
    pub fn libp2p_keypair(&self) -> libp2p::identity::Keypair {
        let mut bytes = self.secret;
        libp2p::identity::Keypair::ed25519_from_bytes(&mut bytes)
            .expect("32 bytes are a valid ed25519 secret")
    }

    /// The iroh secret key.
    pub fn iroh_secret(&self) -> iroh::SecretKey {
        iroh::SecretKey::from_bytes(&self.secret)
    }

    /// The libp2p PeerId.
    pub fn peer_id(&self) -> PeerId {
        self.libp2p_keypair().public().to_peer_id()
    }

    /// The iroh EndpointId.
    pub fn endpoint_id(&self) -> iroh::EndpointId {
        self.iroh_secret().public()
    }
}

/// The iroh EndpointId of the node with this libp2p PeerId.
pub fn peer_to_endpoint(peer: &PeerId) -> Result<iroh::EndpointId, IdentityError> {
    // An ed25519 PeerId inlines its public key (identity multihash, code 0).
    let hash = peer.as_ref();
    if hash.code() != 0 {
        return Err(IdentityError::NotEd25519(*peer));
    }
    let key = libp2p::identity::PublicKey::try_decode_protobuf(hash.digest())
        .map_err(|_| IdentityError::NotEd25519(*peer))?;
    let ed = key
        .try_into_ed25519()
        .map_err(|_| IdentityError::NotEd25519(*peer))?;
    iroh::EndpointId::from_bytes(&ed.to_bytes()).map_err(|e| IdentityError::BadKey(e.to_string()))
}

/// The libp2p PeerId of the node with this iroh EndpointId.
pub fn endpoint_to_peer(id: &iroh::EndpointId) -> Result<PeerId, IdentityError> {
    let ed = libp2p::identity::ed25519::PublicKey::try_from_bytes(id.as_bytes())
        .map_err(|e| IdentityError::BadKey(e.to_string()))?;
    Ok(libp2p::identity::PublicKey::from(ed).to_peer_id())
}

/// An identity as a person writes it: a libp2p PeerId (`12D3KooW…`) or
/// an iroh EndpointId; both name the same ed25519 key.
pub fn parse_id(text: &str) -> Result<PeerId, String> {
    let text = text.trim();
    if let Ok(peer) = text.parse::<PeerId>() {
        peer_to_endpoint(&peer).map_err(|e| e.to_string())?;
        return Ok(peer);
    }
    let endpoint: iroh::EndpointId = text.parse().map_err(|_| {
        format!("{text:?} is neither a libp2p peer id (12D3KooW…) nor an iroh endpoint id")
    })?;
    endpoint_to_peer(&endpoint).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_secret_gives_matching_ids_that_map_both_ways() {
        for _ in 0..20 {
            let id = Identity::generate();
            let peer = id.peer_id();
            let endpoint = id.endpoint_id();
            assert_eq!(peer_to_endpoint(&peer).expect("ed25519"), endpoint);
            assert_eq!(endpoint_to_peer(&endpoint).expect("valid"), peer);
            assert!(peer.to_base58().starts_with("12D3KooW"));
        }
    }

    #[test]
    fn an_identity_is_written_either_way() {
        let id = Identity::generate();
        let peer = id.peer_id();
        assert_eq!(parse_id(&peer.to_string()), Ok(peer));
        assert_eq!(parse_id(&format!(" {} ", id.endpoint_id())), Ok(peer));
        let err = parse_id("fleet-node-7").expect_err("garbage");
        assert!(err.contains("neither a libp2p peer id"), "{err}");
        let err = parse_id("12D3KooWnope").expect_err("not ed25519");
        assert!(err.contains("not an ed25519 key"), "{err}");
    }

    #[test]
    fn a_non_ed25519_peer_id_is_refused_with_a_clear_error() {
        // A PeerId of a SHA-256 multihash (how RSA keys are named).
        let mh = libp2p::multihash::Multihash::<64>::wrap(0x12, &[7u8; 32]).expect("multihash");
        let peer = PeerId::from_multihash(mh).expect("peer id");
        let err = peer_to_endpoint(&peer).expect_err("not ed25519");
        assert!(err.to_string().contains("not an ed25519 key"), "{err}");
    }

    #[test]
    fn the_secret_is_generated_once_with_mode_0600_and_read_back() {
        let dir = std::env::temp_dir().join(format!("switchyard-id-{}", std::process::id()));
        let path = dir.join("nested").join("identity.key");
        let first = Identity::load_or_generate(&path).expect("generated");
        let again = Identity::load_or_generate(&path).expect("read");
        assert_eq!(first.peer_id(), again.peer_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, b"short").expect("overwrite");
        let err = Identity::load_or_generate(&path).expect_err("bad secret");
        assert!(err.to_string().contains("exactly 32"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
