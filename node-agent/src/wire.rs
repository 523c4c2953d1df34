//! One message model for both transports: a versioned envelope carrying a
//! request id, the sender's network mode and a payload, sent as one
//! length-prefixed frame with a maximum size. libp2p's request-response
//! codec and iroh's per-request bidirectional streams both read and write
//! exactly this.
//!
//! Frame: `u32` big-endian body length, then the body:
//! `version: u8 = 1 | kind: u8 | sender mode: u8 | request id: u64 BE | payload`.
//! Responses carry the id of their request; because a hedged request may
//! arrive twice (once per transport), handlers de-duplicate by request id
//! or are idempotent.

use bytes::{BufMut, Bytes, BytesMut};
use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use switchyard_crds::NetworkMode;

/// The envelope version this build speaks.
pub const VERSION: u8 = 1;
/// Bytes before the payload in a body.
pub const HEADER_LEN: usize = 11;
/// The default maximum body size: a 4 MiB payload plus the header.
pub const DEFAULT_MAX_FRAME: usize = 4 * 1024 * 1024 + HEADER_LEN;
/// The largest maximum frame size a node may be configured with: every
/// connection may hold one frame of it in memory.
pub const MAX_FRAME_LIMIT: usize = 64 * 1024 * 1024;

/// What an envelope is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A request.
    Request,
    /// A successful response.
    Response,
    /// The request was refused by the application: the payload is a UTF-8
    /// reason. Final: asking again elsewhere gets the same answer.
    Refused,
    /// The request was not handled because the transport it came on is
    /// retiring on the answering node (a live mode switch): the payload is
    /// a UTF-8 reason. Transient: the requester tries another transport,
    /// or this one again once the answerer's advertised mode says so.
    Retiring,
    /// A heartbeat: answered by the stack itself with a `Pong`, never
    /// passed to the application.
    Ping,
    /// The answer to a `Ping`; it carries the answerer's mode like every
    /// envelope.
    Pong,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Request => 0,
            Kind::Response => 1,
            Kind::Refused => 2,
            Kind::Retiring => 3,
            Kind::Ping => 4,
            Kind::Pong => 5,
        }
    }

    fn from_code(code: u8) -> Option<Kind> {
        Some(match code {
            0 => Kind::Request,
            1 => Kind::Response,
            2 => Kind::Refused,
            3 => Kind::Retiring,
            4 => Kind::Ping,
            5 => Kind::Pong,
            _ => return None,
        })
    }
}

/// One message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Request or response.
    pub kind: Kind,
    /// The sender's network mode when it sent this: how a peer learns the
    /// other side's capabilities on every exchange.
    pub mode: NetworkMode,
    /// Chosen by the requester; responses echo it.
    pub request_id: u64,
    /// Application bytes.
    pub payload: Bytes,
}

/// Why a frame was rejected.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The announced body is larger than allowed.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The body is shorter than the header.
    #[error("frame of {0} bytes is shorter than the {HEADER_LEN}-byte header")]
    Truncated(usize),
    /// An envelope version this build does not speak.
    #[error("envelope version {0} is not supported (this node speaks {VERSION})")]
    Version(u8),
    /// An unknown kind byte.
    #[error("unknown envelope kind {0}")]
    Kind(u8),
    /// An unknown mode byte.
    #[error("unknown network mode {0}")]
    Mode(u8),
    /// The connection failed or closed mid-frame.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl WireError {
    /// Whether the peer sent something malformed (as opposed to the
    /// connection failing).
    pub fn is_malformed(&self) -> bool {
        !matches!(self, WireError::Io(_))
    }
}

fn mode_code(mode: NetworkMode) -> u8 {
    NetworkMode::ALL
        .iter()
        .position(|m| *m == mode)
        .and_then(|i| u8::try_from(i).ok())
        .unwrap_or(0)
}

impl Envelope {
    /// A request.
    pub fn request(mode: NetworkMode, request_id: u64, payload: Bytes) -> Self {
        Envelope {
            kind: Kind::Request,
            mode,
            request_id,
            payload,
        }
    }

    /// The body of this envelope's frame.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(HEADER_LEN + self.payload.len());
        b.put_u8(VERSION);
        b.put_u8(self.kind.code());
        b.put_u8(mode_code(self.mode));
        b.put_u64(self.request_id);
        b.put_slice(&self.payload);
        b.freeze()
    }

    /// Read a body.
    pub fn decode(body: Bytes) -> Result<Self, WireError> {
        if body.len() < HEADER_LEN {
            return Err(WireError::Truncated(body.len()));
        }
        if body[0] != VERSION {
            return Err(WireError::Version(body[0]));
        }
        let kind = Kind::from_code(body[1]).ok_or(WireError::Kind(body[1]))?;
        let mode = NetworkMode::ALL
            .get(usize::from(body[2]))
            .copied()
            .ok_or(WireError::Mode(body[2]))?;
        let mut id = [0u8; 8];
        id.copy_from_slice(&body[3..11]);
        Ok(Envelope {
            kind,
            mode,
            request_id: u64::from_be_bytes(id),
            payload: body.slice(HEADER_LEN..),
        })
    }
}

