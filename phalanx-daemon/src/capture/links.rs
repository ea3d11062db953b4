//! Interfaces that go away and come back under the daemon.
//!
//! The kernel drops the programs' links with their interface, and a new
//! interface of the same name is a new device: capture on it stays dark
//! unless attached again. [`watch`] listens to the kernel's link
//! notifications (rtnetlink, group `RTMGRP_LINK`) and on each, and every
//! [`RESYNC`] in case one was lost, reconciles the configured interfaces
//! with those present: an attachment whose interface vanished is released,
//! counted, logged and marks the daemon degraded (`interface_gone`); an
//! interface that is back is attached again, counted and logged, and the
//! daemon recovers once every configured interface is captured again.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use tokio::io::unix::AsyncFd;
use tracing::{error, info, warn};

use super::config::AttachMode;
use super::ebpf::{ifindex, Capture};
use crate::health::{Health, Trouble};

/// How often the interfaces are reconciled without a notification.
pub const RESYNC: Duration = Duration::from_secs(5);

/// Labels `{iface, change}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChangeLabels {
    iface: String,
    change: &'static str,
}

/// `phalanx_capture_interface_changes_total{iface, change}`.
#[derive(Clone, Debug, Default)]
pub struct InterfaceChanges(Family<ChangeLabels, Counter>);

impl InterfaceChanges {
    /// Creates the counters and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let c = Self::default();
        registry.register(
            "phalanx_capture_interface_changes",
            "Captured interfaces that went away (change=removed) or came back and were attached again (change=reattached)",
            c.0.clone(),
        );
        c
    }

    fn count(&self, iface: &str, change: &'static str) {
        self.0
            .get_or_create(&ChangeLabels {
                iface: iface.to_string(),
                change,
            })
            .inc();
    }
}

/// What one reconciliation changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Attachments released: their interface vanished or was replaced.
    pub removed: Vec<String>,
    /// Interfaces attached again.
    pub reattached: Vec<String>,
    /// Configured interfaces not captured now.
    pub missing: Vec<String>,
}

/// Releases what vanished and attaches every configured interface that
/// exists and is not attached.
pub fn reconcile(capture: &mut Capture, wanted: &[String], mode: AttachMode) -> Reconciled {
    let mut r = Reconciled {
        removed: capture.release_vanished(),
        ..Reconciled::default()
    };
    for iface in wanted {
        if capture.interfaces().contains(&iface.as_str()) {
            continue;
        }
        if ifindex(iface).is_some() {
            match capture.attach(iface, mode) {
                Ok(()) => {
                    r.reattached.push(iface.clone());
                    continue;
                }
                Err(e) => error!(iface = %iface, "attaching again: {e}"),
            }
        }
        r.missing.push(iface.clone());
    }
    r
}

/// Reconciles on every link notification and every [`RESYNC`], until the
/// task is dropped; reports each change in logs, `changes` and `health`.
pub async fn watch(
    capture: Arc<Mutex<Capture>>,
    wanted: Vec<String>,
    mode: AttachMode,
    health: Health,
    changes: InterfaceChanges,
) {
    let notifications = match LinkNotifications::open() {
        Ok(n) => Some(n),
        Err(e) => {
            warn!("no link notifications ({e}); checking interfaces every {RESYNC:?}");
            None
        }
    };
    loop {
        let notified = async {
            match &notifications {
                Some(n) => n.next().await,
                None => std::future::pending().await,
            }
        };
        if let Ok(Err(e)) = tokio::time::timeout(RESYNC, notified).await {
            warn!("reading link notifications: {e}");
            tokio::time::sleep(RESYNC).await;
        }
        let r = match capture.lock() {
            Ok(mut c) => reconcile(&mut c, &wanted, mode),
            Err(_) => return,
        };
        report(&r, &health, &changes);
    }
}

fn report(r: &Reconciled, health: &Health, changes: &InterfaceChanges) {
    for iface in &r.removed {
        warn!(iface = %iface, "interface went away; capture on it stops until it is back");
        changes.count(iface, "removed");
    }
    for iface in &r.reattached {
        info!(iface = %iface, "interface is back; capturing on it again");
        changes.count(iface, "reattached");
    }
    if r.missing.is_empty() {
        health.succeeded(Trouble::InterfaceGone);
    } else {
        health.degrade(
            Trouble::InterfaceGone,
            format!("not capturing on {}", r.missing.join(", ")),
        );
    }
}

/// A socket in the rtnetlink link group.
struct LinkNotifications(AsyncFd<OwnedFd>);

impl LinkNotifications {
    fn open() -> io::Result<Self> {
        // SAFETY: plain socket call.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a new descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data; zero is a valid start.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = libc::RTMGRP_LINK as u32;
        // SAFETY: a valid address of the given length.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the descriptor is owned by the AsyncFd alone and lives
        // as long as its registration.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }?;
        Ok(Self(fd))
    }

    /// Waits for notifications and reads every one waiting: which link
    /// changed does not matter, the reconciliation looks at them all. A
    /// lost one (ENOBUFS) counts as a notification.
    async fn next(&self) -> io::Result<()> {
        let mut buf = [0u8; 8192];
        loop {
            let mut ready = self.0.readable().await?;
            let mut got = false;
            loop {
                // SAFETY: buf is valid for its length.
                let n = unsafe {
                    libc::recv(
                        self.0.get_ref().as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                    )
                };
                if n >= 0 {
                    got = true;
                    continue;
                }
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => break,
                    Some(libc::ENOBUFS) => got = true,
                    Some(libc::EINTR) => {}
                    _ => return Err(e),
                }
            }
            ready.clear_ready();
            if got {
                return Ok(());
            }
        }
    }
}
