//! Which transports a request to a peer tries, best first: a pure function
//! of the local mode, what is known of the peer, the strategy and the
//! turn. The bridge only gathers those and follows the answer.

use std::time::Duration;

use switchyard_crds::{NetworkMode, RoutingStrategy};

use crate::peers::RouteFacts;
use crate::transport::{PerTransport, Transport};

/// The transports to try for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Best first; each with whether the peer is believed to run it.
    pub order: Vec<(Transport, bool)>,
    /// Send on every transport at once (under LowestLatency: nothing
    /// measured yet, or a turn that measures both again).
    pub race: bool,
    /// The transport the strategy put first, moved second because only the
    /// other has a connection open to the peer: worth connecting in the
    /// background, so that the next request finds it warm.
    pub warm: Option<Transport>,
}

/// What a request to one peer is routed by.
#[derive(Debug, Clone, Copy)]
pub struct RouteInput<'a> {
    /// This node's mode.
    pub local: NetworkMode,
    /// Whether we have the peer's address, per transport (libp2p, iroh).
    pub addressed: PerTransport<bool>,
    /// What the peer told us and what we measured.
    pub facts: &'a RouteFacts,
    /// The strategy; the local mode's default when `None`.
    pub strategy: Option<RoutingStrategy>,
    /// Under LoadBalance: iroh goes first on this many of every 100 turns.
    pub iroh_share: u8,
    /// A counter that moves on with every request (LoadBalance's turn).
    pub turn: u64,
}

const BOTH: [Transport; 2] = Transport::ALL;

/// Under LowestLatency, one request in this many is sent on both
/// transports, to keep both measured.
pub const EXPLORE_EVERY: u64 = 64;

/// The transports to try, best first.
///
/// Only transports this node runs and has an address for are tried. Those
/// the peer last said it runs come first; the others last rather than
/// never, as the peer may have switched since. Among them, the strategy
/// orders: the preferred one first; LoadBalance puts iroh first on
/// `iroh_share` of every 100 turns, interleaved; LowestLatency the faster
/// first, racing both until both are measured and then on one turn in
/// [`EXPLORE_EVERY`]; HighestSuccessRate the more
/// reliable first (unmeasured counts as reliable). A transport with a
/// connection open goes before one the peer also runs but that has none:
/// a request does not wait for a handshake while a warm path exists, and
/// the cold one is named in [`Route::warm`] (not when racing, which sends
/// on both anyway).
pub fn route(input: &RouteInput<'_>) -> Route {
    let RouteInput {
        local,
        addressed,
        facts,
        ..
    } = *input;
    let reachable = |t: Transport| t.runs_in(local) && addressed[t];
    let advertised = |t: Transport| facts.mode.is_none_or(|m| t.runs_in(m));
    let strategy = input.strategy.unwrap_or_else(|| local.default_strategy());
    let mut race = false;
    let mut order = match strategy {
        RoutingStrategy::PreferLibP2p => vec![Transport::LibP2p, Transport::Iroh],
        RoutingStrategy::PreferIroh => vec![Transport::Iroh, Transport::LibP2p],
        RoutingStrategy::LoadBalance => {
            let n = input.turn % 100;
            let share = u64::from(input.iroh_share.min(100));
            if (n + 1) * share / 100 > n * share / 100 {
                vec![Transport::Iroh, Transport::LibP2p]
            } else {
                vec![Transport::LibP2p, Transport::Iroh]
            }
        }
        RoutingStrategy::LowestLatency => {
            // Until both are measured, ask both: the answers measure them.
            // And every EXPLORE_EVERY-th turn after: otherwise the slower
            // one is never asked again, and a first measurement that was
            // unlucky (a dial, a busy moment) decides for good.
            let open = |t: &Transport| reachable(*t) && advertised(*t);
            race = BOTH.iter().any(|t| open(t) && facts.latency(*t).is_none())
                || (BOTH.iter().all(open) && input.turn.is_multiple_of(EXPLORE_EVERY));
            let mut v = BOTH.to_vec();
            v.sort_by_key(|t| facts.latency(*t).unwrap_or(Duration::ZERO));
            v
        }
        RoutingStrategy::HighestSuccessRate => {
            let s = |t: Transport| facts.success_rate(t).unwrap_or(1.0);
            let mut v = BOTH.to_vec();
            v.sort_by(|a, b| s(*b).total_cmp(&s(*a)));
            v
        }
    };
    order.retain(|t| reachable(*t));
    order.sort_by_key(|t| !advertised(*t));
    let mut warm = None;
    if let [first, second] = order[..]
        && !race
        && advertised(first)
        && advertised(second)
        && !facts.connected[first]
        && facts.connected[second]
    {
        warm = Some(first);
        order.swap(0, 1);
    }
    Route {
        order: order.into_iter().map(|t| (t, advertised(t))).collect(),
        race,
        warm,
    }
}

