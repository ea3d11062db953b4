//! Fuzz target: see `phalanx_daemon::fuzz::rule_expr`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| phalanx_daemon::fuzz::rule_expr(data));
