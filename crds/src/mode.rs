//! `NetworkMode` and `RoutingStrategy`: the two enums every part of Switchyard
//! shares, plus the "can these two modes talk" relation behind the island
//! invariant.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The transports a node runs and how it prefers them.
///
/// Two nodes can exchange messages iff they share a transport, so a
/// `LibP2pOnly` node and an `IrohOnly` node cannot talk. The variants are
/// declared in migration order, from all-libp2p to all-iroh.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum NetworkMode {
    /// Only the libp2p stack runs.
    LibP2pOnly,
    /// Both stacks run; requests prefer libp2p and fail over to iroh.
    DualPreferLibP2p,
    /// Both stacks run; requests are spread over both.
    DualLoadBalance,
    /// Both stacks run; requests prefer iroh and fail over to libp2p.
    DualPreferIroh,
    /// Only the iroh stack runs.
    IrohOnly,
}

impl NetworkMode {
    /// Every mode, in migration order.
    pub const ALL: [NetworkMode; 5] = [
        NetworkMode::LibP2pOnly,
        NetworkMode::DualPreferLibP2p,
        NetworkMode::DualLoadBalance,
        NetworkMode::DualPreferIroh,
        NetworkMode::IrohOnly,
    ];

    /// The name used in manifests, e.g. `DualPreferIroh`.
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::LibP2pOnly => "LibP2pOnly",
            NetworkMode::DualPreferLibP2p => "DualPreferLibP2p",
            NetworkMode::DualLoadBalance => "DualLoadBalance",
            NetworkMode::DualPreferIroh => "DualPreferIroh",
            NetworkMode::IrohOnly => "IrohOnly",
        }
    }

    /// Whether a node in this mode runs the libp2p stack.
    pub fn has_libp2p(self) -> bool {
        self != NetworkMode::IrohOnly
    }

    /// Whether a node in this mode runs the iroh stack.
    pub fn has_iroh(self) -> bool {
        self != NetworkMode::LibP2pOnly
    }

    /// Whether both stacks run.
    pub fn is_dual(self) -> bool {
        self.has_libp2p() && self.has_iroh()
    }

    /// Whether a node in `self` and a node in `other` share a transport.
    pub fn can_talk(self, other: NetworkMode) -> bool {
        (self.has_libp2p() && other.has_libp2p()) || (self.has_iroh() && other.has_iroh())
    }

    /// The routing strategy a node uses in this mode unless it overrides it.
    pub fn default_strategy(self) -> RoutingStrategy {
        match self {
            NetworkMode::LibP2pOnly | NetworkMode::DualPreferLibP2p => {
                RoutingStrategy::PreferLibP2p
            }
            NetworkMode::DualLoadBalance => RoutingStrategy::LoadBalance,
            NetworkMode::DualPreferIroh | NetworkMode::IrohOnly => RoutingStrategy::PreferIroh,
        }
    }

    /// The dual mode closest to `self` on the way to `target`: the safe
    /// stepping stone when a direct move to a single-stack mode would
    /// split the fleet.
    pub fn dual_toward(target: NetworkMode) -> NetworkMode {
        match target {
            NetworkMode::LibP2pOnly => NetworkMode::DualPreferLibP2p,
            NetworkMode::IrohOnly => NetworkMode::DualPreferIroh,
            dual => dual,
        }
    }
}

/// Whether a set of modes splits the fleet: it holds both `LibP2pOnly` and
/// `IrohOnly`, whose nodes cannot talk to each other.
pub fn forms_island<I: IntoIterator<Item = NetworkMode>>(modes: I) -> bool {
    let mut libp2p_only = false;
    let mut iroh_only = false;
    for mode in modes {
        libp2p_only |= mode == NetworkMode::LibP2pOnly;
        iroh_only |= mode == NetworkMode::IrohOnly;
        if libp2p_only && iroh_only {
            return true;
        }
    }
    false
}

impl fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no `NetworkMode` or `RoutingStrategy`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}: use one of {expected}")]
pub struct UnknownVariant {
    kind: &'static str,
    value: String,
    expected: &'static str,
}

