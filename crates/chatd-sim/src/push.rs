//! Push: when a Partner user has something waiting and no connection, the simulator tells the
//! Partner server, `POST {base_url}/push` with `{"to": user_identifier}` and a JWT it signs
//! itself (public keys at `/.well-known/jwks`). Retried with doubling backoff; one push per burst
//! (the next one only after the user has connected again, or after this one finally failed).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use error_report::Report;
use http_body_util::Full;
use jwks::{PushClaims, SigningKeys};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::http::PartnerClient;
use crate::sim::{PushRequest, Sim};

/// Delivers queued pushes until the queue closes. `client` speaks HTTPS to the Partner (its
/// certificate checked against the platform's roots and `http.partner_ca_file`), HTTP/1.1 as in
/// the seed's example, HTTP/2 where the Partner offers it by ALPN.
pub async fn run(sim: Arc<Sim>, keys: Arc<SigningKeys>, client: PartnerClient, mut queue: mpsc::Receiver<PushRequest>) {
    while let Some(req) = queue.recv().await {
        let (sim, keys, client) = (Arc::clone(&sim), Arc::clone(&keys), client.clone());
        tokio::spawn(async move {
            let ok = deliver(&sim, &keys, &client, &req).await;
            let counter = if ok { &sim.totals.pushes_sent } else { &sim.totals.pushes_failed };
            counter.fetch_add(1, Ordering::Relaxed);
            if !ok {
                sim.push_failed(&req.account_jid);
            }
        });
    }
}

async fn deliver(sim: &Sim, keys: &SigningKeys, client: &PartnerClient, req: &PushRequest) -> bool {
    let Some(integrator) = sim.config.integrators.iter().find(|i| i.id == req.integrator) else { return false };
    let url = format!("{}/push", integrator.base_url.trim_end_matches('/'));
    let body = serde_json::json!({ "to": req.user_identifier }).to_string();
    let mut backoff = Duration::from_millis(sim.config.push.initial_backoff_ms);
    for attempt in 1..=sim.config.push.max_attempts.max(1) {
        // As in the seed's sample: iss "WHATSAPP" (configurable), aud the Partner's base URL.
        let claims = PushClaims::new(
            sim.config.push.issuer.clone(),
            integrator.base_url.clone(),
            Some(req.user_identifier.clone()),
            Duration::from_secs(60),
        );
        let token = match keys.sign(&claims) {
            Ok(t) => t,
            Err(e) => {
                warn!(error = %Report(&e), "signing a push token failed");
                return false;
            }
        };
        let request = hyper::Request::post(&url)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::from(body.clone())));
        let Ok(request) = request else { return false };
        match tokio::time::timeout(Duration::from_secs(5), client.request(request)).await {
            Ok(Ok(resp)) if resp.status().is_success() => {
                debug!(account = %req.account_jid, attempt, "push delivered");
                return true;
            }
            Ok(Ok(resp)) => debug!(account = %req.account_jid, attempt, status = %resp.status(), "push refused"),
            Ok(Err(e)) => match tls_config::find_tls_error(&e) {
                // A certificate problem will not fix itself between retries: say so loudly.
                Some(tls) => {
                    sim.totals.partner_tls_failures.fetch_add(1, Ordering::Relaxed);
                    warn!(account = %req.account_jid, attempt, url, error = %Report(tls), "push refused: TLS with the Partner failed");
                }
                None => {
                    debug!(account = %req.account_jid, attempt, error = %Report(&e), "push failed")
                }
            },
            Err(_) => debug!(account = %req.account_jid, attempt, "push timed out"),
        }
        tokio::time::sleep(backoff).await;
        backoff *= 2;
    }
    warn!(account = %req.account_jid, "push gave up");
    false
}
