//! Why a connection ended, and what to do about it: reconnect with jittered exponential backoff,
//! honour a server's `retry_after`, re-enlist after the account was removed, and never reconnect
//! after being replaced by another login of the same account (that would ping-pong forever).

use std::time::Duration;

use wire::Node;
use wire::refusal::Refusal;

/// Why the server ended (or refused) the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerClose {
    /// `<stream:error><conflict type="replaced"/>`: this account logged in elsewhere.
    Replaced,
    /// `<failure reason="401">` or `<stream:error code="401">`: the account was deleted or
    /// un-enlisted, or the token was refused.
    Unauthorized,
    /// `<failure reason="429" retry_after="N">`: the proxy is shedding load.
    Overloaded { retry_after: Option<Duration> },
    /// `<failure reason="503">` or `<stream:error code="503">` (draining, chatd unreachable).
    Unavailable,
    /// `<failure reason="405">`: the app version is too old; an update is needed.
    Outdated,
    /// Any other `<failure>`/`<stream:error>` code.
    Other(String),
    /// The connection dropped without a reason.
    Dropped,
}

impl ServerClose {
    /// The reason a `<failure>`, `<stream:error>` or `<xmlstreamend/>` gives (read by the one
    /// table in [`wire::refusal`]), or `None` for other stanzas.
    pub fn of(node: &Node) -> Option<ServerClose> {
        Some(match Refusal::parse(node)? {
            Refusal::Replaced => ServerClose::Replaced,
            Refusal::Unauthorized => ServerClose::Unauthorized,
            Refusal::Overloaded { retry_after_secs } => {
                ServerClose::Overloaded { retry_after: retry_after_secs.map(Duration::from_secs) }
            }
            Refusal::Draining | Refusal::Unavailable => ServerClose::Unavailable,
            Refusal::Outdated => ServerClose::Outdated,
            Refusal::StreamEnd => ServerClose::Dropped,
            other => ServerClose::Other(other.code().to_owned()),
        })
    }
}

impl std::fmt::Display for ServerClose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerClose::Replaced => write!(f, "this account logged in on another connection"),
            ServerClose::Unauthorized => {
                write!(f, "the account was refused (deleted, un-enlisted after 30 days idle, or a bad token)")
            }
            ServerClose::Overloaded { retry_after: Some(d) } => write!(f, "the proxy is busy; retry after {d:?}"),
            ServerClose::Overloaded { retry_after: None } => write!(f, "the proxy is busy"),
            ServerClose::Unavailable => write!(f, "the service is unavailable or draining"),
            ServerClose::Outdated => write!(f, "this client version is too old for chatd"),
            ServerClose::Other(code) => write!(f, "closed with code {code}"),
            ServerClose::Dropped => write!(f, "the connection dropped"),
        }
    }
}

/// What to do after a close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Reconnect(Duration),
    /// Enlist again (the account is gone), then connect.
    ReEnlist,
    /// Do not reconnect; tell the user why.
    Stop,
}

/// Jittered exponential backoff ("full jitter": a uniform delay up to the capped exponential).
#[derive(Debug, Clone)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
    attempt: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(500), Duration::from_secs(60))
    }
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff { base, max, attempt: 0 }
    }

    /// A connection worked: start again from the base delay.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The next delay, with `random` in [0, 1) choosing where in the window it falls.
    pub fn next_with(&mut self, random: f64) -> Duration {
        let cap = self.base.saturating_mul(1u32 << self.attempt.min(20)).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        cap.mul_f64(random.clamp(0.0, 1.0)).max(self.base / 2)
    }

    pub fn next_delay(&mut self) -> Duration {
        let r = u32::from_le_bytes(crate::store::random32()[..4].try_into().unwrap_or_default());
        self.next_with(f64::from(r) / f64::from(u32::MAX))
    }

    /// What to do after `reason`; `unauthorized_reenlists` is false where re-enlisting cannot help
    /// (WhatsApp-side users, or the user chose to stop).
    pub fn decide(&mut self, reason: &ServerClose, unauthorized_reenlists: bool) -> Decision {
        match reason {
            ServerClose::Replaced | ServerClose::Outdated => Decision::Stop,
            ServerClose::Unauthorized if unauthorized_reenlists => Decision::ReEnlist,
            ServerClose::Unauthorized => Decision::Stop,
            ServerClose::Overloaded { retry_after: Some(d) } => {
                let jittered = self.next_delay();
                Decision::Reconnect((*d).max(jittered))
            }
            _ => Decision::Reconnect(self.next_delay()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_from_stanzas() {
        let replaced = Node::new("stream:error").children(vec![Node::new("conflict").attr("type", "replaced")]);
        assert_eq!(ServerClose::of(&replaced), Some(ServerClose::Replaced));
        assert_eq!(ServerClose::of(&Node::new("stream:error").attr("code", "401")), Some(ServerClose::Unauthorized));
        assert_eq!(ServerClose::of(&Node::new("failure").attr("reason", "401")), Some(ServerClose::Unauthorized));
        assert_eq!(
            ServerClose::of(&Node::new("failure").attr("reason", "429").attr("retry_after", "7")),
            Some(ServerClose::Overloaded { retry_after: Some(Duration::from_secs(7)) })
        );
        assert_eq!(
            ServerClose::of(&Node::new("stream:error").attr("code", "503").attr("text", "draining")),
            Some(ServerClose::Unavailable)
        );
        assert_eq!(ServerClose::of(&Node::new("failure").attr("reason", "405")), Some(ServerClose::Outdated));
        assert_eq!(ServerClose::of(&Node::new("message")), None);
    }

    #[test]
    fn backoff_grows_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let top: Vec<Duration> = (0..8).map(|_| b.next_with(1.0)).collect();
        assert_eq!(top[0], Duration::from_millis(100));
        assert_eq!(top[1], Duration::from_millis(200));
        assert_eq!(top[4], Duration::from_millis(1600));
        assert_eq!(top[7], Duration::from_secs(2), "capped");
        // Jitter spreads clients across the window, with a floor of half the base.
        assert_eq!(b.next_with(0.0), Duration::from_millis(50));
        b.reset();
        assert_eq!(b.next_with(1.0), Duration::from_millis(100));
    }

    #[test]
    fn decisions_respect_the_reason() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(b.decide(&ServerClose::Replaced, true), Decision::Stop, "no ping-pong with the other login");
        assert_eq!(b.decide(&ServerClose::Unauthorized, true), Decision::ReEnlist);
        assert_eq!(b.decide(&ServerClose::Unauthorized, false), Decision::Stop);
        let Decision::Reconnect(d) =
            b.decide(&ServerClose::Overloaded { retry_after: Some(Duration::from_secs(9)) }, true)
        else {
            panic!("429 reconnects")
        };
        assert!(d >= Duration::from_secs(9), "retry_after is a floor: {d:?}");
        assert!(matches!(b.decide(&ServerClose::Unavailable, true), Decision::Reconnect(_)));
    }
}
