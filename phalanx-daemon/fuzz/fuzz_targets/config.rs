//! Fuzz target: see `phalanx_daemon::fuzz::config`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| phalanx_daemon::fuzz::config(data));
