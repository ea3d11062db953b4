//! Phalanx daemon library: capture -> flow -> rules -> export/api.
//!
//! The binary (`phalanx`) is a thin shell over these modules; tests and
//! benchmarks drive the same code.

pub mod alerting;
pub mod analyze;
pub mod api;
pub mod capture;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod flow;
pub mod metrics;
pub mod pipeline;
pub mod rules;
pub mod sign;
pub mod stitch;
#[cfg(any(test, feature = "synth"))]
pub mod synth;
pub mod url;
