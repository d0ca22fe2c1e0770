//! Where a session dials (chatd's address decided at dial time) and when it says its login has
//! its answer (the edge's handshake slot ends there).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use session::{CloseReason, FirstReply, SessionContext, SessionError, SessionMetrics, UpstreamAddr, run_session_with};
use support::*;

#[test]
fn an_address_literal_is_dialled_as_is_and_a_name_is_resolved() {
    let literal: std::net::SocketAddr = "127.0.0.1:5222".parse().unwrap();
    assert_eq!(UpstreamAddr::from("127.0.0.1:5222"), UpstreamAddr::Socket(literal));
    assert_eq!(UpstreamAddr::from("chatd.example:5222"), UpstreamAddr::Host("chatd.example:5222".into()));
}

/// A counter the session's `login_answered` bumps.
fn answered() -> (Arc<AtomicUsize>, impl FnOnce() + Send) {
    let count = Arc::new(AtomicUsize::new(0));
    let bump = Arc::clone(&count);
    (count, move || {
        bump.fetch_add(1, Ordering::SeqCst);
    })
}

#[tokio::test]
async fn a_host_is_resolved_at_the_dial_and_the_login_is_answered_before_the_client_hears() {
    let partner = Partner::start(1).await;
    let sim = sim_with(&partner, |_| {}).await;
    let dev = Device::new();
    let (jid, id) = enlist(&sim, &partner, &dev, "hana").await;
    let mut upstream = upstream_config(&sim);
    upstream.addr = UpstreamAddr::Host(sim.chat_addr.to_string());
    let ctx = SessionContext::new(upstream, relay_config(), SessionMetrics::new().unwrap());

    let (side, mut client) = duplex_client(64 * 1024);
    let (count, on_answered) = answered();
    let request = login_request(&jid, &dev, &interop_payload(id, &partner.token("hana")));
    let task = tokio::spawn(async move {
        let outcome = run_session_with(&ctx, request, side, BytesMut::new(), on_answered).await;
        (outcome, ctx)
    });
    assert_eq!(client.recv().await.map(|n| n.tag), Some("success".into()));
    assert_eq!(count.load(Ordering::SeqCst), 1, "signalled before the client got the answer");
    drop(client);
    let (outcome, ctx) = task.await.unwrap();
    assert!(matches!(outcome.first, FirstReply::Accepted));
    assert_eq!(count.load(Ordering::SeqCst), 1, "signalled once");
    assert!(ctx.registry.is_empty());
    wait_current(&sim, &jid, 0).await;
}

#[tokio::test]
async fn a_name_that_does_not_resolve_is_an_unreachable_chatd_and_still_answers_the_login() {
    let partner = Partner::start(1).await;
    let sim = sim_with(&partner, |_| {}).await;
    let dev = Device::new();
    let (jid, id) = enlist(&sim, &partner, &dev, "ines").await;
    // `.invalid` never resolves (RFC 6761); without a resolver the dial times out instead.
    let mut upstream = upstream_config(&sim);
    upstream.addr = UpstreamAddr::from("chatd.invalid:5222");
    upstream.connect_timeout = Duration::from_secs(2);
    let ctx = SessionContext::new(upstream, relay_config(), SessionMetrics::new().unwrap());

    let (side, mut client) = duplex_client(4096);
    let (count, on_answered) = answered();
    let request = login_request(&jid, &dev, &interop_payload(id, &partner.token("ines")));
    let outcome = run_session_with(&ctx, request, side, BytesMut::new(), on_answered).await;
    assert_eq!(outcome.reason, CloseReason::UpstreamUnreachable, "{:?}", outcome.first);
    let FirstReply::ProxyFailure { error, .. } = &outcome.first else { panic!("{:?}", outcome.first) };
    assert!(
        matches!(error, SessionError::Resolve { host, .. } if host == "chatd.invalid:5222")
            || matches!(error, SessionError::ConnectTimeout { .. }),
        "{error}"
    );
    assert_eq!(count.load(Ordering::SeqCst), 1);
    let n = client.recv().await.unwrap();
    assert_eq!((n.tag.as_str(), n.get_str("reason")), ("failure", Some("503")));
    assert!(client.until_eof().await.is_empty());
    assert!(ctx.registry.is_empty());
    assert_eq!(ctx.metrics.closes_with(CloseReason::UpstreamUnreachable), 1);
    assert_eq!(observed(&sim, &jid).await["total"], 0);
}
