//! Outputs: Prometheus metrics and incident delivery (Alertmanager,
//! webhooks, with an on-disk spool).

pub mod alertmanager;
pub mod delivery;
pub mod groups;
pub mod kpi;
pub mod metrics;
pub mod spool;
pub mod text;
pub mod webhook;
