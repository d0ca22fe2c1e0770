//! Edge metrics. Names follow Prometheus conventions (`waproxy_` prefix, `_total` counters,
//! `_seconds` durations); labels are bounded enums, never user identities.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `waproxy_edge_connections_total` | counter | `listener` (tcp, tls, ws) | client connections accepted (a WebSocket connection counts once its upgrade succeeded) |
//! | `waproxy_logins_total` | counter | `result` (see [`LoginDecision`]) | login attempts by the edge's decision |
//! | `waproxy_edge_login_check_duration_seconds` | histogram | | accept to the login frame parsed and the token verified: the edge's share of login latency (the session layer's `waproxy_upstream_login_duration_seconds` is the rest) |
//! | `waproxy_jwks_refreshes_total` | counter | | successful Partner JWKS fetches |
//! | `waproxy_jwks_refresh_failures_total` | counter | | failed Partner JWKS fetches |
//! | `waproxy_jwks_refetches_suppressed_total` | counter | | unknown-kid refetches skipped by the rate limit |
//! | `waproxy_jwks_tls_failures_total` | counter | | JWKS fetches failed on TLS: certificate refused (untrusted, wrong name, expired) or handshake failed; included in the failures above |
//! | `waproxy_token_cache_hits_total` | counter | | logins whose token was answered by the cache of verified tokens (no RSA verification; `auth.token_cache_entries`) |
//! | `waproxy_token_cache_entries` | gauge | | verified tokens the cache holds now |
//! | `waproxy_handshakes_in_flight` | gauge | | logins past the edge's checks whose chatd login has not answered yet (bounded by `limits.max_concurrent_handshakes`; a slot ends when the session layer has the answer: chatd's first stanza, or the proxy's own refusal) |
//! | `waproxy_connections_rate_limited_total` | counter | | connections refused by the per-source-IP rate limit (`limits.per_ip_connections_per_sec`) with `<failure reason="429" retry_after="N"/>` |
//! | `waproxy_proxy_protocol_refused_total` | counter | `reason` (untrusted, invalid, closed) | plain-TCP connections closed because `edge.proxy_protocol` is on and the peer is not trusted, sent no valid header, or closed before one |

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// What the edge decided about a login attempt, as the `result` label. chatd's own answer to the
/// logins the edge forwards is the session layer's `waproxy_upstream_logins_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginDecision {
    /// Passed the edge's checks and was handed to the session layer.
    Forwarded,
    /// No login frame before the login timeout.
    Timeout,
    /// The first frame was not a well-formed login (400).
    BadLogin,
    /// The token failed verification or names another account (401); no upstream was opened.
    Unauthorized,
    /// Shed with 429 and a retry hint: the proxy is at `limits.max_sessions`, or
    /// `limits.max_concurrent_handshakes` logins are already waiting for chatd.
    Overloaded,
    /// The proxy is draining (503, reconnect elsewhere).
    Draining,
}

impl LoginDecision {
    pub const ALL: [LoginDecision; 6] = [
        LoginDecision::Forwarded,
        LoginDecision::Timeout,
        LoginDecision::BadLogin,
        LoginDecision::Unauthorized,
        LoginDecision::Overloaded,
        LoginDecision::Draining,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LoginDecision::Forwarded => "forwarded",
            LoginDecision::Timeout => "timeout",
            LoginDecision::BadLogin => "bad_login",
            LoginDecision::Unauthorized => "unauthorized",
            LoginDecision::Overloaded => "overloaded",
            LoginDecision::Draining => "draining",
        }
    }
}

#[derive(Clone)]
pub struct EdgeMetrics {
    pub connections: IntCounterVec,
    pub logins: IntCounterVec,
    pub login_check_duration: Histogram,
    pub jwks_refreshes: IntCounter,
    pub jwks_refresh_failures: IntCounter,
    pub jwks_refetches_suppressed: IntCounter,
    pub jwks_tls_failures: IntCounter,
    pub token_cache_hits: IntCounter,
    pub token_cache_entries: IntGauge,
    pub handshakes_in_flight: IntGauge,
    pub connections_rate_limited: IntCounter,
    pub proxy_protocol_refused: IntCounterVec,
    /// `logins` by decision, in [`LoginDecision::ALL`]'s order: resolved once, so a login does
    /// not hash its label.
    login_counters: [IntCounter; 6],
}

