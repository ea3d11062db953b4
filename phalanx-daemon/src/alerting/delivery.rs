//! Delivery of incident transitions to Alertmanager and webhooks.
//!
//! Each receiver has one worker that sends its queue in order (a resolved
//! notification never overtakes its firing one). A delivery is written to
//! the spool before its first attempt and removed once it is settled
//! (delivered, refused for good, or out of retry time), so a receiver outage
//! or a restart loses nothing: on start, the spool is replayed. Failed
//! attempts are retried with exponential backoff and jitter.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::wall_ns;

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use reqwest::{StatusCode, Url};
use tokio::{sync::Notify, task::JoinHandle};
use tracing::{debug, info, info_span, warn, Instrument as _};

use super::spool::{Delivery, Spool, SpoolError};
use super::{alertmanager, webhook};
use crate::alerting::{Incident, Transition};
use crate::health::{Health, Trouble};

/// What a receiver speaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReceiverKind {
    /// Alertmanager API v2.
    Alertmanager,
    /// Alertmanager-style webhook, signed when a secret is set.
    Webhook {
        /// HMAC-SHA256 key for [`webhook::SIGNATURE_HEADER`].
        secret: Option<String>,
    },
}

/// A delivery target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receiver {
    /// Unique name: the `receiver` metric label and the spool's key.
    pub name: String,
    /// URL the bodies are POSTed to.
    pub url: Url,
    /// Protocol.
    pub kind: ReceiverKind,
}

/// Retry schedule: attempt `n` (from 0) waits a random time in
/// `[c/2, c]` with `c = min(max, initial * 2^n)` ("equal jitter": spreads
/// retries of many daemons, never retries immediately).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling of the first wait.
    pub initial: Duration,
    /// Largest ceiling.
    pub max: Duration,
}

impl Backoff {
    /// Upper bound of the wait after failed attempt `n`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The wait after failed attempt `n`, given `unit` uniform in `[0, 1]`.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let c = self.ceiling(attempt);
        c / 2 + (c / 2).mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// Delivery settings (from `[incidents]`).
#[derive(Clone, Debug, PartialEq)]
pub struct DeliverySettings {
    /// Base URL of the daemon's API, for links in payloads.
    pub external_url: String,
    /// Timeout of one HTTP request.
    pub request_timeout: Duration,
    /// Retry schedule.
    pub backoff: Backoff,
    /// Give up on a delivery this long after it was created.
    pub give_up_after: Duration,
}

/// Outcome label of `phalanx_webhook_deliveries_total`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    /// The receiver accepted it (2xx).
    delivered,
    /// An attempt failed; it will be tried again.
    retried,
    /// Given up: refused for good (4xx), out of retry time, spool full, or a
    /// failed periodic re-send.
    failed,
    /// Written to the spool before its first attempt.
    spooled,
}

/// Labels of `phalanx_webhook_deliveries_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// Receiver name.
    pub receiver: String,
    /// Outcome.
    pub outcome: Outcome,
}

/// Delivery counters.
#[derive(Clone, Debug, Default)]
pub struct DeliveryMetrics {
    deliveries: Family<DeliveryLabels, Counter>,
}

impl DeliveryMetrics {
    /// Creates the counters and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "phalanx_webhook_deliveries",
            "Incident deliveries to Alertmanager and webhooks, by receiver and outcome",
            m.deliveries.clone(),
        );
        m
    }

    fn inc(&self, receiver: &str, outcome: Outcome) {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                receiver: receiver.to_string(),
                outcome,
            })
            .inc();
    }

    /// Current value of one counter (for tests and diagnostics).
    pub fn get(&self, receiver: &str, outcome: Outcome) -> u64 {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                receiver: receiver.to_string(),
                outcome,
            })
            .get()
    }
}

/// Errors starting delivery.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    /// The spool could not be read.
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

