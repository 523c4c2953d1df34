//! The plan's owned MigrationCanary objects: what each one's spec and status should
//! be for a [`CanaryAction`]. Pure; the controller only writes them. The
//! plan moves the nodes; the owned MigrationCanary shows the trial to people and
//! tools that look at Canaries.

use switchyard_crds::{
    MigrationCanary, MigrationCanaryPhase, MigrationCanarySpec, MigrationCanaryStatus,
    MigrationPlanSpec, MigrationPlanStatus, Verdict,
};

use super::CanaryAction;

/// The name of a plan's MigrationCanary for a stage.
pub fn owned_canary_name(plan: &str, stage: u32) -> String {
    format!("{plan}-stage-{stage}")
}

/// The writes an owned MigrationCanary needs.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnedCanary {
    /// The MigrationCanary's name.
    pub name: String,
    /// Its spec, when it differs from the stored one (or none is stored).
    pub spec: Option<MigrationCanarySpec>,
    /// Its status, when it differs from the stored one.
    pub status: Option<MigrationCanaryStatus>,
}

/// What the owned MigrationCanary of `action` should be, given the stored MigrationCanary
/// of that name (`existing`, looked up by name). `None`: nothing to write.
pub fn owned_canary(
    plan: &str,
    spec: &MigrationPlanSpec,
    status: &MigrationPlanStatus,
    action: &CanaryAction,
    existing: impl Fn(&str) -> Option<MigrationCanary>,
) -> Option<OwnedCanary> {
    let (name, want_spec, want_status) = match action {
        CanaryAction::Ensure {
            stage,
            mode,
            nodes,
            duration,
        } => {
            if nodes.is_empty() {
                return None;
            }
            let canary_spec = MigrationCanarySpec {
                selector: spec.selector.clone(),
                nodes: Some(nodes.clone()),
                count: None,
                percent: None,
                mode: *mode,
                duration: *duration,
                baseline_selector: None,
                ab_share: None,
                analysis: spec.canary.as_ref().and_then(|c| c.analysis.clone()),
            };
            let canary_status = MigrationCanaryStatus {
                phase: MigrationCanaryPhase::Running,
                nodes: nodes.clone(),
                started_at: status.step_acknowledged_at.clone(),
                message: Some(format!(
                    "owned by MigrationPlan {plan}: {} node(s) on {mode}",
                    nodes.len()
                )),
                ..MigrationCanaryStatus::default()
            };
            (
                owned_canary_name(plan, *stage),
                Some(canary_spec),
                canary_status,
            )
        }
        CanaryAction::Finish { stage, verdict } => {
            let name = owned_canary_name(plan, *stage);
            let mut s = existing(&name)?.status.unwrap_or_default();
            s.phase = if *verdict == Verdict::Pass {
                MigrationCanaryPhase::Succeeded
            } else {
                MigrationCanaryPhase::Failed
            };
            s.verdict = Some(*verdict);
            if let Some(r) = &status.last_analysis {
                s.metrics = r.metrics.clone();
            }
            s.message = Some(format!("verdict {verdict:?}"));
            (name, None, s)
        }
    };
    let stored = existing(&name);
    let spec = want_spec.filter(|s| stored.as_ref().map(|c| &c.spec) != Some(s));
    let same = stored.and_then(|c| c.status).is_some_and(|s| {
        s.phase == want_status.phase
            && s.nodes == want_status.nodes
            && s.started_at == want_status.started_at
            && s.verdict == want_status.verdict
    });
    Some(OwnedCanary {
        name,
        spec,
        status: (!same).then_some(want_status),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_crds::{Duration, NetworkMode};

    #[test]
    fn an_owned_canary_is_written_only_where_it_differs() {
        let spec: MigrationPlanSpec = serde_json::from_value(serde_json::json!({
            "selector": {"matchLabels": {"app": "storage"}},
            "stages": ["DualPreferIroh"],
        }))
        .expect("spec");
        let status = MigrationPlanStatus::default();
        let ensure = CanaryAction::Ensure {
            stage: 0,
            mode: NetworkMode::DualPreferIroh,
            nodes: vec!["node-1".into()],
            duration: Duration::from_secs(60),
        };
        let first = owned_canary("p", &spec, &status, &ensure, |_| None).expect("writes");
        assert_eq!(first.name, "p-stage-0");
        let (Some(s), Some(st)) = (first.spec.clone(), first.status.clone()) else {
            panic!("a new MigrationCanary gets spec and status: {first:?}");
        };
        let stored = MigrationCanary {
            metadata: Default::default(),
            spec: s,
            status: Some(st),
        };
        let again = owned_canary("p", &spec, &status, &ensure, |_| Some(stored.clone()));
        assert_eq!(
            again,
            Some(OwnedCanary {
                name: "p-stage-0".into(),
                spec: None,
                status: None
            })
        );
        let finish = CanaryAction::Finish {
            stage: 0,
            verdict: Verdict::Fail,
        };
        assert_eq!(owned_canary("p", &spec, &status, &finish, |_| None), None);
        let done = owned_canary("p", &spec, &status, &finish, |_| Some(stored.clone()))
            .and_then(|o| o.status)
            .expect("the status changes");
        assert_eq!(
            (done.phase, done.verdict),
            (MigrationCanaryPhase::Failed, Some(Verdict::Fail))
        );
    }
}
