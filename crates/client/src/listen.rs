//! The long-running receive loop: stay connected, ping when idle, and reconnect by the close
//! reason (backoff with jitter, `retry_after` honoured, re-enlist after removal, stop when
//! replaced). In push mode the device disconnects when idle, like a phone app going to sleep,
//! and connects again only when the partner server's push record wakes it, then drains its
//! mailbox.

use std::time::Duration;

use tokio::time::Instant;

use crate::client::{Client, ClientError, Event, enlist_partner};
use crate::conn::Route;
use crate::reconnect::{Backoff, Decision, ServerClose};
use crate::services::Services;
use crate::store::{Account, Store};

/// How to listen.
#[derive(Debug, Clone)]
pub struct ListenOptions {
    pub route: Route,
    /// Stop after this long (the CLI's `--for`); `None` runs until stopped.
    pub duration: Option<Duration>,
    /// Ping after this long without traffic.
    pub keepalive: Duration,
    /// Sleep between pushes: disconnect after `idle` without events, wake on a push.
    pub push: Option<PushOptions>,
    pub backoff: Backoff,
    /// The application shows every message handed to `on_event`: answer each with a read
    /// receipt (sent only while the user's read-receipt setting is on). Off by default.
    pub mark_read: bool,
}

#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Stay connected this long after the last event before sleeping.
    pub idle: Duration,
}

impl ListenOptions {
    pub fn new(route: Route) -> ListenOptions {
        ListenOptions {
            route,
            duration: None,
            keepalive: Duration::from_secs(20),
            push: None,
            backoff: Backoff::default(),
            mark_read: false,
        }
    }
}

/// What the loop reports besides events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Connected,
    /// Reconnecting after `reason` in `after`.
    Reconnecting {
        reason: String,
        after: Duration,
    },
    ReEnlisted {
        jid: String,
    },
    /// Disconnected, waiting for a push.
    Sleeping,
    WokenByPush,
}

/// Runs until the duration ends or a close that must not be retried; returns the store.
pub async fn listen(
    mut store: Store,
    mut opts: ListenOptions,
    mut on_event: impl FnMut(&Event),
    mut on_status: impl FnMut(&Status),
) -> Result<Store, ClientError> {
    let deadline = opts.duration.map(|d| Instant::now() + d);
    let left = |deadline: Option<Instant>| deadline.map(|d| d.saturating_duration_since(Instant::now()));
    let expired = |deadline: Option<Instant>| left(deadline).is_some_and(|l| l.is_zero());
    loop {
        if expired(deadline) {
            return Ok(store);
        }
        let mut client = match Client::login(store, &opts.route).await {
            Ok(c) => c,
            Err(failed) => {
                store = failed.store;
                let reason = match failed.error {
                    ClientError::Refused(r) | ClientError::Closed(r) => r,
                    ClientError::Conn(_) => ServerClose::Dropped,
                    e => return Err(e),
                };
                match next_step(&mut store, &mut opts.backoff, &reason, &mut on_status).await? {
                    Some(after) => {
                        tokio::time::sleep(cap(after, left(deadline))).await;
                        continue;
                    }
                    None => return Err(ClientError::Refused(reason)),
                }
            }
        };
        on_status(&Status::Connected);
        opts.backoff.reset();
        let mut last_event = Instant::now();
        // `None`: idle in push mode, time to sleep.
        let ended: Option<ServerClose> = loop {
            if expired(deadline) {
                return Ok(client.close().await);
            }
            let mut wait = cap(opts.keepalive, left(deadline));
            if let Some(p) = &opts.push {
                wait = wait.min(p.idle.saturating_sub(last_event.elapsed()).max(Duration::from_millis(10)));
            }
            let quiet_since = Instant::now();
            match client.next_event(wait).await {
                Ok(Some(Event::Closed(reason))) => break Some(reason),
                Ok(Some(e)) => {
                    last_event = Instant::now();
                    on_event(&e);
                    if let (true, Event::Message { from, id, .. }) = (opts.mark_read, &e)
                        && let Err(e) = client.mark_read(from, std::slice::from_ref(id)).await
                    {
                        break Some(closed_reason(e)?);
                    }
                }
                Ok(None) => {
                    if let Some(p) = &opts.push
                        && last_event.elapsed() >= p.idle
                    {
                        break None;
                    }
                    if quiet_since.elapsed() < opts.keepalive {
                        continue;
                    }
                    if let Err(e) = client.ping().await {
                        break Some(closed_reason(e)?);
                    }
                }
                Err(e) => break Some(closed_reason(e)?),
            }
        };
        store = client.close().await;
        let Some(reason) = ended else {
            on_status(&Status::Sleeping);
            if !wait_for_push(&store, deadline).await? {
                return Ok(store);
            }
            on_status(&Status::WokenByPush);
            continue;
        };
        match next_step(&mut store, &mut opts.backoff, &reason, &mut on_status).await? {
            Some(after) => tokio::time::sleep(cap(after, left(deadline))).await,
            None => return Err(ClientError::Closed(reason)),
        }
    }
}

fn cap(d: Duration, left: Option<Duration>) -> Duration {
    left.map_or(d, |l| d.min(l))
}

fn closed_reason(e: ClientError) -> Result<ServerClose, ClientError> {
    match e {
        ClientError::Conn(_) => Ok(ServerClose::Dropped),
        ClientError::Closed(r) => Ok(r),
        e => Err(e),
    }
}

/// Decides after a close: `Some(delay)` to reconnect, `None` to stop.
async fn next_step(
    store: &mut Store,
    backoff: &mut Backoff,
    reason: &ServerClose,
    on_status: &mut impl FnMut(&Status),
) -> Result<Option<Duration>, ClientError> {
    let partner = match store.account() {
        Some(Account::Partner { integrator, user, .. }) => Some((*integrator, user.clone())),
        _ => None,
    };
    match backoff.decide(reason, partner.is_some()) {
        Decision::Stop => Ok(None),
        Decision::Reconnect(after) => {
            on_status(&Status::Reconnecting { reason: reason.to_string(), after });
            Ok(Some(after))
        }
        Decision::ReEnlist => {
            let (integrator, user) = partner.ok_or(ClientError::NotEnlisted)?;
            let endpoints = store.endpoints().clone();
            let partner_url = endpoints.partner.ok_or(ClientError::NotEnlisted)?;
            let jid = enlist_partner(store, &endpoints.chatd_http, &partner_url, integrator, &user).await?;
            on_status(&Status::ReEnlisted { jid });
            Ok(Some(Duration::ZERO))
        }
    }
}

/// Long-polls the partner server for a push for this user; `false` when time ran out.
async fn wait_for_push(store: &Store, deadline: Option<Instant>) -> Result<bool, ClientError> {
    let (Some(Account::Partner { user, .. }), Some(partner)) = (store.account(), store.endpoints().partner.clone())
    else {
        return Err(ClientError::NotEnlisted);
    };
    let services = Services::for_store(store)?;
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let wait = cap(Duration::from_secs(25), left);
        if wait.is_zero() {
            return Ok(false);
        }
        if services.wait_for_push(&partner, user, wait).await? {
            return Ok(true);
        }
    }
}