/// How many hedges a node's requests may send: a token bucket filled by
/// requests, not by time. Each request earns `share` of a hedge, up to
/// [`HedgeBudget::BURST`]; each hedge spends one.
///
/// A hedge helps when one request is slow for its own reasons. When every
/// request is slow because the node or its machine is overloaded, hedging
/// each one doubles the load that slowed it, and the overload feeds
/// itself: at 100 agents on two cores, 40% of requests were hedges in the
/// stall. The budget caps hedges at `share` of requests, while an
/// occasional slow request still hedges at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HedgeBudget {
    /// In thousandths of a hedge, so that shares add up exactly.
    tokens: u32,
    earns: u32,
}

impl HedgeBudget {
    /// Hedges that may go in a row after a quiet spell.
    pub const BURST: u32 = 3;
    const ONE: u32 = 1000;

    /// A full budget, earning `share` (0 to 1) of a hedge per request.
    pub fn new(share: f64) -> Self {
        let share = if share.is_finite() {
            share.clamp(0.0, 1.0)
        } else {
            0.0
        };
        HedgeBudget {
            tokens: Self::BURST * Self::ONE,
            // In 0..=1000 after the clamp.
            earns: (share * f64::from(Self::ONE)).round() as u32,
        }
    }

    /// A request started.
    pub fn earn(&mut self) {
        self.tokens = (self.tokens + self.earns).min(Self::BURST * Self::ONE);
    }

