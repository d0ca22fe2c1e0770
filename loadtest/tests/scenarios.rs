//! Tiny scenarios over real loopback sockets against an in-process proxy on its embedded default
//! (chatd simulator and partner server): every path logs in, stanzas cross, the simulator's
//! observation API agrees, and nothing is reported as violated.

use std::sync::Arc;
use std::time::Duration;

use loadtest::env::{Env, External};
use loadtest::progress::Progress;
use loadtest::scenarios::{self, ChatParams, ChurnParams, Ctx, RampParams, StormParams};

async fn setup() -> (local_world::LocalWorld, Ctx) {
    let mut config = proxy::config::Config::local();
    config.edge.listen = Some("127.0.0.1:0".parse().unwrap());
    config.admin.listen = "127.0.0.1:0".parse().unwrap();
    let proxy = local_world::start(config).await.unwrap();
    let embedded = proxy.embedded.as_ref().unwrap();
    let ext = External {
        proxy_addr: proxy.tcp_addr.unwrap(),
        proxy_admin: Some(proxy.admin_addr),
        // The proxy runs in this process: /proc sampling reads this test's own entry.
        proxy_pid: Some(std::process::id()),
        sim_http: embedded.sim.http_url(),
        sim_chat: embedded.sim.chat_addr,
        partner_url: embedded.partner.base_url().to_owned(),
    };
    let dir = std::env::temp_dir().join(format!("loadtest-test-{}", std::process::id()));
    let env = Env::external(&ext, false, &dir).await.unwrap();
    (proxy, Ctx::new(env, Arc::new(Progress::default()), true, None))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ramp_chat_storm_and_churn_run_clean_through_the_proxy_and_direct() {
    let (_proxy, ctx) = setup().await;

    let ramp = scenarios::ramp(&ctx, &RampParams { sessions: 20, concurrency: 8 }).await.unwrap();
    assert!(ramp.violations.is_empty(), "{:?}", ramp.violations);
    assert_eq!(ramp.json["proxy"]["established"], 20);
    assert_eq!(ramp.json["direct"]["established"], 20);
    assert_eq!(ramp.json["observation"]["max_concurrent_seen"], 1, "{}", ramp.json["observation"]);
    assert_eq!(ramp.json["observation"]["ip_missing"], 0);

    let chat = scenarios::chat(
        &ctx,
        &ChatParams {
            pairs: 2,
            rate: Some(100.0),
            duration: Duration::from_secs(1),
            saturation: Duration::from_millis(500),
            window: 4,
        },
    )
    .await
    .unwrap();
    assert!(chat.violations.is_empty(), "{:?}", chat.violations);
    for path in ["proxy", "direct"] {
        let open = &chat.json[path]["open_loop"][0];
        let sent = open["sent"].as_u64().unwrap();
        assert!(sent >= 50, "{path}: {open}");
        assert_eq!(open["delivered"], sent, "{path}: every stanza arrived");
        assert!(open["latency"]["p99_us"].as_u64().unwrap() > 0);
        assert!(chat.json[path]["saturation"]["stanzas_per_sec"].as_f64().unwrap() > 0.0);
    }

    let storm = scenarios::storm(
        &ctx,
        &StormParams { sessions: 20, rounds: 1, jitter: Duration::from_millis(100), concurrency: 8 },
    )
    .await
    .unwrap();
    assert!(storm.violations.is_empty(), "{:?}", storm.violations);
    assert_eq!(storm.json["rounds"][0]["reconnected"], 20);
    assert_eq!(storm.json["observation"]["max_concurrent_seen"], 1);

    let churn = scenarios::churn(&ctx, &ChurnParams { clients: 2, cycles: 30 }).await.unwrap();
    assert_eq!(churn.json["cycles"], 30);
    assert!(churn.json["failures"].as_object().unwrap().is_empty(), "{}", churn.json["failures"]);
}