impl EdgeMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<EdgeMetrics> {
        let logins = IntCounterVec::new(Opts::new("waproxy_logins_total", "Login attempts by outcome."), &["result"])?;
        let login_counters = LoginDecision::ALL.map(|d| logins.with_label_values(&[d.as_str()]));
        let m = EdgeMetrics {
            connections: IntCounterVec::new(
                Opts::new("waproxy_edge_connections_total", "Client connections accepted."),
                &["listener"],
            )?,
            logins,
            login_check_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "waproxy_edge_login_check_duration_seconds",
                    "Time from accepting a client to its login frame parsed and token verified.",
                )
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            )?,
            jwks_refreshes: IntCounter::new("waproxy_jwks_refreshes_total", "Successful Partner JWKS fetches.")?,
            jwks_refresh_failures: IntCounter::new(
                "waproxy_jwks_refresh_failures_total",
                "Failed Partner JWKS fetches.",
            )?,
            jwks_refetches_suppressed: IntCounter::new(
                "waproxy_jwks_refetches_suppressed_total",
                "Unknown-kid JWKS refetches skipped by the rate limit.",
            )?,
            jwks_tls_failures: IntCounter::new(
                "waproxy_jwks_tls_failures_total",
                "Partner JWKS fetches failed on TLS (certificate refused or handshake failed).",
            )?,
            token_cache_hits: IntCounter::new(
                "waproxy_token_cache_hits_total",
                "Logins whose token was answered by the cache of verified tokens.",
            )?,
            token_cache_entries: IntGauge::new("waproxy_token_cache_entries", "Verified tokens the cache holds now.")?,
            handshakes_in_flight: IntGauge::new(
                "waproxy_handshakes_in_flight",
                "Logins whose chatd handshake is in progress (bounded by limits.max_concurrent_handshakes).",
            )?,
            connections_rate_limited: IntCounter::new(
                "waproxy_connections_rate_limited_total",
                "Connections refused by the per-source-IP connection rate limit.",
            )?,
            proxy_protocol_refused: IntCounterVec::new(
                Opts::new(
                    "waproxy_proxy_protocol_refused_total",
                    "Plain-TCP connections closed for lack of a trusted PROXY protocol header.",
                ),
                &["reason"],
            )?,
            login_counters,
        };
        registry.register(Box::new(m.connections.clone()))?;
        registry.register(Box::new(m.logins.clone()))?;
        registry.register(Box::new(m.login_check_duration.clone()))?;
        registry.register(Box::new(m.jwks_refreshes.clone()))?;
        registry.register(Box::new(m.jwks_refresh_failures.clone()))?;
        registry.register(Box::new(m.jwks_refetches_suppressed.clone()))?;
        registry.register(Box::new(m.jwks_tls_failures.clone()))?;
        registry.register(Box::new(m.token_cache_hits.clone()))?;
        registry.register(Box::new(m.token_cache_entries.clone()))?;
        registry.register(Box::new(m.handshakes_in_flight.clone()))?;
        registry.register(Box::new(m.connections_rate_limited.clone()))?;
        registry.register(Box::new(m.proxy_protocol_refused.clone()))?;
        Ok(m)
    }

    pub fn login(&self, result: LoginDecision) {
        self.login_counters[result as usize].inc();
    }

    /// Brings the JWKS counters up to the verifier's own counts (called before each scrape).
    pub fn sync_jwks(&self, stats: &jwks::VerifierStats) {
        for (counter, value) in [
            (&self.jwks_refreshes, stats.refreshes),
            (&self.jwks_refresh_failures, stats.refresh_failures),
            (&self.jwks_refetches_suppressed, stats.refetches_suppressed),
            (&self.jwks_tls_failures, stats.tls_failures),
        ] {
            counter.inc_by(value.saturating_sub(counter.get()));
        }
    }

    /// Brings the token cache's figures up to date (called before each scrape).
    pub fn sync_token_cache(&self, hits: u64, entries: usize) {
        self.token_cache_hits.inc_by(hits.saturating_sub(self.token_cache_hits.get()));
        self.token_cache_entries.set(i64::try_from(entries).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_decision_counts_under_its_own_label() {
        let m = EdgeMetrics::register(&Registry::new()).expect("register");
        for (n, decision) in LoginDecision::ALL.into_iter().enumerate() {
            for _ in 0..=n {
                m.login(decision);
            }
        }
        for (n, decision) in LoginDecision::ALL.into_iter().enumerate() {
            assert_eq!(m.logins.with_label_values(&[decision.as_str()]).get(), n as u64 + 1, "{decision:?}");
        }
        m.sync_token_cache(5, 3);
        m.sync_token_cache(7, 2);
        assert_eq!((m.token_cache_hits.get(), m.token_cache_entries.get()), (7, 2));
    }
}
