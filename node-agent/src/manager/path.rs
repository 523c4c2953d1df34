//! The heartbeat state machine of one peer on one transport. Pure: every
//! decision takes `now` and the settings and returns the new status and
//! when to act next; the manager's loop only applies it (adds jitter,
//! logs, schedules). Tested without sockets or sleeps.

use std::time::{Duration, Instant};

use super::{ManagerConfig, PathStatus, PeerState};

/// How one heartbeat (or dial) ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Beat {
    /// Answered, in this round trip.
    Answered(Duration),
    /// No answer within the timeout; the connection has not failed.
    Unanswered,
    /// The connection failed, was refused, or the peer answered nonsense.
    Failed(String),
}

/// The new status of a path and when to act on it next.
#[derive(Debug, Clone)]
pub struct Transition {
    /// The status after the event.
    pub status: PathStatus,
    /// How long until the next heartbeat or redial.
    pub next_in: Duration,
    /// Whether `next_in` is a redial delay, to be spread by the jitter.
    pub jitter: bool,
}

/// How many redial start times a status keeps.
const REDIALS_KEPT: usize = 32;

impl PathStatus {
    /// A path not dialled yet.
    pub fn new(now: Instant) -> Self {
        PathStatus {
            state: PeerState::Disconnected,
            since: now,
            rtt: None,
            misses: 0,
            attempts: 0,
            redials: Vec::new(),
            reason: "not dialled yet".into(),
            tried: false,
        }
    }

    /// Whether the path has a live connection (answered lately, or
    /// silent but not given up on).
    pub fn connected(&self) -> bool {
        matches!(self.state, PeerState::Connected | PeerState::Unresponsive)
    }

    /// `self` in `to`, for `reason`; `since` moves only on a change.
    fn moved(mut self, to: PeerState, reason: String, now: Instant) -> Self {
        if self.state != to {
            self.state = to;
            self.since = now;
        }
        self.reason = reason;
        self
    }

    /// A redial of this path starts at `now` (the first dial is not one).
    pub fn on_redial(&self, now: Instant) -> PathStatus {
        let mut next = self.clone();
        next.attempts += 1;
        next.redials.push(now);
        if next.redials.len() > REDIALS_KEPT {
            next.redials.remove(0);
        }
        next
    }

    /// A heartbeat (or dial) ended with `beat` at `now`.
    ///
    /// - Answered: `Connected`, counters reset, next beat in an interval.
    /// - Unanswered on a live connection: a miss; `Unresponsive` after
    ///   `unresponsive_after` in a row (beats go on at the usual pace;
    ///   before that the next goes at once, so a silent peer is found in
    ///   that many timeouts). Once `Unresponsive` for `disconnect_after`,
    ///   the connection is given up like a failed one.
    /// - Failed (or unanswered with no live connection): `Disconnected`,
    ///   redialled after the backoff for the attempts so far; `Failed`
    ///   once `max_retries` redials failed, redialled every `slow_retry`.
    pub fn on_beat(&self, beat: &Beat, now: Instant, config: &ManagerConfig) -> Transition {
        let mut s = self.clone();
        s.tried = true;
        match beat {
            Beat::Answered(rtt) => {
                s.rtt = Some(*rtt);
                s.misses = 0;
                s.attempts = 0;
                Transition {
                    status: s.moved(PeerState::Connected, "heartbeat answered".into(), now),
                    next_in: config.heartbeat_interval,
                    jitter: false,
                }
            }
            Beat::Unanswered
                if self.connected()
                    && !(self.state == PeerState::Unresponsive
                        && now.saturating_duration_since(self.since)
                            >= config.disconnect_after) =>
            {
                s.misses += 1;
                if s.misses >= config.unresponsive_after {
                    let reason = format!("{} heartbeats in a row unanswered", s.misses);
                    Transition {
                        status: s.moved(PeerState::Unresponsive, reason, now),
                        next_in: config.heartbeat_interval,
                        jitter: false,
                    }
                } else {
                    // The timeout already spaced it: ask again now.
                    Transition {
                        status: s,
                        next_in: Duration::ZERO,
                        jitter: false,
                    }
                }
            }
            Beat::Unanswered | Beat::Failed(_) => {
                let reason = match beat {
                    Beat::Failed(why) => why.clone(),
                    _ if self.connected() => format!(
                        "unresponsive for {:?}: giving the connection up",
                        config.disconnect_after
                    ),
                    _ => "the dial was not answered".into(),
                };
                if self.connected() {
                    s.attempts = 0;
                }
                let (state, delay) = if s.attempts >= config.max_retries {
                    (PeerState::Failed, config.slow_retry)
                } else {
                    (PeerState::Disconnected, config.backoff(s.attempts + 1))
                };
                Transition {
                    status: s.moved(state, reason, now),
                    next_in: delay,
                    jitter: true,
                }
            }
        }
    }

