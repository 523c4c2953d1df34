//! What a FleetNode asks of its agent, decided without touching the node:
//! [`apply_spec`] reads the object the watch delivered and what the node
//! runs now, and returns the changes to make and the first [`Problem`]
//! found, which the agent reports in its `ModeApplied` condition.
//!
//! The object is read untyped: a value written around validation (an
//! unknown mode, say) must be reported, not fail to deserialize.

use kube::ResourceExt as _;
use kube::api::DynamicObject;
use serde_json::Value;
use switchyard_crds::{ANNOTATION_INJECT_FAULTS, NetworkMode, RoutingStrategy};

/// What the node runs now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Current {
    /// Its mode.
    pub mode: NetworkMode,
    /// The strategy in effect.
    pub strategy: RoutingStrategy,
    /// Whether this agent honours the fault-injection annotation.
    pub allow_fault_injection: bool,
}

/// The routing a spec asks for: `spec.routingStrategy` (none: the mode's
/// default) and `spec.irohShare` (none: 50%).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Routing {
    /// The strategy override.
    pub strategy: Option<RoutingStrategy>,
    /// LoadBalance's share of requests sent over iroh first, in percent.
    pub iroh_share: Option<u8>,
}

/// What to change.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Applied {
    /// Switch to this mode; `None` when the node runs it already, or the
    /// spec names none or an unknown one.
    pub mode: Option<NetworkMode>,
    /// Set this routing; `None` leaves the routing as it is (the spec's
    /// was not valid).
    pub routing: Option<Routing>,
    /// Fail this share of sends per transport (libp2p, iroh); `None`
    /// leaves fault injection as it is (not allowed here, or malformed).
    pub faults: Option<(f64, f64)>,
    /// The annotation asks for faults this agent does not allow: ignored,
    /// and only logged.
    pub faults_ignored: bool,
    /// The first thing that could not be applied.
    pub problem: Option<Problem>,
}

/// Why (part of) a spec was not applied; [`Problem::reason`] is the
/// `ModeApplied` condition's reason and the message its text.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Problem {
    /// `spec.mode` is not a network mode.
    #[error("spec.mode {value} is not a network mode; keeping {keeping}")]
    UnknownMode {
        /// The value found, as JSON.
        value: String,
        /// The mode the node stays in.
        keeping: NetworkMode,
    },
    /// `spec.routingStrategy` is not a strategy.
    #[error("spec.routingStrategy {value} is not a routing strategy; keeping {keeping}")]
    UnknownStrategy {
        /// The value found, as JSON.
        value: String,
        /// The strategy the node keeps.
        keeping: RoutingStrategy,
    },
    /// `spec.irohShare` is not a whole percentage.
    #[error(
        "spec.irohShare {value} is not a whole percentage from 0 to 100; keeping the routing as it is"
    )]
    BadShare {
        /// The value found, as JSON.
        value: String,
    },
    /// The fault-injection annotation is malformed.
    #[error("{0}")]
    BadFaultInjection(String),
    /// The mode switch itself failed (found when acting, not here).
    #[error("switching to {to} failed: {error}")]
    SwitchFailed {
        /// The mode asked for.
        to: NetworkMode,
        /// Why it failed.
        error: String,
    },
}

impl Problem {
    /// The `ModeApplied` condition's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Problem::UnknownMode { .. } => "UnknownMode",
            Problem::UnknownStrategy { .. } => "UnknownStrategy",
            Problem::BadShare { .. } => "BadShare",
            Problem::BadFaultInjection(_) => "BadFaultInjection",
            Problem::SwitchFailed { .. } => "SwitchFailed",
        }
    }
}

/// Decide what `obj` asks of a node running `current`. Problems are
/// checked in the order mode, fault injection, routing; the first one
/// found is returned, and each part that is valid is applied regardless.
pub fn apply_spec(obj: &DynamicObject, current: &Current) -> Applied {
    let mut applied = Applied::default();
    let mut problems = Vec::new();
    match spec_mode(obj) {
        Ok(m) => applied.mode = m.filter(|m| *m != current.mode),
        Err(value) => problems.push(Problem::UnknownMode {
            value,
            keeping: current.mode,
        }),
    }
    let faults = obj.annotations().get(ANNOTATION_INJECT_FAULTS);
    if current.allow_fault_injection {
        match super::parse_faults(faults.map(String::as_str)) {
            Ok(f) => applied.faults = Some(f),
            Err(p) => problems.push(Problem::BadFaultInjection(p)),
        }
    } else {
        applied.faults_ignored = faults.is_some();
    }
    match routing(obj, current) {
        Ok(r) => applied.routing = Some(r),
        Err(p) => problems.push(p),
    }
    applied.problem = problems.into_iter().next();
    applied
}

/// `spec.mode`: none, a mode, or (`Err`) a value that is not a mode, as
/// JSON.
pub fn spec_mode(obj: &DynamicObject) -> Result<Option<NetworkMode>, String> {
    match obj.data.pointer("/spec/mode") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_str().map(str::parse::<NetworkMode>) {
            Some(Ok(m)) => Ok(Some(m)),
            _ => Err(v.to_string()),
        },
    }
}

