//! Prometheus metrics: the flow KPI families by flow group ([`kpi`],
//! [`groups`]), the capture path's counters ([`capture`]), and the 0.0.4
//! text format for scrapers that do not ask for OpenMetrics ([`text`]).

pub mod capture;
pub mod groups;
pub mod kpi;
pub mod text;
