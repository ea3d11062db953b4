//! Outputs: Prometheus metrics (and, later, webhooks and pcapng evidence).

pub mod metrics;