    /// Whether a hedge may go now (and if so, spend it).
    pub fn spend(&mut self) -> bool {
        if self.tokens >= Self::ONE {
            self.tokens -= Self::ONE;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Every peer-facts case the table runs: the peer's advertised mode
    /// (or none), latencies and success rates, each unknown or favouring
    /// either transport.
    fn facts_cases() -> Vec<RouteFacts> {
        let modes = std::iter::once(None).chain(NetworkMode::ALL.map(Some));
        let latencies = [
            PerTransport::new(None, None),
            PerTransport::new(Some(MS), None),
            PerTransport::new(Some(MS), Some(5 * MS)),
            PerTransport::new(Some(5 * MS), Some(MS)),
        ];
        let rates = [
            PerTransport::new(None, None),
            PerTransport::new(Some(0.9), Some(0.5)),
            PerTransport::new(Some(0.5), Some(0.9)),
        ];
        let connected = [
            PerTransport::new(false, false),
            PerTransport::new(true, false),
            PerTransport::new(false, true),
            PerTransport::new(true, true),
        ];
        let mut out = Vec::new();
        for mode in modes {
            for latency in latencies {
                for success_rate in rates {
                    for connected in connected {
                        out.push(RouteFacts {
                            mode,
                            latency,
                            success_rate,
                            heard: PerTransport::default(),
                            connected,
                        });
                    }
                }
            }
        }
        out
    }

    fn first_choice(
        strategy: RoutingStrategy,
        facts: &RouteFacts,
        turn: u64,
        share: u8,
    ) -> Transport {
        use Transport::{Iroh, LibP2p};
        match strategy {
            RoutingStrategy::PreferLibP2p => LibP2p,
            RoutingStrategy::PreferIroh => Iroh,
            RoutingStrategy::LoadBalance => {
                let n = turn % 100;
                let s = u64::from(share);
                if (n + 1) * s / 100 > n * s / 100 {
                    Iroh
                } else {
                    LibP2p
                }
            }
            RoutingStrategy::LowestLatency => {
                let l = |t: Transport| facts.latency(t).unwrap_or(Duration::ZERO);
                if l(Iroh) < l(LibP2p) { Iroh } else { LibP2p }
            }
            RoutingStrategy::HighestSuccessRate => {
                let s = |t: Transport| facts.success_rate(t).unwrap_or(1.0);
                if s(Iroh) > s(LibP2p) { Iroh } else { LibP2p }
            }
        }
    }

    /// Every strategy × local mode × addresses × peer facts: only
    /// reachable transports, advertised ones first, and among those the
    /// strategy's choice.
    #[test]
    fn every_strategy_mode_and_peer_routes_by_the_rules() {
        let strategies = std::iter::once(None).chain(RoutingStrategy::ALL.map(Some));
        let mut cases = 0;
        for strategy in strategies {
            for local in NetworkMode::ALL {
                for (l, i) in [(true, true), (true, false), (false, true), (false, false)] {
                    let addressed = PerTransport::new(l, i);
                    for facts in facts_cases() {
                        for turn in [0, 1, 2, 3, EXPLORE_EVERY] {
                            let input = RouteInput {
                                local,
                                addressed,
                                facts: &facts,
                                strategy,
                                iroh_share: 50,
                                turn,
                            };
                            let r = route(&input);
                            cases += 1;
                            let ctx = format!("{input:?} -> {r:?}");
                            let runs = |t: Transport| match t {
                                Transport::LibP2p => local.has_libp2p(),
                                Transport::Iroh => local.has_iroh(),
                            };
                            let reachable: Vec<Transport> = BOTH
                                .into_iter()
                                .filter(|t| runs(*t) && addressed[*t])
                                .collect();
                            let tried: Vec<Transport> = r.order.iter().map(|(t, _)| *t).collect();
                            let mut sorted = tried.clone();
                            sorted.sort_by_key(|t| *t as usize);
                            assert_eq!(
                                sorted, reachable,
                                "only what is reachable, each once: {ctx}"
                            );
                            let adv: Vec<bool> = r.order.iter().map(|(_, a)| *a).collect();
                            assert!(
                                adv.windows(2).all(|w| w[0] >= w[1]),
                                "advertised first: {ctx}"
                            );
                            for (t, a) in &r.order {
                                let expected = facts.mode.is_none_or(|m| match t {
                                    Transport::LibP2p => m.has_libp2p(),
                                    Transport::Iroh => m.has_iroh(),
                                });
                                assert_eq!(*a, expected, "{t:?} advertised: {ctx}");
                            }
                            let s = strategy.unwrap_or_else(|| local.default_strategy());
                            if r.order.len() == 2 && adv == [true, true] {
                                let choice = first_choice(s, &facts, turn, 50);
                                let cold = !r.race
                                    && !facts.connected[choice]
                                    && facts.connected[choice.other()];
                                if cold {
                                    assert_eq!(tried[0], choice.other(), "warm first: {ctx}");
                                    assert_eq!(r.warm, Some(choice), "{ctx}");
                                } else {
                                    assert_eq!(tried[0], choice, "{ctx}");
                                    assert_eq!(r.warm, None, "{ctx}");
                                }
                            } else {
                                assert_eq!(r.warm, None, "{ctx}");
                            }
                            let unmeasured = r
                                .order
                                .iter()
                                .any(|(t, a)| *a && facts.latency(*t).is_none());
                            let remeasure =
                                adv == [true, true] && turn.is_multiple_of(EXPLORE_EVERY);
                            assert_eq!(
                                r.race,
                                s == RoutingStrategy::LowestLatency && (unmeasured || remeasure),
                                "races only under LowestLatency, until measured and then once in {EXPLORE_EVERY} turns: {ctx}"
                            );
                        }
                    }
                }
            }
        }
        assert_eq!(cases, 6 * 5 * 4 * 288 * 5);
    }

    #[test]
    fn named_cases() {
        let unknown = RouteFacts::default();
        let input = |local, strategy, facts| RouteInput {
            local,
            addressed: PerTransport::new(true, true),
            facts,
            strategy,
            iroh_share: 50,
            turn: 1,
        };
        use Transport::{Iroh, LibP2p};
        // The mode's default strategy.
        let r = route(&input(NetworkMode::DualPreferIroh, None, &unknown));
        assert_eq!(r.order, vec![(Iroh, true), (LibP2p, true)]);
        // A peer that said it runs only libp2p: iroh last, not never.
        let libp2p_only = RouteFacts {
            mode: Some(NetworkMode::LibP2pOnly),
            ..RouteFacts::default()
        };
        let r = route(&input(NetworkMode::DualPreferIroh, None, &libp2p_only));
        assert_eq!(r.order, vec![(LibP2p, true), (Iroh, false)]);
        // An iroh-only node never tries libp2p.
        let r = route(&input(
            NetworkMode::IrohOnly,
            Some(RoutingStrategy::PreferLibP2p),
            &unknown,
        ));
        assert_eq!(r.order, vec![(Iroh, true)]);
        // LowestLatency races until both are measured, then picks.
        let r = route(&input(
            NetworkMode::DualLoadBalance,
            Some(RoutingStrategy::LowestLatency),
            &unknown,
        ));
        assert!(r.race);
        let measured = RouteFacts {
            latency: PerTransport::new(Some(9 * MS), Some(2 * MS)),
            ..RouteFacts::default()
        };
        let r = route(&input(
            NetworkMode::DualLoadBalance,
            Some(RoutingStrategy::LowestLatency),
            &measured,
        ));
        assert!(!r.race);
        assert_eq!(r.order[0].0, Iroh);
        // ...and once in EXPLORE_EVERY turns races again, to measure both.
        let r = route(&RouteInput {
            turn: 2 * EXPLORE_EVERY,
            ..input(
                NetworkMode::DualLoadBalance,
                Some(RoutingStrategy::LowestLatency),
                &measured,
            )
        });
        assert!(r.race);
        assert_eq!(r.order[0].0, Iroh);
    }

    #[test]
    fn load_balance_puts_iroh_first_on_its_share_of_every_100_turns_interleaved() {
        let facts = RouteFacts::default();
        for share in [0u8, 1, 25, 50, 99, 100] {
            let firsts: Vec<bool> = (0..100)
                .map(|turn| {
                    let r = route(&RouteInput {
                        local: NetworkMode::DualLoadBalance,
                        addressed: PerTransport::new(true, true),
                        facts: &facts,
                        strategy: None,
                        iroh_share: share,
                        turn,
                    });
                    r.order[0].0 == Transport::Iroh
                })
                .collect();
            let n = firsts.iter().filter(|f| **f).count();
            assert_eq!(n, usize::from(share), "share {share}");
            if share == 50 {
                assert!(
                    firsts.windows(2).all(|w| w[0] != w[1]),
                    "interleaved, not in runs"
                );
            }
        }
    }

    #[test]
    fn hedges_are_capped_at_their_share_of_requests_after_a_burst() {
        let mut b = HedgeBudget::new(0.1);
        // A slow spell in which every request would hedge.
        let hedged = (0..1000)
            .filter(|_| {
                b.earn();
                b.spend()
            })
            .count();
        // The burst of 3 (the budget was full), then one in ten of the
        // 997 requests after it, once their shares add up to a hedge.
        assert_eq!(hedged, 3 + 99);
        // Quiet requests refill it, to the burst and no further.
        for _ in 0..1000 {
            b.earn();
        }
        assert_eq!((0..20).filter(|_| b.spend()).count(), 3);
        // Share 1: every request may hedge; 0: none beyond the burst.
        let mut all = HedgeBudget::new(1.0);
        assert!((0..100).all(|_| {
            all.earn();
            all.spend()
        }));
        let mut none = HedgeBudget::new(f64::NAN);
        assert_eq!(
            (0..100)
                .filter(|_| {
                    none.earn();
                    none.spend()
                })
                .count(),
            3
        );
    }
}