/// One queued body.
#[derive(Clone, Debug)]
struct Pending {
    /// Spool file, when the write succeeded.
    spool_name: Option<String>,
    created_ns: u64,
    body: Arc<str>,
    /// A periodic re-send: one attempt only, the next re-send replaces it.
    resend: bool,
}

#[derive(Debug)]
struct Worker {
    receiver: Receiver,
    queue: Mutex<VecDeque<Pending>>,
    notify: Notify,
}

impl Worker {
    fn push(&self, p: Pending) {
        if let Ok(mut q) = self.queue.lock() {
            q.push_back(p);
        }
        self.notify.notify_one();
    }

    fn backlog(&self) -> usize {
        self.queue.lock().map_or(0, |q| q.len())
    }
}

/// Sends transitions to every receiver; owns the workers.
#[derive(Debug)]
pub struct Dispatcher {
    workers: Vec<Arc<Worker>>,
    tasks: Vec<JoinHandle<()>>,
    spool: Arc<Spool>,
    metrics: DeliveryMetrics,
    settings: DeliverySettings,
    /// Where a delivery that could not be spooled is counted.
    health: Health,
}

/// Hands every spooled delivery to the worker of its receiver; those for
/// receivers no longer configured are dropped and counted as failed.
async fn replay_spool(
    workers: &[Arc<Worker>],
    spool: &Arc<Spool>,
    metrics: &DeliveryMetrics,
) -> Result<(), DeliveryError> {
    let sp = spool.clone();
    let (pending, bad) = tokio::task::spawn_blocking(move || sp.load())
        .await
        .map_err(|e| SpoolError::Io {
            path: spool.dir().display().to_string(),
            source: std::io::Error::other(e.to_string()),
        })??;
    if !bad.is_empty() {
        warn!(count = bad.len(), "unreadable spool files set aside");
    }
    let mut replayed = 0usize;
    for s in pending {
        match workers
            .iter()
            .find(|w| w.receiver.name == s.delivery.receiver)
        {
            Some(w) => {
                w.push(Pending {
                    spool_name: Some(s.name),
                    created_ns: s.delivery.created_ns,
                    body: s.delivery.body.into(),
                    resend: false,
                });
                replayed += 1;
            }
            None => {
                warn!(receiver = %s.delivery.receiver, file = %s.name,
                    "spooled delivery for a receiver no longer configured: dropped");
                metrics.inc(&s.delivery.receiver, Outcome::failed);
                remove_spooled(spool, &s.name).await;
            }
        }
    }
    if replayed > 0 {
        info!(replayed, "replaying spooled deliveries");
    }
    Ok(())
}