    /// The peer's own heartbeat on this path arrived at `heard`: while it
    /// is recent (`listen_for`), ours would only repeat it, so the path is
    /// `Connected` and our next beat waits until `heard + listen_for`.
    /// `None` when ours is due (nothing heard lately, or the path has no
    /// live connection).
    pub fn on_heard(
        &self,
        heard: Instant,
        now: Instant,
        listen_for: Duration,
    ) -> Option<Transition> {
        let ago = now.saturating_duration_since(heard);
        if !self.connected() || ago >= listen_for {
            return None;
        }
        let mut s = self.clone();
        s.misses = 0;
        s.attempts = 0;
        Some(Transition {
            status: s.moved(PeerState::Connected, "its heartbeat arrived".into(), now),
            next_in: listen_for - ago,
            jitter: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ManagerConfig {
        ManagerConfig {
            max_retries: 3,
            ..ManagerConfig::default()
        }
    }

    fn connected(now: Instant) -> PathStatus {
        PathStatus::new(now)
            .on_beat(&Beat::Answered(Duration::from_millis(3)), now, &config())
            .status
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn an_answer_connects_and_resets_everything() {
        let t0 = Instant::now();
        let mut s = PathStatus::new(t0).on_redial(t0).on_redial(t0);
        s.misses = 1;
        let t = s.on_beat(&Beat::Answered(7 * MS), t0 + MS, &config());
        assert_eq!(t.status.state, PeerState::Connected);
        assert_eq!((t.status.misses, t.status.attempts), (0, 0));
        assert_eq!(t.status.rtt, Some(7 * MS));
        assert_eq!(t.status.since, t0 + MS);
        assert_eq!((t.next_in, t.jitter), (config().heartbeat_interval, false));
        // Another answer keeps `since`.
        let again = t
            .status
            .on_beat(&Beat::Answered(MS), t0 + 5 * MS, &config());
        assert_eq!(again.status.since, t0 + MS);
    }

    #[test]
    fn misses_in_a_row_make_a_live_path_unresponsive_then_one_answer_brings_it_back() {
        let t0 = Instant::now();
        let first = connected(t0).on_beat(&Beat::Unanswered, t0, &config());
        assert_eq!(first.status.state, PeerState::Connected);
        assert_eq!(first.status.misses, 1);
        assert_eq!(first.next_in, Duration::ZERO, "asked again at once");
        let second = first.status.on_beat(&Beat::Unanswered, t0, &config());
        assert_eq!(second.status.state, PeerState::Unresponsive);
        assert_eq!(second.status.reason, "2 heartbeats in a row unanswered");
        assert_eq!(second.next_in, config().heartbeat_interval);
        let back = second.status.on_beat(&Beat::Answered(MS), t0, &config());
        assert_eq!(back.status.state, PeerState::Connected);
    }

    #[test]
    fn an_unresponsive_path_is_given_up_after_disconnect_after() {
        let t0 = Instant::now();
        let c = config();
        let mut s = connected(t0);
        for _ in 0..2 {
            s = s.on_beat(&Beat::Unanswered, t0, &c).status;
        }
        assert_eq!(s.state, PeerState::Unresponsive);
        let before = s.on_beat(&Beat::Unanswered, t0 + c.disconnect_after - MS, &c);
        assert_eq!(before.status.state, PeerState::Unresponsive);
        let after = s.on_beat(&Beat::Unanswered, t0 + c.disconnect_after, &c);
        assert_eq!(after.status.state, PeerState::Disconnected);
        assert!(after.status.reason.contains("giving the connection up"));
        assert_eq!((after.next_in, after.jitter), (c.backoff(1), true));
    }

    #[test]
    fn failures_back_off_then_fail_and_retry_slowly() {
        let t0 = Instant::now();
        let c = config();
        let broken = connected(t0).on_beat(&Beat::Failed("reset".into()), t0, &c);
        assert_eq!(broken.status.state, PeerState::Disconnected);
        assert_eq!(broken.status.reason, "reset");
        assert_eq!((broken.next_in, broken.jitter), (c.backoff(1), true));
        let mut s = broken.status;
        for attempt in 1..=c.max_retries {
            s = s.on_redial(t0);
            let t = s.on_beat(&Beat::Failed("refused".into()), t0, &c);
            if attempt < c.max_retries {
                assert_eq!(t.status.state, PeerState::Disconnected, "attempt {attempt}");
                assert_eq!(t.next_in, c.backoff(attempt + 1));
            } else {
                assert_eq!(t.status.state, PeerState::Failed);
                assert_eq!(t.next_in, c.slow_retry);
            }
            s = t.status;
        }
        // An unanswered dial (no live connection) counts as a failure.
        let t = PathStatus::new(t0).on_beat(&Beat::Unanswered, t0, &c);
        assert_eq!(t.status.state, PeerState::Disconnected);
        assert_eq!(t.status.reason, "the dial was not answered");
    }

    #[test]
    fn redials_are_counted_and_the_last_32_kept() {
        let t0 = Instant::now();
        let mut s = PathStatus::new(t0);
        for i in 0..40 {
            s = s.on_redial(t0 + i * MS);
        }
        assert_eq!(s.attempts, 40);
        assert_eq!(s.redials.len(), 32);
        assert_eq!(s.redials[0], t0 + 8 * MS);
    }

    #[test]
    fn a_heard_heartbeat_stands_in_for_ours_while_recent_on_a_live_path() {
        let t0 = Instant::now();
        let listen = Duration::from_secs(3);
        let mut s = connected(t0);
        s = s.on_beat(&Beat::Unanswered, t0, &config()).status;
        let t = s
            .on_heard(t0, t0 + Duration::from_secs(1), listen)
            .expect("recent");
        assert_eq!(t.status.state, PeerState::Connected);
        assert_eq!(t.status.misses, 0);
        assert_eq!(t.next_in, Duration::from_secs(2), "until heard + listen");
        assert!(s.on_heard(t0, t0 + listen, listen).is_none(), "too old");
        let down = PathStatus::new(t0);
        assert!(down.on_heard(t0, t0, listen).is_none(), "a dead path dials");
    }
}
