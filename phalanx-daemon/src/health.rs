//! The daemon's own health: what it failed to do, counted, and whether
//! that leaves it degraded.
//!
//! A write that fails (evidence, the delivery spool, the incident state)
//! loses data a restart was promised to keep, so it is never only a log
//! line: it is counted in `phalanx_write_failures_total{what}`, and the
//! daemon is degraded for that reason (`phalanx_degraded{reason}` is 1 and
//! `/healthz` says `degraded: ...` while still answering 200, because the
//! process works) until the same kind of write succeeds again.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// What went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Trouble {
    /// An incident's evidence pcapng could not be written.
    EvidenceWrite,
    /// A delivery could not be spooled (it is sent from memory only).
    SpoolWrite,
    /// The firing incidents could not be saved for a restart.
    StateWrite,
    /// A configured interface is gone (removed, or not yet back): its
    /// traffic is not captured.
    InterfaceGone,
}

impl Trouble {
    /// Every kind, in label order.
    pub const ALL: [Trouble; 4] = [
        Trouble::EvidenceWrite,
        Trouble::SpoolWrite,
        Trouble::StateWrite,
        Trouble::InterfaceGone,
    ];

    /// The kinds that are failed writes.
    pub const WRITES: [Trouble; 3] = [
        Trouble::EvidenceWrite,
        Trouble::SpoolWrite,
        Trouble::StateWrite,
    ];

    /// Its label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Trouble::EvidenceWrite => "evidence_write",
            Trouble::SpoolWrite => "spool_write",
            Trouble::StateWrite => "state_write",
            Trouble::InterfaceGone => "interface_gone",
        }
    }
}

/// Labels `{what}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WhatLabels {
    what: &'static str,
}

/// Labels `{reason}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Shared health state; clones see the same.
#[derive(Clone, Debug, Default)]
pub struct Health {
    /// Degraded reasons with the latest error of each.
    degraded: Arc<Mutex<BTreeMap<Trouble, String>>>,
    failures: Family<WhatLabels, Counter>,
    flags: Family<ReasonLabels, Gauge>,
}

impl Health {
    /// A healthy state whose metrics go into `registry` (every reason
    /// present, at 0).
    pub fn register(registry: &mut Registry) -> Self {
        let h = Self::default();
        for t in Trouble::WRITES {
            h.failures
                .get_or_create(&WhatLabels { what: t.as_str() })
                .inc_by(0);
        }
        for t in Trouble::ALL {
            h.flags
                .get_or_create(&ReasonLabels { reason: t.as_str() })
                .set(0);
        }
        registry.register(
            "phalanx_write_failures",
            "Writes that failed (evidence, spool, state), each a loss the daemon could not avoid",
            h.failures.clone(),
        );
        registry.register(
            "phalanx_degraded",
            "1 while the daemon is degraded for this reason (the last such write failed, or a captured interface is gone)",
            h.flags.clone(),
        );
        h
    }

    /// `what` failed with `error`: counted, and degraded until it succeeds.
    pub fn failed(&self, what: Trouble, error: impl std::fmt::Display) {
        self.failures
            .get_or_create(&WhatLabels {
                what: what.as_str(),
            })
            .inc();
        self.degrade(what, error);
    }

    /// Degraded for `what`, as `error` says, until it [`Self::succeeded`].
    pub fn degrade(&self, what: Trouble, error: impl std::fmt::Display) {
        self.flags
            .get_or_create(&ReasonLabels {
                reason: what.as_str(),
            })
            .set(1);
        if let Ok(mut d) = self.degraded.lock() {
            d.insert(what, error.to_string());
        }
    }

    /// `what` succeeded: no longer degraded for it.
    pub fn succeeded(&self, what: Trouble) {
        let Ok(mut d) = self.degraded.lock() else {
            return;
        };
        if d.remove(&what).is_some() {
            self.flags
                .get_or_create(&ReasonLabels {
                    reason: what.as_str(),
                })
                .set(0);
        }
    }

    /// `ok`, or `degraded: <reason> (<latest error>); ...`.
    pub fn status(&self) -> String {
        let Ok(d) = self.degraded.lock() else {
            return "degraded: health state poisoned".into();
        };
        if d.is_empty() {
            return "ok".into();
        }
        let reasons: Vec<String> = d
            .iter()
            .map(|(t, e)| format!("{} ({e})", t.as_str()))
            .collect();
        format!("degraded: {}", reasons.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_degrades_until_the_same_write_succeeds() {
        let mut r = Registry::default();
        let h = Health::register(&mut r);
        assert_eq!(h.status(), "ok");
        h.failed(Trouble::SpoolWrite, "No space left on device (os error 28)");
        h.failed(Trouble::EvidenceWrite, "disk full");
        h.failed(Trouble::EvidenceWrite, "still full");
        assert_eq!(
            h.status(),
            "degraded: evidence_write (still full); spool_write (No space left on device (os error 28))"
        );
        h.succeeded(Trouble::EvidenceWrite);
        h.succeeded(Trouble::StateWrite);
        assert_eq!(
            h.status(),
            "degraded: spool_write (No space left on device (os error 28))"
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).expect("encode");
        for line in [
            "phalanx_write_failures_total{what=\"evidence_write\"} 2",
            "phalanx_write_failures_total{what=\"state_write\"} 0",
            "phalanx_degraded{reason=\"spool_write\"} 1",
            "phalanx_degraded{reason=\"evidence_write\"} 0",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}