impl Dispatcher {
    /// Starts one worker per receiver and replays the spool into them.
    /// Spooled deliveries for receivers no longer configured are dropped
    /// (counted as failed under their old name).
    pub async fn start(
        receivers: Vec<Receiver>,
        settings: DeliverySettings,
        spool: Arc<Spool>,
        metrics: DeliveryMetrics,
        health: Health,
    ) -> Result<Self, DeliveryError> {
        let client = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .user_agent(concat!("phalanx/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let workers: Vec<Arc<Worker>> = receivers
            .into_iter()
            .map(|receiver| {
                Arc::new(Worker {
                    receiver,
                    queue: Mutex::new(VecDeque::new()),
                    notify: Notify::new(),
                })
            })
            .collect();

        replay_spool(&workers, &spool, &metrics).await?;
        let tasks = workers
            .iter()
            .map(|w| {
                let span = info_span!("delivery", receiver = %w.receiver.name);
                tokio::spawn(
                    work(
                        w.clone(),
                        client.clone(),
                        spool.clone(),
                        metrics.clone(),
                        settings.clone(),
                    )
                    .instrument(span),
                )
            })
            .collect();
        Ok(Self {
            workers,
            tasks,
            spool,
            metrics,
            settings,
            health,
        })
    }

    /// Spools and queues a transition for every receiver.
    pub async fn dispatch(&self, t: &Transition) {
        let inc = t.incident();
        for w in &self.workers {
            let body = match &w.receiver.kind {
                ReceiverKind::Alertmanager => {
                    alertmanager::body(&[inc], &self.settings.external_url)
                }
                ReceiverKind::Webhook { .. } => {
                    webhook::body(inc, &w.receiver.name, &self.settings.external_url)
                }
            };
            let body = match body {
                Ok(b) => b,
                Err(e) => {
                    warn!(receiver = %w.receiver.name, "encoding payload: {e}");
                    self.metrics.inc(&w.receiver.name, Outcome::failed);
                    continue;
                }
            };
            let d = Delivery {
                receiver: w.receiver.name.clone(),
                created_ns: wall_ns(),
                body,
            };
            let spool = self.spool.clone();
            let d2 = d.clone();
            let put = tokio::task::spawn_blocking(move || spool.put(&d2)).await;
            let spool_name = match put {
                Ok(Ok(name)) => {
                    self.metrics.inc(&w.receiver.name, Outcome::spooled);
                    self.health.succeeded(Trouble::SpoolWrite);
                    Some(name)
                }
                // A full spool bounds memory too: the delivery is dropped.
                Ok(Err(SpoolError::Full(dir))) => {
                    warn!(receiver = %w.receiver.name, spool = %dir,
                        "spool full (incidents.spool_max_files); delivery dropped");
                    self.metrics.inc(&w.receiver.name, Outcome::failed);
                    self.health.failed(
                        Trouble::SpoolWrite,
                        "spool full (incidents.spool_max_files): delivery dropped",
                    );
                    continue;
                }
                // Otherwise still try to send it: losing the restart
                // guarantee for one delivery beats not delivering it at all.
                Ok(Err(e)) => {
                    warn!(receiver = %w.receiver.name, "not spooled, sending from memory only: {e}");
                    self.health.failed(Trouble::SpoolWrite, &e);
                    None
                }
                Err(e) => {
                    warn!(receiver = %w.receiver.name, "not spooled: {e}");
                    self.health.failed(Trouble::SpoolWrite, &e);
                    None
                }
            };
            w.push(Pending {
                spool_name,
                created_ns: d.created_ns,
                body: d.body.into(),
                resend: false,
            });
            debug!(receiver = %w.receiver.name, incident = %inc.id, "queued");
        }
    }

    /// Re-sends firing incidents to each Alertmanager that has nothing
    /// queued (Alertmanager times out alerts that are not re-sent). Re-sends
    /// are not spooled nor retried: the next one replaces a lost one.
    pub fn resend_firing(&self, firing: &[&Incident]) {
        if firing.is_empty() {
            return;
        }
        for w in &self.workers {
            if w.receiver.kind != ReceiverKind::Alertmanager || w.backlog() > 0 {
                continue;
            }
            match alertmanager::body(firing, &self.settings.external_url) {
                Ok(body) => w.push(Pending {
                    spool_name: None,
                    created_ns: wall_ns(),
                    body: body.into(),
                    resend: true,
                }),
                Err(e) => warn!(receiver = %w.receiver.name, "encoding re-send: {e}"),
            }
        }
    }

    /// Deliveries queued in memory, all receivers.
    pub fn backlog(&self) -> usize {
        self.workers.iter().map(|w| w.backlog()).sum()
    }

    /// Stops the workers; what is still pending stays in the spool.
    pub async fn shutdown(self) {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

async fn remove_spooled(spool: &Arc<Spool>, name: &str) {
    let spool = spool.clone();
    let name2 = name.to_string();
    match tokio::task::spawn_blocking(move || spool.remove(&name2)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(file = %name, "removing settled delivery from the spool: {e}"),
        Err(e) => warn!(file = %name, "removing settled delivery from the spool: {e}"),
    }
}

/// Why an attempt failed.
enum AttemptError {
    /// Worth retrying: network error, timeout, 408, 429, 5xx.
    Transient(String),
    /// The receiver refused the body (other 4xx): retrying cannot help.
    Permanent(String),
}

async fn attempt(client: &reqwest::Client, r: &Receiver, body: &str) -> Result<(), AttemptError> {
    let mut req = client
        .post(r.url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string());
    if let ReceiverKind::Webhook {
        secret: Some(secret),
    } = &r.kind
    {
        req = req.header(
            webhook::SIGNATURE_HEADER,
            webhook::signature(secret.as_bytes(), body.as_bytes()),
        );
    }
    let resp = req
        .send()
        .await
        .map_err(|e| AttemptError::Transient(e.to_string()))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let text = resp.text().await.unwrap_or_default();
    let why = format!("{status}: {}", text.chars().take(200).collect::<String>());
    if status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
    {
        Err(AttemptError::Transient(why))
    } else {
        Err(AttemptError::Permanent(why))
    }
}

/// A receiver's worker: sends the queue head until it is settled, in order.
async fn work(
    w: Arc<Worker>,
    client: reqwest::Client,
    spool: Arc<Spool>,
    metrics: DeliveryMetrics,
    settings: DeliverySettings,
) {
    let name = w.receiver.name.clone();
    let give_up_ns = u64::try_from(settings.give_up_after.as_nanos()).unwrap_or(u64::MAX);
    loop {
        let head = w.queue.lock().ok().and_then(|q| q.front().cloned());
        let Some(p) = head else {
            w.notify.notified().await;
            continue;
        };
        let mut n: u32 = 0;
        let settled = loop {
            match attempt(&client, &w.receiver, &p.body).await {
                Ok(()) => {
                    metrics.inc(&name, Outcome::delivered);
                    debug!(attempts = n + 1, "delivered");
                    break true;
                }
                Err(AttemptError::Permanent(why)) => {
                    metrics.inc(&name, Outcome::failed);
                    warn!(%why, "receiver refused the delivery; dropped");
                    break true;
                }
                Err(AttemptError::Transient(why)) => {
                    let age = wall_ns().saturating_sub(p.created_ns);
                    if p.resend {
                        metrics.inc(&name, Outcome::failed);
                        debug!(%why, "re-send failed; the next one replaces it");
                        break true;
                    }
                    if age >= give_up_ns {
                        metrics.inc(&name, Outcome::failed);
                        warn!(%why, attempts = n + 1, "giving up on the delivery");
                        break true;
                    }
                    metrics.inc(&name, Outcome::retried);
                    let wait = settings.backoff.delay(n, fastrand::f64());
                    debug!(%why, attempt = n + 1, wait_ms = wait.as_millis() as u64, "retrying");
                    tokio::time::sleep(wait).await;
                    n = n.saturating_add(1);
                }
            }
        };
        if settled {
            if let Some(f) = &p.spool_name {
                remove_spooled(&spool, f).await;
            }
            if let Ok(mut q) = w.queue.lock() {
                q.pop_front();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_schedule() {
        let b = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
        };
        let ceilings: Vec<u64> = (0..9).map(|n| b.ceiling(n).as_secs()).collect();
        assert_eq!(ceilings, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(60), "no overflow");
        assert_eq!(
            b.delay(3, 0.0),
            Duration::from_secs(4),
            "lower bound: half the ceiling"
        );
        assert_eq!(
            b.delay(3, 1.0),
            Duration::from_secs(8),
            "upper bound: the ceiling"
        );
        assert_eq!(b.delay(3, 7.0), Duration::from_secs(8), "unit is clamped");
        // Jitter spreads waits over the whole band.
        let waits: Vec<Duration> = (0..200).map(|_| b.delay(4, fastrand::f64())).collect();
        assert!(waits
            .iter()
            .all(|w| *w >= Duration::from_secs(8) && *w <= Duration::from_secs(16)));
        let distinct: std::collections::HashSet<_> = waits.iter().collect();
        assert!(distinct.len() > 100, "jittered, not constant");
    }
}
