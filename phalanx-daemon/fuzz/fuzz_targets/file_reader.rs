//! Arbitrary bytes as a capture file: the reader must yield records and at
//! most one error, never panic, and the flow engine must take whatever it
//! yields.

#![no_main]

use libfuzzer_sys::fuzz_target;
use phalanx_daemon::capture::file;
use phalanx_daemon::flow::{FlowConfig, FlowTable};

fuzz_target!(|data: &[u8]| {
    let Ok(reader) = file::from_reader(std::io::Cursor::new(data.to_vec())) else {
        return;
    };
    let cfg = FlowConfig {
        max_flows: 64,
        ..FlowConfig::default()
    };
    let mut table = FlowTable::new(cfg);
    table.keep_finished(true);
    let mut errors = 0;
    for item in reader {
        match item {
            Ok(rec) => table.ingest(&rec),
            Err(_) => errors += 1,
        }
    }
    assert!(errors <= 1, "one error ends the iteration");
    let report = table.into_report();
    let _ = report.flows.len();
});
