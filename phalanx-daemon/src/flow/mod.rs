//! Flow table and per-flow TCP/UDP KPI estimators.