/// The most a frame's body buffer holds before its bytes arrive.
const FIRST_READ: usize = 64 * 1024;

/// Read one frame; refuses bodies over `max` before reading them.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Envelope, WireError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = usize::try_from(u32::from_be_bytes(len)).unwrap_or(usize::MAX);
    if len > max {
        return Err(WireError::TooLarge { len, max });
    }
    // Not allocated at the claimed length before a byte of it arrives: a
    // peer claiming the maximum and sending nothing costs 64 KiB, not
    // 4 MiB. Once the first 64 KiB are in, the whole is allocated (zeroed
    // by the allocator, as before) and they are copied over.
    let first = len.min(FIRST_READ);
    let mut body = vec![0u8; first];
    r.read_exact(&mut body).await?;
    if len > first {
        let mut whole = vec![0u8; len];
        whole[..first].copy_from_slice(&body);
        r.read_exact(&mut whole[first..]).await?;
        body = whole;
    }
    Envelope::decode(Bytes::from(body))
}

/// Write one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    envelope: &Envelope,
    max: usize,
) -> Result<(), WireError> {
    let body = envelope.encode();
    if body.len() > max {
        return Err(WireError::TooLarge {
            len: body.len(),
            max,
        });
    }
    let len = u32::try_from(body.len()).map_err(|_| WireError::TooLarge {
        len: body.len(),
        max,
    })?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(&body).await?;
    w.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_in_every_mode() {
        for mode in NetworkMode::ALL {
            for kind in [
                Kind::Request,
                Kind::Response,
                Kind::Refused,
                Kind::Retiring,
                Kind::Ping,
                Kind::Pong,
            ] {
                let e = Envelope {
                    kind,
                    mode,
                    request_id: 0xdead_beef_0102_0304,
                    payload: Bytes::from_static(b"hello"),
                };
                assert_eq!(Envelope::decode(e.encode()).expect("decodes"), e);
            }
        }
    }

    #[test]
    fn garbage_is_refused_with_the_reason() {
        let bad = |b: &'static [u8]| Envelope::decode(Bytes::from_static(b)).expect_err("bad");
        assert!(matches!(bad(b"short"), WireError::Truncated(5)));
        assert!(matches!(
            bad(b"\x09\x00\x00........"),
            WireError::Version(9)
        ));
        assert!(matches!(bad(b"\x01\x07\x00........"), WireError::Kind(7)));
        assert!(matches!(bad(b"\x01\x00\x09........"), WireError::Mode(9)));
    }

    #[tokio::test]
    async fn frames_over_the_limit_are_refused_before_they_are_read() {
        let mut buf = Vec::new();
        let e = Envelope::request(NetworkMode::IrohOnly, 7, Bytes::from(vec![1u8; 100]));
        write_frame(&mut buf, &e, 1024).await.expect("written");
        let read = read_frame(&mut buf.as_slice(), 1024).await.expect("read");
        assert_eq!(read, e);
        let err = read_frame(&mut buf.as_slice(), 50)
            .await
            .expect_err("too big");
        assert!(matches!(err, WireError::TooLarge { len: 111, max: 50 }));
        // A length prefix claiming 4 GiB is refused without allocating it.
        let huge = [0xffu8, 0xff, 0xff, 0xff, 0, 0];
        let err = read_frame(&mut huge.as_slice(), DEFAULT_MAX_FRAME)
            .await
            .expect_err("too big");
        assert!(err.is_malformed());
    }

    /// Records the largest buffer it was asked to fill, then ends.
    struct Silent {
        largest: usize,
    }

    impl AsyncRead for Silent {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.largest = self.largest.max(buf.len());
            std::task::Poll::Ready(Ok(0))
        }
    }

    #[tokio::test]
    async fn a_frame_claiming_the_maximum_and_sending_nothing_costs_no_buffer_of_that_size() {
        let len = u32::try_from(DEFAULT_MAX_FRAME).expect("fits");
        let head = len.to_be_bytes();
        let mut r = head.as_slice().chain(Silent { largest: 0 });
        let err = read_frame(&mut r, DEFAULT_MAX_FRAME)
            .await
            .expect_err("truncated");
        assert!(
            matches!(&err, WireError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof),
            "{err}"
        );
        let (_, silent) = r.into_inner();
        assert!(
            silent.largest <= FIRST_READ,
            "asked to fill {} bytes",
            silent.largest
        );
    }
}
