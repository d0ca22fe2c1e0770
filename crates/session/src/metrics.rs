//! Session metrics. Names follow Prometheus conventions (the project's `waproxy_` prefix, `_total`
//! counters, `_bytes` and `_seconds` units); labels are bounded enums, never user identities.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `waproxy_sessions_active` | gauge | | sessions holding a registry claim (at most one per account holds an upstream) |
//! | `waproxy_upstream_connections` | gauge | | chatd connections owned by running relays |
//! | `waproxy_upstream_logins_total` | counter | `result` (`accepted`, `rejected`, `failed`) | upstream logins by chatd's answer |
//! | `waproxy_upstream_login_duration_seconds` | histogram | | TCP connect to chatd's first stanza |
//! | `waproxy_upstream_connect_duration_seconds` | histogram | | the TCP connect to chatd alone |
//! | `waproxy_upstream_handshake_duration_seconds` | histogram | | connection header, Noise XX and certificate check, to the ClientFinish written |
//! | `waproxy_upstream_cert_cache_total` | counter | `result` (`hit`, `miss`) | certificate chain checks answered from the cache or not |
//! | `waproxy_relay_frames_total` | counter | `direction` (`to_upstream`, `to_client`) | stanzas relayed |
//! | `waproxy_relay_payload_bytes_total` | counter | `direction` | plaintext stanza payload bytes relayed (no frame headers, no tags) |
//! | `waproxy_relay_backpressure_stalls_total` | counter | `direction` | times a relay stopped reading its source because the destination was not keeping up |
//! | `waproxy_relay_buffered_bytes` | gauge | `direction` | bytes held in relay buffers now, all sessions |
//! | `waproxy_relay_buffer_capacity_bytes` | gauge | | heap capacity of relay buffers now, all sessions (idle sessions hold none) |
//! | `waproxy_session_closes_total` | counter | `reason` ([`CloseReason`]) | sessions ended, by reason |
//! | `waproxy_session_replacements_total` | counter | | sessions cancelled because a newer login claimed their account |
//!
//! The relay accumulates its counts locally and publishes them once per wake-up, so the hot path
//! does not touch shared cache lines per frame.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::error::CloseReason;

/// A relay direction, as the `direction` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client stanzas, sealed toward chatd.
    ToUpstream,
    /// chatd stanzas, opened toward the client.
    ToClient,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::ToUpstream => "to_upstream",
            Direction::ToClient => "to_client",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Direction::ToUpstream => 0,
            Direction::ToClient => 1,
        }
    }
}

/// How an upstream login ended, as the `result` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamLoginResult {
    Accepted,
    Rejected,
    Failed,
}

impl UpstreamLoginResult {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamLoginResult::Accepted => "accepted",
            UpstreamLoginResult::Rejected => "rejected",
            UpstreamLoginResult::Failed => "failed",
        }
    }
}

/// Per-direction handles, resolved once so the relay never looks labels up.
#[derive(Clone)]
pub(crate) struct DirectionMetrics {
    pub frames: IntCounter,
    pub bytes: IntCounter,
    pub stalls: IntCounter,
    pub buffered: IntGauge,
}

/// The session layer's metrics. Clones share the same series.
#[derive(Clone)]
pub struct SessionMetrics {
    pub sessions_active: IntGauge,
    pub upstream_connections: IntGauge,
    pub upstream_logins: IntCounterVec,
    pub upstream_login_duration: Histogram,
    pub upstream_connect_duration: Histogram,
    pub upstream_handshake_duration: Histogram,
    pub cert_cache: IntCounterVec,
    pub relay_frames: IntCounterVec,
    pub relay_bytes: IntCounterVec,
    pub relay_stalls: IntCounterVec,
    pub relay_buffered: IntGaugeVec,
    pub relay_buffer_capacity: IntGauge,
    pub closes: IntCounterVec,
    pub replacements: IntCounter,
    pub(crate) dirs: [DirectionMetrics; 2],
}

impl std::fmt::Debug for SessionMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionMetrics").field("sessions_active", &self.sessions_active.get()).finish_non_exhaustive()
    }
}