fn routing(obj: &DynamicObject, current: &Current) -> Result<Routing, Problem> {
    let strategy = match obj.data.pointer("/spec/routingStrategy") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_str().map(str::parse::<RoutingStrategy>) {
            Some(Ok(s)) => Some(s),
            _ => {
                return Err(Problem::UnknownStrategy {
                    value: v.to_string(),
                    keeping: current.strategy,
                });
            }
        },
    };
    let iroh_share = match obj.data.pointer("/spec/irohShare") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64().and_then(|n| u8::try_from(n).ok()) {
            Some(n) if n <= 100 => Some(n),
            _ => {
                return Err(Problem::BadShare {
                    value: v.to_string(),
                });
            }
        },
    };
    Ok(Routing {
        strategy,
        iroh_share,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(spec: Value, faults: Option<&str>) -> DynamicObject {
        let mut meta = json!({"name": "n0", "generation": 3});
        if let Some(f) = faults {
            meta["annotations"] = json!({ ANNOTATION_INJECT_FAULTS: f });
        }
        serde_json::from_value(json!({
            "apiVersion": "switchyard.dev/v1alpha1",
            "kind": "FleetNode",
            "metadata": meta,
            "spec": spec,
        }))
        .expect("object")
    }

    fn current(allow: bool) -> Current {
        Current {
            mode: NetworkMode::LibP2pOnly,
            strategy: RoutingStrategy::PreferLibP2p,
            allow_fault_injection: allow,
        }
    }

    #[test]
    fn a_new_mode_is_switched_to_and_the_current_one_left_alone() {
        let a = apply_spec(
            &node(json!({"mode": "DualPreferIroh"}), None),
            &current(false),
        );
        assert_eq!(a.mode, Some(NetworkMode::DualPreferIroh));
        assert_eq!(a.problem, None);
        let same = apply_spec(&node(json!({"mode": "LibP2pOnly"}), None), &current(false));
        assert_eq!(same.mode, None);
        let unset = apply_spec(&node(json!({}), None), &current(false));
        assert_eq!((unset.mode, unset.problem), (None, None));
        assert_eq!(
            unset.routing,
            Some(Routing {
                strategy: None,
                iroh_share: None
            })
        );
    }

    #[test]
    fn an_unknown_mode_keeps_the_current_one_and_says_so() {
        for bad in [json!("Carrier"), json!(7), json!({"mode": "x"})] {
            let a = apply_spec(&node(json!({ "mode": bad }), None), &current(false));
            assert_eq!(a.mode, None);
            let p = a.problem.expect("a problem");
            assert_eq!(p.reason(), "UnknownMode");
            assert!(p.to_string().contains(&bad.to_string()), "{p}");
            assert!(p.to_string().contains("keeping LibP2pOnly"), "{p}");
        }
    }

    #[test]
    fn routing_is_applied_or_refused_whole() {
        let a = apply_spec(
            &node(
                json!({"routingStrategy": "LoadBalance", "irohShare": 30}),
                None,
            ),
            &current(false),
        );
        assert_eq!(
            a.routing,
            Some(Routing {
                strategy: Some(RoutingStrategy::LoadBalance),
                iroh_share: Some(30)
            })
        );
        let bad = apply_spec(
            &node(json!({"routingStrategy": "Fastest"}), None),
            &current(false),
        );
        assert_eq!(bad.routing, None);
        let p = bad.problem.expect("a problem");
        assert_eq!(p.reason(), "UnknownStrategy");
        assert!(p.to_string().contains("keeping PreferLibP2p"), "{p}");
        for share in [json!(101), json!(-1), json!(2.5), json!("30")] {
            let a = apply_spec(
                &node(
                    json!({"routingStrategy": "LoadBalance", "irohShare": share}),
                    None,
                ),
                &current(false),
            );
            assert_eq!(a.routing, None, "{share}");
            assert_eq!(a.problem.expect("a problem").reason(), "BadShare");
        }
    }

    #[test]
    fn faults_apply_only_where_allowed_and_a_bad_annotation_is_a_problem() {
        let spec = json!({"mode": "IrohOnly"});
        let a = apply_spec(&node(spec.clone(), Some("libp2p=0.5")), &current(true));
        assert_eq!(a.faults, Some((0.5, 0.0)));
        assert!(!a.faults_ignored);
        let none = apply_spec(&node(spec.clone(), None), &current(true));
        assert_eq!(none.faults, Some((0.0, 0.0)), "removing it ends the faults");
        let off = apply_spec(&node(spec.clone(), Some("all=1")), &current(false));
        assert_eq!(off.faults, None);
        assert!(off.faults_ignored);
        let bad = apply_spec(&node(spec, Some("libp2p=lots")), &current(true));
        assert_eq!(bad.faults, None);
        assert_eq!(
            bad.mode,
            Some(NetworkMode::IrohOnly),
            "the rest still applies"
        );
        assert_eq!(
            bad.problem.expect("a problem").reason(),
            "BadFaultInjection"
        );
    }

    #[test]
    fn the_first_problem_is_the_modes() {
        let a = apply_spec(
            &node(
                json!({"mode": "Carrier", "routingStrategy": "Fastest"}),
                Some("x"),
            ),
            &current(true),
        );
        assert_eq!(a.problem.expect("a problem").reason(), "UnknownMode");
    }
}