impl FromStr for NetworkMode {
    type Err = UnknownVariant;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NetworkMode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| UnknownVariant {
                kind: "network mode",
                value: s.to_owned(),
                expected: "LibP2pOnly, DualPreferLibP2p, DualLoadBalance, DualPreferIroh, IrohOnly",
            })
    }
}

/// How a dual-mode node picks the transport for each request.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum RoutingStrategy {
    /// libp2p first; iroh when libp2p fails or the peer lacks it.
    PreferLibP2p,
    /// iroh first; libp2p when iroh fails or the peer lacks it.
    PreferIroh,
    /// Spread requests over both transports.
    LoadBalance,
    /// The transport with the lowest measured latency to that peer.
    LowestLatency,
    /// The transport with the highest recent success rate to that peer.
    HighestSuccessRate,
}

impl RoutingStrategy {
    /// Every strategy.
    pub const ALL: [RoutingStrategy; 5] = [
        RoutingStrategy::PreferLibP2p,
        RoutingStrategy::PreferIroh,
        RoutingStrategy::LoadBalance,
        RoutingStrategy::LowestLatency,
        RoutingStrategy::HighestSuccessRate,
    ];

    /// The name used in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            RoutingStrategy::PreferLibP2p => "PreferLibP2p",
            RoutingStrategy::PreferIroh => "PreferIroh",
            RoutingStrategy::LoadBalance => "LoadBalance",
            RoutingStrategy::LowestLatency => "LowestLatency",
            RoutingStrategy::HighestSuccessRate => "HighestSuccessRate",
        }
    }
}

impl fmt::Display for RoutingStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RoutingStrategy {
    type Err = UnknownVariant;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RoutingStrategy::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| UnknownVariant {
                kind: "routing strategy",
                value: s.to_owned(),
                expected: "PreferLibP2p, PreferIroh, LoadBalance, LowestLatency, HighestSuccessRate",
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_two_single_stack_modes_cannot_talk() {
        for a in NetworkMode::ALL {
            for b in NetworkMode::ALL {
                let split = matches!(
                    (a, b),
                    (NetworkMode::LibP2pOnly, NetworkMode::IrohOnly)
                        | (NetworkMode::IrohOnly, NetworkMode::LibP2pOnly)
                );
                assert_eq!(a.can_talk(b), !split, "{a} <-> {b}");
                assert_eq!(a.can_talk(b), b.can_talk(a), "relation is symmetric");
            }
        }
    }

    #[test]
    fn island_needs_both_single_stack_modes() {
        use NetworkMode::*;
        assert!(!forms_island([LibP2pOnly, DualPreferIroh, DualLoadBalance]));
        assert!(!forms_island([IrohOnly, DualPreferLibP2p]));
        assert!(forms_island([LibP2pOnly, DualLoadBalance, IrohOnly]));
        assert!(!forms_island([]));
    }

    #[test]
    fn default_strategy_follows_the_mode_preference() {
        assert_eq!(
            NetworkMode::DualPreferIroh.default_strategy(),
            RoutingStrategy::PreferIroh
        );
        assert_eq!(
            NetworkMode::DualLoadBalance.default_strategy(),
            RoutingStrategy::LoadBalance
        );
        assert_eq!(
            NetworkMode::DualPreferLibP2p.default_strategy(),
            RoutingStrategy::PreferLibP2p
        );
    }

    #[test]
    fn names_round_trip_and_unknown_names_list_the_choices() {
        for m in NetworkMode::ALL {
            assert_eq!(m.as_str().parse::<NetworkMode>(), Ok(m));
            assert_eq!(serde_json::to_value(m).ok(), Some(m.as_str().into()));
        }
        for s in RoutingStrategy::ALL {
            assert_eq!(s.as_str().parse::<RoutingStrategy>(), Ok(s));
        }
        let err = "Hybrid".parse::<NetworkMode>().err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("IrohOnly") && e.contains("Hybrid")));
    }
}
