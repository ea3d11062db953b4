//! Alerting: what becomes of a finding once the rules have made it.
//!
//! A finding is an [`Observation`] of an [`Incident`] (one per fault on a
//! service, [`incident`]); the incident task ([`service`]) folds
//! observations into incidents, writes each incident's evidence capture
//! ([`evidence`]) and hands every transition to delivery ([`delivery`]):
//! Alertmanager's API ([`alertmanager`]) and signed webhooks ([`webhook`]),
//! with pending deliveries kept in an on-disk [`spool`]. The directories
//! written hold the daemon's files only ([`owned_dir`]).

pub mod alertmanager;
pub mod config;
pub mod delivery;
pub mod evidence;
pub mod exempt;
pub mod incident;
pub mod owned_dir;
pub mod service;
pub mod spool;
pub mod webhook;

pub use incident::{
    fingerprint, Incident, IncidentManager, ManagerSettings, Observation, Observed, Severity,
    Status, Transition,
};
