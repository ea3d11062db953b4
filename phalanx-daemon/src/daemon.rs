//! `phalanx run`: the live daemon.
//!
//! Order matters for the operator: the configuration is validated and the
//! HTTP socket bound before the kernel is touched, so a bad config or a busy
//! port never leaves programs attached. Shutdown (SIGINT/SIGTERM) drops the
//! capture, which detaches every program and link.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result};
use prometheus_client::registry::Registry;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};
use tracing::{error, info, info_span, warn, Instrument as _};

use crate::{
    alerting::{
        service::{self as incidents, IncidentService},
        Observation,
    },
    api,
    capture::{
        ebpf::Capture,
        ring::{self, RingStats},
    },
    config::Config,
    metrics::{capture::CaptureCollector, kpi::KpiCollector},
    pipeline::{self, Pipeline},
    stitch::live::LiveStitch,
};

/// How long shutdown waits for tasks to finish.
const GRACE: Duration = Duration::from_secs(3);

/// Arguments of `phalanx run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Configuration file (TOML); defaults apply to every key it omits.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Interface to capture on (repeatable); replaces `capture.interfaces`.
    #[arg(long = "iface", short = 'i', value_name = "IF")]
    pub interfaces: Vec<String>,
    /// Address of the metrics/API server; replaces `http.listen`.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
    /// Attach mode; replaces `capture.mode`.
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
}

/// `--mode` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ModeArg {
    /// tcx on ingress and egress.
    Tcx,
    /// XDP on ingress, tcx on egress.
    Xdp,
}

/// Defaults, then the file, then the command line.
pub fn effective_config(args: &RunArgs) -> Result<Config> {
    let mut cfg = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if !args.interfaces.is_empty() {
        cfg.capture.interfaces = args.interfaces.clone();
    }
    if let Some(l) = args.listen {
        cfg.http.listen = l;
    }
    if let Some(m) = args.mode {
        cfg.capture.mode = match m {
            ModeArg::Tcx => crate::config::AttachMode::Tcx,
            ModeArg::Xdp => crate::config::AttachMode::Xdp,
        };
    }
    cfg.validate()?;
    if cfg.capture.interfaces.is_empty() {
        anyhow::bail!("no interface to capture on: pass --iface IF or set capture.interfaces");
    }
    Ok(cfg)
}

/// Runs the daemon until SIGINT/SIGTERM.
pub async fn run(args: RunArgs) -> Result<()> {
    let cfg = effective_config(&args)?;
    let auth = api::auth::Auth::from_config(&cfg.http)?;
    let tls = api::serve::Tls::from_config(&cfg.http)?;
    api::serve::reserve_descriptors(cfg.http.max_connections)?;
    crate::capture::ebpf::preflight(&cfg.capture)?;
    let listener = api::bind(cfg.http.listen)
        .await
        .with_context(|| format!("cannot listen on {} (http.listen)", cfg.http.listen))?;
    // Incident directories and the spool are opened before the kernel is
    // touched, so a bad path fails without attaching anything.
    let mut registry = Registry::default();
    let health = crate::health::Health::register(&mut registry);
    let history = incidents::history(cfg.history.evidence());
    let (incident_service, incidents_view) =
        IncidentService::start(&cfg.alerting(), history.clone(), &mut registry, &health)
            .await
            .context("starting incidents")?;
    let live = Arc::new(
        LiveStitch::new(
            &cfg.stitch,
            cfg.history.peers(),
            &incidents::system_host(),
            &mut registry,
        )
        .context("starting live stitching")?,
    );
    let incident_service = incident_service.with_stitch(live.clone());

    let (capture, ringbuf) = Capture::load_and_attach(&cfg.capture)?;
    info!(
        interfaces = ?capture.interfaces(),
        mode = %cfg.capture.mode,
        listen = %cfg.http.listen,
        "capturing"
    );
    let capture = Arc::new(Mutex::new(capture));
    let pipeline = Pipeline::new(&cfg, history, live.clone());
    let ring_stats = Arc::new(RingStats::default());
    let diagnosis = pipeline::Diagnosis::new(&cfg, &mut registry)?;
    CaptureCollector::register(&mut registry, capture.clone(), ring_stats.clone());
    KpiCollector::register(
        &mut registry,
        pipeline.metrics.clone(),
        pipeline.flows.clone(),
    );
    auth.register(&mut registry);
    let interface_changes = crate::capture::links::InterfaceChanges::register(&mut registry);
    let link_health = health.clone();
    let server = api::serve::Server {
        listener,
        limits: api::serve::Limits::from_config(&cfg.http),
        metrics: api::serve::ServeMetrics::register(&mut registry),
        tls,
    };
    let state = api::ApiState {
        registry: Arc::new(registry),
        flows: pipeline.flows.clone(),
        incidents: incidents_view,
        stitch: Some(live),
        auth: Arc::new(auth),
        health,
    };
    let mut tasks = Tasks::spawn(
        diagnosis,
        incident_service,
        pipeline,
        ringbuf,
        ring_stats,
        server,
        state,
    )?;
    tasks.links = Some(tokio::spawn(
        crate::capture::links::watch(
            capture.clone(),
            cfg.capture.interfaces.clone(),
            cfg.capture.mode,
            link_health,
            interface_changes,
        )
        .instrument(info_span!("links")),
    ));
    let outcome = tasks.until_stopped(&args, &capture).await;
    tasks.stop().await;
    detach(capture);
    info!("detached; bye");
    outcome
}