impl SessionMetrics {
    /// Creates the metrics without registering them (tests, or a caller that registers later).
    pub fn new() -> Result<Self, prometheus::Error> {
        let relay_frames = IntCounterVec::new(
            Opts::new("waproxy_relay_frames_total", "Stanzas relayed, by direction."),
            &["direction"],
        )?;
        let relay_bytes = IntCounterVec::new(
            Opts::new("waproxy_relay_payload_bytes_total", "Plaintext stanza payload bytes relayed, by direction."),
            &["direction"],
        )?;
        let relay_stalls = IntCounterVec::new(
            Opts::new(
                "waproxy_relay_backpressure_stalls_total",
                "Times a relay stopped reading because the destination was not keeping up, by direction.",
            ),
            &["direction"],
        )?;
        let relay_buffered = IntGaugeVec::new(
            Opts::new("waproxy_relay_buffered_bytes", "Bytes held in relay buffers now, by direction."),
            &["direction"],
        )?;
        let dir = |d: Direction| DirectionMetrics {
            frames: relay_frames.with_label_values(&[d.as_str()]),
            bytes: relay_bytes.with_label_values(&[d.as_str()]),
            stalls: relay_stalls.with_label_values(&[d.as_str()]),
            buffered: relay_buffered.with_label_values(&[d.as_str()]),
        };
        let dirs = [dir(Direction::ToUpstream), dir(Direction::ToClient)];
        let closes = IntCounterVec::new(
            Opts::new("waproxy_session_closes_total", "Sessions ended, by close reason."),
            &["reason"],
        )?;
        for r in CloseReason::ALL {
            closes.with_label_values(&[r.as_str()]);
        }
        let upstream_logins = IntCounterVec::new(
            Opts::new("waproxy_upstream_logins_total", "Upstream logins, by chatd's answer."),
            &["result"],
        )?;
        for r in [UpstreamLoginResult::Accepted, UpstreamLoginResult::Rejected, UpstreamLoginResult::Failed] {
            upstream_logins.with_label_values(&[r.as_str()]);
        }
        let cert_cache = IntCounterVec::new(
            Opts::new("waproxy_upstream_cert_cache_total", "Certificate chain checks, by cache hit or miss."),
            &["result"],
        )?;
        for r in ["hit", "miss"] {
            cert_cache.with_label_values(&[r]);
        }
        Ok(SessionMetrics {
            sessions_active: IntGauge::new(
                "waproxy_sessions_active",
                "Sessions holding a registry claim (at most one per account holds an upstream).",
            )?,
            upstream_connections: IntGauge::new(
                "waproxy_upstream_connections",
                "chatd connections owned by running relays.",
            )?,
            upstream_logins,
            upstream_login_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "waproxy_upstream_login_duration_seconds",
                    "Time from the TCP connect to chatd's first stanza.",
                )
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            )?,
            upstream_connect_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "waproxy_upstream_connect_duration_seconds",
                    "Time to establish the TCP connection to chatd.",
                )
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            )?,
            upstream_handshake_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "waproxy_upstream_handshake_duration_seconds",
                    "Time from the TCP connection to the Noise handshake's last message written.",
                )
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            )?,
            cert_cache,
            relay_frames,
            relay_bytes,
            relay_stalls,
            relay_buffered,
            relay_buffer_capacity: IntGauge::new(
                "waproxy_relay_buffer_capacity_bytes",
                "Heap capacity of relay buffers now, all sessions.",
            )?,
            closes,
            replacements: IntCounter::new(
                "waproxy_session_replacements_total",
                "Sessions cancelled because a newer login claimed their account.",
            )?,
            dirs,
        })
    }

    /// Creates the metrics and registers them with `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self::new()?;
        registry.register(Box::new(m.sessions_active.clone()))?;
        registry.register(Box::new(m.upstream_connections.clone()))?;
        registry.register(Box::new(m.upstream_logins.clone()))?;
        registry.register(Box::new(m.upstream_login_duration.clone()))?;
        registry.register(Box::new(m.upstream_connect_duration.clone()))?;
        registry.register(Box::new(m.upstream_handshake_duration.clone()))?;
        registry.register(Box::new(m.cert_cache.clone()))?;
        registry.register(Box::new(m.relay_frames.clone()))?;
        registry.register(Box::new(m.relay_bytes.clone()))?;
        registry.register(Box::new(m.relay_stalls.clone()))?;
        registry.register(Box::new(m.relay_buffered.clone()))?;
        registry.register(Box::new(m.relay_buffer_capacity.clone()))?;
        registry.register(Box::new(m.closes.clone()))?;
        registry.register(Box::new(m.replacements.clone()))?;
        Ok(m)
    }

    /// Counts a session end.
    pub fn closed(&self, reason: CloseReason) {
        self.closes.with_label_values(&[reason.as_str()]).inc();
    }

    /// Bytes buffered now in `direction`, across all sessions.
    pub fn buffered_bytes(&self, direction: Direction) -> i64 {
        self.dirs[direction.index()].buffered.get()
    }

    /// Stanzas relayed so far in `direction`.
    pub fn frames(&self, direction: Direction) -> u64 {
        self.dirs[direction.index()].frames.get()
    }

    /// Backpressure stalls so far in `direction`.
    pub fn stalls(&self, direction: Direction) -> u64 {
        self.dirs[direction.index()].stalls.get()
    }

    /// Sessions closed so far with `reason`.
    pub fn closes_with(&self, reason: CloseReason) -> u64 {
        self.closes.with_label_values(&[reason.as_str()]).get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_once_and_names_follow_conventions() {
        let registry = Registry::new();
        let m = SessionMetrics::register(&registry).unwrap();
        m.dirs[0].frames.inc();
        m.closed(CloseReason::ClientIdle);
        let families = registry.gather();
        for f in &families {
            let name = f.name();
            assert!(name.starts_with("waproxy_"), "{name}");
            if f.get_field_type() == prometheus::proto::MetricType::COUNTER {
                assert!(name.ends_with("_total"), "{name}");
            }
            for metric in f.get_metric() {
                for label in metric.get_label() {
                    assert!(["direction", "reason", "result"].contains(&label.name()), "{name}");
                }
            }
        }
        assert_eq!(m.frames(Direction::ToUpstream), 1);
        assert_eq!(m.closes_with(CloseReason::ClientIdle), 1);
        assert!(SessionMetrics::register(&registry).is_err(), "a second registration collides");
    }
}
