//! What the engine hands every observation to. The socket table is the
//! engine's own state (it is read to name the observation's context, then
//! updated); everything else that learns from events — metrics, the
//! idle-timeout learner, and whatever is added with
//! [`super::state::AgentState::subscribe`] — is a [`Subscriber`] and sees the
//! same observation with the same context, in the order subscribed.

use crate::{
    events::{ErrorCause, Kind, Observation},
    learned::{Destination, Learner},
    tcp::TcpState,
};

use super::metrics::LabelCtx;

/// What the engine knows about an observation's socket, read from the
/// table and the policy before the table takes the observation.
pub struct Context<'a> {
    pub labels: LabelCtx<'a>,
    /// The agent's idle-timeout policy as it stands.
    pub policy: &'a crate::policy::Policy,
    /// The path the learner keys idle timeouts by.
    pub dest: Destination,
    /// The socket's cookie: the record's, or the table's (from a snapshot).
    pub cookie: Option<u64>,
}

/// A consumer of the agent's observations.
pub trait Subscriber: Send {
    fn seen(&mut self, obs: &Observation<'_>, ctx: &Context<'_>);
}

impl Subscriber for super::metrics::Metrics {
    fn seen(&mut self, obs: &Observation<'_>, ctx: &Context<'_>) {
        self.observe(obs, &ctx.labels);
    }
}

/// The learner as a subscriber: kills it can confirm, and candidates for
/// paths whose timeout nothing names yet.
pub struct LearnerFeed {
    pub learner: Learner,
    /// Seconds of silence before a reset or failed send that make it a
    /// candidate idle kill.
    pub idle_kill_min: f64,
}

impl Subscriber for LearnerFeed {
    fn seen(&mut self, obs: &Observation<'_>, ctx: &Context<'_>) {
        if obs.has(Kind::IdleKillSuspected) {
            if let Some(idle) = obs.idle_s {
                self.learner.killed(ctx.dest, idle);
            }
        } else if let Some(idle) = kill_candidate(obs, self.idle_kill_min) {
            // No known timeout yet: a kill the learner confirms once the
            // destination is seen alive (a dead peer never is).
            self.learner.candidate(ctx.dest, idle);
        }
    }
}

/// A reset after at least `min` of silence, or a first send after such a
/// silence that never got through: seconds of silence, when the path's
/// timeout is not known yet (with one, the deriver names the kill).
fn kill_candidate(obs: &Observation<'_>, min: f64) -> Option<f64> {
    let rec = obs.record;
    let silence = if obs.has(Kind::ResetReceived) && rec.state == TcpState::Established {
        obs.idle_s
    } else if obs
        .error
        .is_some_and(|e| e.cause == ErrorCause::Retransmits)
    {
        rec.silence_before_send_secs(obs.hz)
    } else {
        None
    }?;
    (silence >= min).then_some(silence)
}
