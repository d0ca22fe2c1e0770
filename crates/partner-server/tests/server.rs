//! The partner server in-process, over real loopback sockets.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Http, SIM_ISSUER, Simulator, config, push, start, within};
use hyper::{Method, StatusCode, Version};
use jwks::{Expectations, JwksVerifier, PartnerClaims, PushClaims, SigningKeys, VerifierConfig, unix_now};
use serde_json::json;

async fn issue(http: &Http, base: &str, body: serde_json::Value) -> common::Reply {
    http.post_json(&format!("{base}/oauth/token"), &[], &body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_issue_verifies_against_own_jwks() {
    within(async {
        let server = start(config()).await;
        let http = Http::h1();
        let reply =
            issue(&http, server.base_url(), json!({"user_identifier": "alice", "wa_account": "1-42@interop"})).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("cache-control"), Some("no-store"));
        let body = reply.json();
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 3600);
        let token = body["access_token"].as_str().expect("access_token").to_owned();

        let verifier = JwksVerifier::new(&server.jwks_url(), VerifierConfig::default()).expect("verifier");
        let expect = Expectations::new(server.issuer(), "whatsapp");
        let claims: PartnerClaims = verifier.verify(&token, &expect).await.expect("token verifies");
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.iss, server.base_url());
        assert_eq!(claims.wa_account.as_deref(), Some("1-42@interop"));
        assert_eq!(claims.exp - claims.iat, 3600);

        // Without wa_account the claim is absent; 40 multi-byte characters are fine.
        let forty = "é".repeat(40);
        let reply = issue(&http, server.base_url(), json!({"user_identifier": forty})).await;
        assert_eq!(reply.status, StatusCode::OK);
        let token = reply.json()["access_token"].as_str().unwrap_or_default().to_owned();
        let claims: PartnerClaims = verifier.verify(&token, &expect).await.expect("verifies");
        assert_eq!((claims.sub.chars().count(), claims.wa_account), (40, None));

        for bad in [
            json!({"user_identifier": ""}),
            json!({"user_identifier": "a".repeat(41)}),
            json!({"user": "alice"}),
            json!({"user_identifier": "alice", "wa_account": ""}),
            json!("alice"),
        ] {
            let reply = issue(&http, server.base_url(), bad.clone()).await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
            assert!(reply.json()["error"].is_string());
        }
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_via_admin_endpoint() {
    within(async {
        let mut cfg = config();
        cfg.admin_token = Some(partner_server::Secret::new("admin-token-0123456789"));
        let server = start(cfg).await;
        let http = Http::h1();
        let rotate_url = format!("{}/admin/rotate-keys", server.base_url());
        let old_kid = server.signing_keys().current_kid();
        let old_token =
            issue(&http, server.base_url(), json!({"user_identifier": "alice"})).await.json()["access_token"]
                .as_str()
                .unwrap_or_default()
                .to_owned();

        let verifier = JwksVerifier::new(
            &server.jwks_url(),
            VerifierConfig { min_refetch_interval: Duration::from_millis(10), ..VerifierConfig::default() },
        )
        .expect("verifier");
        let expect = Expectations::new(server.issuer(), server.audience());
        verifier.verify::<PartnerClaims>(&old_token, &expect).await.expect("old token verifies");

        // The admin token is required.
        let denied = http.send(Method::POST, &rotate_url, &[], Bytes::new()).await;
        assert_eq!(denied.status, StatusCode::UNAUTHORIZED);
        let denied =
            http.send(Method::POST, &rotate_url, &[("authorization", "Bearer wrong-token")], Bytes::new()).await;
        assert_eq!(denied.status, StatusCode::UNAUTHORIZED);

        let reply = http
            .send(Method::POST, &rotate_url, &[("authorization", "Bearer admin-token-0123456789")], Bytes::new())
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        let new_kid = reply.json()["kid"].as_str().unwrap_or_default().to_owned();
        assert!(!new_kid.is_empty() && new_kid != old_kid);
        assert_eq!(server.signing_keys().current_kid(), new_kid);

        let jwks = http.get(&server.jwks_url()).await.json();
        let kids: Vec<&str> = jwks["keys"].as_array().expect("keys").iter().filter_map(|k| k["kid"].as_str()).collect();
        assert_eq!(kids, [new_kid.as_str(), old_kid.as_str()]);

        let new_token =
            issue(&http, server.base_url(), json!({"user_identifier": "alice"})).await.json()["access_token"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
        assert_eq!(jsonwebtoken_kid(&new_token), new_kid);
        tokio::time::sleep(Duration::from_millis(20)).await;
        verifier.verify::<PartnerClaims>(&new_token, &expect).await.expect("new kid verifies after refetch");
        verifier.verify::<PartnerClaims>(&old_token, &expect).await.expect("old kid still published");
        server.shutdown().await;
    })
    .await;
}

fn jsonwebtoken_kid(token: &str) -> String {
    use base64::Engine as _;
    let header = token.split('.').next().unwrap_or_default();
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).unwrap_or_default();
    let value: serde_json::Value = serde_json::from_slice(&raw).unwrap_or_default();
    value["kid"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_with_valid_simulator_jwt_is_recorded() {
    within(async {
        let sim = Simulator::start().await;
        let mut cfg = config();
        cfg.push.jwks_url = Some(sim.jwks.url());
        let server = start(cfg).await;
        let http = Http::h1();

        let reply = push(&http, &server, Some(&sim.push_token(server.push_audience(), "alice")), "alice").await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT, "{:?}", reply.json());
        // The seed's sample push token has no sub: accepted too.
        let no_sub = sim.keys.sign(&PushClaims::new(SIM_ISSUER, server.push_audience(), None, Duration::from_secs(60)));
        let reply = push(&http, &server, Some(&no_sub.expect("sign")), "bob").await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT);

        let list = http.get(&format!("{}/admin/pushes", server.base_url())).await;
        assert_eq!(list.status, StatusCode::OK);
        let list = list.json();
        let entries = list.as_array().expect("array");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0]["to"], "alice");
        assert_eq!(entries[1]["to"], "bob");
        let at = entries[0]["at_unix_ms"].as_u64().expect("at_unix_ms");
        assert!(at / 1000 >= unix_now() - 60 && at / 1000 <= unix_now() + 1);
        assert_eq!(server.pushes().len(), 2);
        assert_eq!(sim.jwks.requests(), 1, "JWKS fetched once and cached");
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_refused_for_missing_bad_expired_and_foreign_tokens() {
    within(async {
        let sim = Simulator::start().await;
        let mut cfg = config();
        cfg.push.jwks_url = Some(sim.jwks.url());
        let server = start(cfg).await;
        let http = Http::h1();
        let aud = server.push_audience().to_owned();
        let sign = |claims: &PushClaims| sim.keys.sign(claims).expect("sign");
        let now = unix_now();

        let expired = sign(&PushClaims {
            iss: SIM_ISSUER.into(),
            aud: aud.clone(),
            sub: Some("alice".into()),
            exp: now - 600,
            iat: now - 900,
        });
        let foreign_issuer = sign(&PushClaims::new("SOMEONE", &aud, Some("alice".into()), Duration::from_secs(60)));
        let wrong_audience =
            sign(&PushClaims::new(SIM_ISSUER, "https://other.example", Some("alice".into()), Duration::from_secs(60)));
        let stranger = SigningKeys::generate().expect("keygen");
        let unknown_key = stranger
            .sign(&PushClaims::new(SIM_ISSUER, &aud, Some("alice".into()), Duration::from_secs(60)))
            .expect("sign");
        let wrong_subject = sim.push_token(&aud, "mallory");
        let mut tampered = sim.push_token(&aud, "alice").into_bytes();
        let i = tampered.len() - 40;
        tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).expect("ascii");

        let cases: [(Option<&str>, &str); 8] = [
            (None, "missing_token"),
            (Some("not-a-jwt"), "malformed"),
            (Some(&expired), "expired"),
            (Some(&foreign_issuer), "wrong_issuer"),
            (Some(&wrong_audience), "wrong_audience"),
            (Some(&unknown_key), "unknown_kid"),
            (Some(&wrong_subject), "subject_mismatch"),
            (Some(&tampered), "bad_signature"),
        ];
        for (token, code) in cases {
            let reply = push(&http, &server, token, "alice").await;
            assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{code}");
            assert_eq!(reply.json()["error"], code);
            assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
            // The refusal never echoes the token.
            if let Some(t) = token.filter(|t| t.len() > 60) {
                assert!(!String::from_utf8_lossy(&reply.body).contains(&t[t.len() - 40..]));
            }
        }
        // Also a wrong scheme.
        let reply = http
            .post_json(&format!("{}/push", server.base_url()), &[("authorization", "Basic YTpi")], &json!({"to": "a"}))
            .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert!(server.pushes().is_empty(), "nothing recorded");
        server.shutdown().await;

        // Without a configured pusher JWKS, /push is unavailable until set at run time.
        let server = start(config()).await;
        let token = sim.push_token(server.push_audience(), "alice");
        let reply = push(&http, &server, Some(&token), "alice").await;
        assert_eq!(
            (reply.status, reply.json()["error"].clone()),
            (StatusCode::SERVICE_UNAVAILABLE, json!("push_not_configured"))
        );
        server.set_push_jwks_url(&sim.jwks.url()).expect("set url");
        let reply = push(&http, &server, Some(&token), "alice").await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT);
        assert!(server.set_push_jwks_url("ftp://x/jwks").is_err());
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_wakes_on_push() {
    within(async {
        let sim = Simulator::start().await;
        let mut cfg = config();
        cfg.push.jwks_url = Some(sim.jwks.url());
        cfg.limits.max_wait_ms = 1500;
        let server = start(cfg).await;
        let http = Http::h1();
        let wait_url = |user: &str, ms: u64| format!("{}/push/wait?user={user}&timeout_ms={ms}", server.base_url());

        // A waiting client is woken by the push, well before its timeout.
        let waiter = {
            let (http, url) = (http.clone(), wait_url("bob", 60_000));
            tokio::spawn(async move {
                let started = Instant::now();
                (http.get(&url).await, started.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        let token = sim.push_token(server.push_audience(), "bob");
        assert_eq!(push(&http, &server, Some(&token), "bob").await.status, StatusCode::NO_CONTENT);
        let (reply, _) = waiter.await.expect("waiter");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.json(), json!({"to": "bob"}));

        // Consumed: the next wait times out with 204.
        let reply = http.get(&wait_url("bob", 100)).await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT);

        // A push that arrived while nobody waited is delivered to the next wait at once.
        assert_eq!(push(&http, &server, Some(&token), "bob").await.status, StatusCode::NO_CONTENT);
        let started = Instant::now();
        let reply = http.get(&wait_url("bob", 10_000)).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(started.elapsed() < Duration::from_secs(2));

        // Another user's push does not wake bob; the timeout is capped at limits.max_wait_ms (1.5 s).
        let carol = sim.push_token(server.push_audience(), "carol");
        assert_eq!(push(&http, &server, Some(&carol), "carol").await.status, StatusCode::NO_CONTENT);
        let started = Instant::now();
        let reply = http.get(&wait_url("bob", 600_000)).await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT);
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(1400) && waited < Duration::from_secs(10), "{waited:?}");

        // Percent-encoded users and bad queries.
        let reply = http.get(&format!("{}/push/wait?user=%E", server.base_url())).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        let reply = http.get(&format!("{}/push/wait?timeout_ms=5", server.base_url())).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        let reply = http.get(&format!("{}/push/wait?user=bob&timeout_ms=soon", server.base_url())).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_upload_download_and_limits() {
    within(async {
        let mut cfg = config();
        cfg.media.max_object_bytes = 4096;
        cfg.media.max_total_bytes = 8192;
        let server = start(cfg).await;
        let http = Http::h1();
        let upload = format!("{}/media", server.base_url());
        let data: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();

        let reply = http.send(Method::POST, &upload, &[("content-type", "image/jpeg")], data.clone()).await;
        assert_eq!(reply.status, StatusCode::CREATED);
        let reference = reply.json()["storage_reference"].as_str().expect("storage_reference").to_owned();
        assert!(reference.len() >= 16);
        assert!(reference.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(reply.header("location"), Some(format!("/{reference}").as_str()));

        let download = http.get(&format!("{}/{reference}", server.base_url())).await;
        assert_eq!(download.status, StatusCode::OK);
        assert_eq!(download.body.as_ref(), data.as_slice());
        assert_eq!(download.header("content-type"), Some("image/jpeg"));
        assert_eq!(download.header("content-length"), Some("4096"));

        // No Content-Type given: stored as octet-stream.
        let reply = http.send(Method::POST, &upload, &[], Bytes::from_static(b"abc")).await;
        assert_eq!(reply.status, StatusCode::CREATED);
        let reference2 = reply.json()["storage_reference"].as_str().unwrap_or_default().to_owned();
        assert_ne!(reference, reference2);
        let download = http.get(&format!("{}/{reference2}", server.base_url())).await;
        assert_eq!(download.header("content-type"), Some("application/octet-stream"));
        assert_eq!(download.body.as_ref(), b"abc");

        // Unknown reference, and over the object limit.
        let unknown = http.get(&format!("{}/AAAAAAAAAAAAAAAAAAAAAA", server.base_url())).await;
        assert_eq!(unknown.status, StatusCode::NOT_FOUND);
        assert_eq!(unknown.json()["error"], "not_found");
        let too_big = http.send(Method::POST, &upload, &[], vec![0u8; 4097]).await;
        assert_eq!(too_big.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(too_big.json()["error"], "too_large");

        // 4096 + 3 stored of 8192: another 4096 does not fit.
        let full = http.send(Method::POST, &upload, &[], data.clone()).await;
        assert_eq!(full.status, StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(full.json()["error"], "storage_full");
        let usage = server.media_usage();
        assert_eq!((usage.stored_bytes, usage.objects), (4099, 2));
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_wrong_methods_and_oversized_bodies() {
    within(async {
        let mut cfg = config();
        cfg.limits.max_json_body_bytes = 1024;
        let server = start(cfg).await;
        let http = Http::h1();
        let base = server.base_url();

        let livez = http.get(&format!("{base}/livez")).await;
        assert_eq!((livez.status, livez.json()), (StatusCode::OK, json!({"status": "ok"})));

        for path in ["/nope", "/", "/oauth", "/admin", "/AAAAAAAAAAAAAAAAAAAAAA/extra"] {
            let reply = http.get(&format!("{base}{path}")).await;
            assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
            assert_eq!(reply.json()["error"], "not_found");
            assert_eq!(reply.header("content-type"), Some("application/json"));
        }
        for (method, path, allow) in [
            (Method::GET, "/oauth/token", "POST"),
            (Method::POST, "/livez", "GET"),
            (Method::PUT, "/media", "POST"),
            (Method::DELETE, "/.well-known/oauth/openid/jwks", "GET"),
            (Method::GET, "/push", "POST"),
        ] {
            let reply = http.send(method.clone(), &format!("{base}{path}"), &[], Bytes::new()).await;
            assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert_eq!(reply.header("allow"), Some(allow));
            assert_eq!(reply.json()["error"], "method_not_allowed");
        }
        let big = json!({"user_identifier": "a", "pad": "x".repeat(2000)});
        let reply = issue(&http, base, big).await;
        assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(reply.json()["error"], "too_large");
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_works() {
    within(async {
        let server = start(config()).await;
        let h2 = Http::h2();
        let livez = h2.get(&format!("{}/livez", server.base_url())).await;
        assert_eq!((livez.status, livez.version), (StatusCode::OK, Version::HTTP_2));

        let reply =
            h2.post_json(&format!("{}/oauth/token", server.base_url()), &[], &json!({"user_identifier": "dave"})).await;
        assert_eq!((reply.status, reply.version), (StatusCode::OK, Version::HTTP_2));
        let jwks = h2.get(&server.jwks_url()).await;
        assert_eq!(jwks.version, Version::HTTP_2);
        assert_eq!(jwks.json()["keys"][0]["kid"], server.signing_keys().current_kid());

        // Media over HTTP/2 (no Content-Length needed).
        let reply = h2.send(Method::POST, &format!("{}/media", server.base_url()), &[], vec![7u8; 1000]).await;
        assert_eq!(reply.status, StatusCode::CREATED);
        let reference = reply.json()["storage_reference"].as_str().unwrap_or_default().to_owned();
        let got = h2.get(&format!("{}/{reference}", server.base_url())).await;
        assert_eq!((got.status, got.body.len()), (StatusCode::OK, 1000));
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_long_polls_and_frees_the_port() {
    within(async {
        let server = start(config()).await;
        let http = Http::h1();
        let addr = server.local_addr();
        let url = format!("{}/push/wait?user=erin&timeout_ms=60000", server.base_url());
        let waiter = tokio::spawn(async move { http.get(&url).await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        server.shutdown().await;
        assert!(started.elapsed() < Duration::from_secs(5));
        let reply = waiter.await.expect("waiter");
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reply.json()["error"], "shutting_down");
        // The port is free again.
        let mut cfg = config();
        cfg.listen = addr;
        let again = start(cfg).await;
        again.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_unavailable_push_is_503_not_401() {
    within(async {
        let sim = Simulator::start().await;
        let url = sim.jwks.url();
        let token = sim.push_token("whatever", "alice");
        sim.jwks.shutdown().await;
        let mut cfg = config();
        cfg.push.jwks_url = Some(url);
        let server = start(cfg).await;
        let reply = push(&Http::h1(), &server, Some(&token), "alice").await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reply.json()["error"], "jwks_unavailable");
        server.shutdown().await;
    })
    .await;
}