/// The daemon's running tasks.
struct Tasks {
    consumer: ring::Consumer,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    rules: tokio::task::JoinHandle<()>,
    observations: mpsc::Sender<Vec<Observation>>,
    incidents: tokio::task::JoinHandle<()>,
    /// Re-attaches interfaces that come back; it holds the capture.
    links: Option<tokio::task::JoinHandle<()>>,
}

impl Tasks {
    /// Starts the incident task, the ring consumer feeding the pipeline,
    /// the rules over its flow table and the HTTP server.
    fn spawn(
        diagnosis: pipeline::Diagnosis,
        incident_service: IncidentService,
        pipeline: Pipeline,
        ringbuf: aya::maps::RingBuf<aya::maps::MapData>,
        ring_stats: Arc<RingStats>,
        listener: api::serve::Server,
        state: api::ApiState,
    ) -> Result<Self> {
        // Incidents: rules send observations here; the task owns the manager,
        // ticks every second and drives delivery.
        let (observations, observations_rx) =
            mpsc::channel::<Vec<Observation>>(incidents::OBSERVATION_QUEUE);
        let incidents = tokio::spawn(
            incident_service
                .run(observations_rx)
                .instrument(info_span!("incidents")),
        );
        let flows = pipeline.flows.clone();
        let clock = ring::RecordClock::new(ring::ktime_offset_ns());
        let consumer = ring::Consumer::spawn(ringbuf, pipeline, ring_stats, clock.offset())
            .context("starting the ring-buffer consumer")?;
        let rules = tokio::spawn(
            pipeline::rules_loop(flows, diagnosis, observations.clone(), clock)
                .instrument(info_span!("rules")),
        );
        let server = tokio::spawn(
            listener
                .run(api::router(state))
                .instrument(info_span!("http")),
        );
        Ok(Self {
            consumer,
            server,
            rules,
            observations,
            incidents,
            links: None,
        })
    }

    /// Serves until a signal asks to stop (SIGHUP reloads the filters) or
    /// a task fails.
    async fn until_stopped(&mut self, args: &RunArgs, capture: &Arc<Mutex<Capture>>) -> Result<()> {
        let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        let mut sighup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
        loop {
            tokio::select! {
                _ = sigterm.recv() => { info!("SIGTERM: shutting down"); return Ok(()) }
                _ = sigint.recv() => { info!("SIGINT: shutting down"); return Ok(()) }
                _ = sighup.recv() => reload_filters(args, capture),
                why = self.consumer.stopped() => return Err(anyhow::anyhow!("ring-buffer consumer stopped: {why}")),
                r = &mut self.server => return Err(anyhow::anyhow!("HTTP server stopped: {}", joined(r))),
            }
        }
    }

    /// Stops the consumer and the server, then lets the incident task
    /// finish within [`GRACE`].
    async fn stop(self) {
        if let Err(e) = self.consumer.stop() {
            warn!("ring-buffer consumer: {e}");
        }
        self.server.abort();
        // Wait for the aborted server to drop its state (the metrics registry
        // holds a handle on the capture), so the detach after this is the last one.
        let _ = self.server.await;
        if let Some(links) = self.links {
            links.abort();
            let _ = links.await;
        }
        // Closing the channel stops the incident task; undelivered
        // notifications stay in the spool for the next start.
        self.rules.abort();
        let _ = self.rules.await;
        drop(self.observations);
        let _ = tokio::time::timeout(GRACE, self.incidents).await;
    }
}

/// Drops the capture, which detaches every program and link.
fn detach(capture: Arc<Mutex<Capture>>) {
    match Arc::try_unwrap(capture) {
        Ok(m) => drop(m),
        Err(still_shared) => {
            warn!(
                refs = Arc::strong_count(&still_shared),
                "capture still referenced at shutdown; it detaches when the last reference goes"
            );
            drop(still_shared);
        }
    }
}

fn joined<E: std::fmt::Display>(r: Result<Result<(), E>, tokio::task::JoinError>) -> String {
    match r {
        Ok(Ok(())) => "finished".to_string(),
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    }
}

fn reload_filters(args: &RunArgs, capture: &Arc<Mutex<Capture>>) {
    let cfg = match effective_config(args) {
        Ok(c) => c,
        Err(e) => {
            error!("SIGHUP: keeping the current filters, config is invalid: {e:#}");
            return;
        }
    };
    let result = match capture.lock() {
        Ok(mut c) => c.set_filters(&cfg.capture.filters),
        Err(_) => {
            error!("SIGHUP: capture state poisoned");
            return;
        }
    };
    match result {
        Ok(()) => info!(
            filters = cfg.capture.filters.len(),
            "SIGHUP: filters reloaded"
        ),
        Err(e) => error!("SIGHUP: reloading filters failed: {e}"),
    }
}
