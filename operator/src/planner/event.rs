//! The vocabulary the planners speak in: what started a rollback
//! ([`Trigger`]) and what the operator records about it ([`Event`]).
//! Plans and Canaries share both.

use std::fmt;

use super::Transition;

/// What started a rollback. Written to `status.rollback.trigger` and to
/// the `switchyard_rollbacks_total` label as [`Trigger::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// `spec.rollbackRequest`.
    Manual,
    /// Step analysis failed `failureLimit` times.
    AnalysisFailed,
    /// Step analysis was inconclusive `inconclusiveLimit` times and
    /// `onInconclusive` is Rollback.
    AnalysisInconclusive,
    /// Nodes missed the progress deadline.
    ProgressDeadline,
    /// The error rate stayed above its threshold for its window.
    HighErrorRate,
    /// A latency percentile rose above its threshold.
    LatencyRegression,
    /// The partition risk rose above its threshold.
    NetworkPartition,
    /// The health score fell below its minimum.
    HealthCheckFailure,
    /// A matching Alertmanager alert fired.
    Alert,
}

impl Trigger {
    /// Every trigger, in declaration order.
    pub const ALL: [Trigger; 9] = [
        Trigger::Manual,
        Trigger::AnalysisFailed,
        Trigger::AnalysisInconclusive,
        Trigger::ProgressDeadline,
        Trigger::HighErrorRate,
        Trigger::LatencyRegression,
        Trigger::NetworkPartition,
        Trigger::HealthCheckFailure,
        Trigger::Alert,
    ];

    /// The name written to status, metrics and Events.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Manual => "Manual",
            Trigger::AnalysisFailed => "AnalysisFailed",
            Trigger::AnalysisInconclusive => "AnalysisInconclusive",
            Trigger::ProgressDeadline => "ProgressDeadline",
            Trigger::HighErrorRate => "HighErrorRate",
            Trigger::LatencyRegression => "LatencyRegression",
            Trigger::NetworkPartition => "NetworkPartition",
            Trigger::HealthCheckFailure => "HealthCheckFailure",
            Trigger::Alert => "Alert",
        }
    }

    /// The trigger a status names, if it is one of ours.
    pub fn parse(name: &str) -> Option<Trigger> {
        Trigger::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether an Event reports something a person should look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Progress as planned.
    Normal,
    /// Something stopped, failed or was refused.
    Warning,
}

impl Severity {
    /// The Event `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Normal => "Normal",
            Severity::Warning => "Warning",
        }
    }
}

/// One Kubernetes Event to record on the plan or MigrationCanary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The Event `reason`, UpperCamelCase.
    pub reason: &'static str,
    /// The human-readable note.
    pub note: String,
    /// Normal or Warning.
    pub severity: Severity,
}

impl Event {
    /// A Normal Event.
    pub fn normal(reason: &'static str, note: impl Into<String>) -> Event {
        Event {
            reason,
            note: note.into(),
            severity: Severity::Normal,
        }
    }

    /// A Warning Event.
    pub fn warning(reason: &'static str, note: impl Into<String>) -> Event {
        Event {
            reason,
            note: note.into(),
            severity: Severity::Warning,
        }
    }
}

impl Transition {
    /// The Event that records this transition.
    pub fn event(&self) -> Event {
        Event {
            reason: self.reason(),
            note: self.message(),
            severity: if self.is_warning() {
                Severity::Warning
            } else {
                Severity::Normal
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_names_round_trip() {
        for t in Trigger::ALL {
            assert_eq!(Trigger::parse(t.as_str()), Some(t));
        }
        assert_eq!(Trigger::parse("Bogus"), None);
    }

    #[test]
    fn a_rollback_is_a_warning_naming_its_trigger() {
        let e = Transition::RollbackStarted {
            trigger: Trigger::Alert,
            reason: "NodeDown".into(),
        }
        .event();
        assert_eq!(e.reason, "RollbackStarted");
        assert_eq!(e.severity, Severity::Warning);
        assert_eq!(e.note, "rollback (Alert): NodeDown");
        assert_eq!(Transition::Succeeded.event().severity, Severity::Normal);
    }
}
