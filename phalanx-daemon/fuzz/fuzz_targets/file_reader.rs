//! Fuzz target: see `phalanx_daemon::fuzz::file_reader`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| phalanx_daemon::fuzz::file_reader(data));
