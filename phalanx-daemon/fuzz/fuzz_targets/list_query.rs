//! Fuzz target: see `phalanx_daemon::fuzz::list_query`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| phalanx_daemon::fuzz::list_query(data));
