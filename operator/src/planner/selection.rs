//! Which nodes a plan selects, and which plan holds a node when several
//! select it. Pure functions over labels and plan metadata.
//!
//! Ownership rule: a node labelled `switchyard.dev/plan=P` belongs to P
//! while P exists and has not let go of it (RolledBack and Invalid plans
//! hold nothing). An unlabelled node selected by several live plans belongs
//! to the oldest (creation time, then name). Every other plan selecting it
//! is blocked on it, with the holder named.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use switchyard_crds::PlanPhase;

/// Whether `selector` matches `labels`, with Kubernetes semantics: every
/// matchLabels pair and every matchExpression must hold; an empty selector
/// matches everything.
pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let pairs = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs = selector.match_expressions.iter().flatten().all(|r| {
        let value = labels.get(&r.key);
        let values = r.values.as_deref().unwrap_or_default();
        match r.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            // An unknown operator matches nothing; validation reports it.
            _ => false,
        }
    });
    pairs && exprs
}

/// What ownership resolution needs to know about one plan.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanRef<'a> {
    /// Name.
    pub name: &'a str,
    /// metadata.creationTimestamp.
    pub created: Timestamp,
    /// status.phase.
    pub phase: PlanPhase,
    /// Its selector.
    pub selector: &'a LabelSelector,
}

impl PlanRef<'_> {
    /// Whether the plan still holds the nodes it labelled.
    pub fn holds_nodes(&self) -> bool {
        !matches!(self.phase, PlanPhase::RolledBack | PlanPhase::Invalid)
    }
}

/// The plan that holds a node with these labels, among `plans` (every plan
/// in the node's namespace), or `None` when no live plan selects it.
pub fn holder<'a>(labels: &BTreeMap<String, String>, plans: &[PlanRef<'a>]) -> Option<&'a str> {
    if let Some(owner) = labels.get(switchyard_crds::LABEL_PLAN)
        && let Some(p) = plans.iter().find(|p| p.name == owner && p.holds_nodes())
    {
        return Some(p.name);
    }
    plans
        .iter()
        .filter(|p| p.holds_nodes() && matches(p.selector, labels))
        .min_by(|a, b| (a.created, a.name).cmp(&(b.created, b.name)))
        .map(|p| p.name)
}

/// For plan `me`: the other plan holding this node, if any. Feed the result
/// to [`super::NodeView::held_by`].
pub fn held_by_other(
    me: &str,
    labels: &BTreeMap<String, String>,
    plans: &[PlanRef<'_>],
) -> Option<String> {
    holder(labels, plans)
        .filter(|h| *h != me)
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn req(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| (*v).to_owned()).collect()),
        }
    }

    #[test]
    fn selectors_follow_kubernetes_semantics() {
        let node = labels(&[("app", "storage"), ("zone", "a")]);
        let sel = |labels: &[(&str, &str)], exprs: Vec<LabelSelectorRequirement>| LabelSelector {
            match_labels: (!labels.is_empty()).then(|| super::tests::labels(labels)),
            match_expressions: (!exprs.is_empty()).then_some(exprs),
        };
        assert!(
            matches(&LabelSelector::default(), &node),
            "empty selects all"
        );
        assert!(matches(&sel(&[("app", "storage")], vec![]), &node));
        assert!(!matches(&sel(&[("app", "relay")], vec![]), &node));
        assert!(matches(
            &sel(&[], vec![req("zone", "In", &["a", "b"])]),
            &node
        ));
        assert!(!matches(
            &sel(&[], vec![req("zone", "NotIn", &["a"])]),
            &node
        ));
        assert!(
            matches(&sel(&[], vec![req("tier", "NotIn", &["x"])]), &node),
            "NotIn matches a missing key"
        );
        assert!(matches(&sel(&[], vec![req("app", "Exists", &[])]), &node));
        assert!(matches(
            &sel(
                &[],
                vec![req("switchyard.dev/exclude", "DoesNotExist", &[])]
            ),
            &node
        ));
        assert!(
            !matches(
                &sel(
                    &[("app", "storage")],
                    vec![req("zone", "DoesNotExist", &[])]
                ),
                &node
            ),
            "all must hold"
        );
    }

    #[test]
    fn the_older_plan_holds_a_node_both_select_and_the_later_is_blocked() {
        let all = LabelSelector::default();
        let t = |s| Timestamp::from_second(s).expect("time");
        let plans = [
            PlanRef {
                name: "later",
                created: t(2_000),
                phase: PlanPhase::Pending,
                selector: &all,
            },
            PlanRef {
                name: "first",
                created: t(1_000),
                phase: PlanPhase::Progressing,
                selector: &all,
            },
        ];
        let node = labels(&[("app", "storage")]);
        assert_eq!(holder(&node, &plans), Some("first"));
        assert_eq!(held_by_other("later", &node, &plans), Some("first".into()));
        assert_eq!(held_by_other("first", &node, &plans), None);
    }

    #[test]
    fn the_plan_label_wins_until_that_plan_lets_go() {
        let all = LabelSelector::default();
        let t = |s| Timestamp::from_second(s).expect("time");
        let mut plans = vec![
            PlanRef {
                name: "old",
                created: t(1),
                phase: PlanPhase::Progressing,
                selector: &all,
            },
            PlanRef {
                name: "owner",
                created: t(5),
                phase: PlanPhase::Succeeded,
                selector: &all,
            },
        ];
        let node = labels(&[(switchyard_crds::LABEL_PLAN, "owner")]);
        assert_eq!(
            holder(&node, &plans),
            Some("owner"),
            "a succeeded plan keeps its nodes"
        );
        plans[1].phase = PlanPhase::RolledBack;
        assert_eq!(
            holder(&node, &plans),
            Some("old"),
            "a rolled-back plan lets go"
        );
        plans.remove(1);
        assert_eq!(holder(&node, &plans), Some("old"), "a deleted plan lets go");
    }
}
