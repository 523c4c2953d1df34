//! The two transports, and a value per transport.

use std::ops::{Index, IndexMut};

/// Which stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// libp2p: TCP + Noise + Yamux, request-response.
    LibP2p = 0,
    /// iroh: QUIC, one bidirectional stream per request.
    Iroh = 1,
}

impl Transport {
    /// Both, libp2p first.
    pub const ALL: [Transport; 2] = [Transport::LibP2p, Transport::Iroh];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::LibP2p => "libp2p",
            Transport::Iroh => "iroh",
        }
    }

    /// The transport that is not this one.
    pub fn other(self) -> Transport {
        match self {
            Transport::LibP2p => Transport::Iroh,
            Transport::Iroh => Transport::LibP2p,
        }
    }

    /// Whether `mode` runs this transport.
    pub fn runs_in(self, mode: switchyard_crds::NetworkMode) -> bool {
        match self {
            Transport::LibP2p => mode.has_libp2p(),
            Transport::Iroh => mode.has_iroh(),
        }
    }
}

/// One `T` per transport, indexed by [`Transport`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct PerTransport<T> {
    /// libp2p's.
    pub libp2p: T,
    /// iroh's.
    pub iroh: T,
}

impl<T> PerTransport<T> {
    /// libp2p's and iroh's.
    pub const fn new(libp2p: T, iroh: T) -> Self {
        PerTransport { libp2p, iroh }
    }

    /// Each transport's, from `f`.
    pub fn from_fn(mut f: impl FnMut(Transport) -> T) -> Self {
        PerTransport {
            libp2p: f(Transport::LibP2p),
            iroh: f(Transport::Iroh),
        }
    }

    /// Each transport with its value, libp2p first.
    pub fn iter(&self) -> impl Iterator<Item = (Transport, &T)> {
        [
            (Transport::LibP2p, &self.libp2p),
            (Transport::Iroh, &self.iroh),
        ]
        .into_iter()
    }

    /// Each value mapped by `f`.
    pub fn map<U>(&self, mut f: impl FnMut(&T) -> U) -> PerTransport<U> {
        PerTransport {
            libp2p: f(&self.libp2p),
            iroh: f(&self.iroh),
        }
    }
}

impl<T> Index<Transport> for PerTransport<T> {
    type Output = T;
    fn index(&self, t: Transport) -> &T {
        match t {
            Transport::LibP2p => &self.libp2p,
            Transport::Iroh => &self.iroh,
        }
    }
}

impl<T> IndexMut<Transport> for PerTransport<T> {
    fn index_mut(&mut self, t: Transport) -> &mut T {
        match t {
            Transport::LibP2p => &mut self.libp2p,
            Transport::Iroh => &mut self.iroh,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_found_by_their_transport() {
        let mut v = PerTransport::new(1, 2);
        assert_eq!((v[Transport::LibP2p], v[Transport::Iroh]), (1, 2));
        v[Transport::Iroh] += 10;
        assert_eq!(v.iroh, 12);
        let names = PerTransport::from_fn(Transport::as_str);
        assert_eq!(names.map(|s| s.len()), PerTransport::new(6, 4));
        let order: Vec<Transport> = v.iter().map(|(t, _)| t).collect();
        assert_eq!(order, Transport::ALL);
    }
}
