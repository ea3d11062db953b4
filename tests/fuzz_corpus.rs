//! Replays the committed fuzz corpus (`phalanx-daemon/fuzz/corpus/<target>/`)
//! through the fuzz target bodies of `phalanx_daemon::fuzz`, so that every
//! input a fuzzer once found interesting (and every crash it found, added
//! after the fix) is checked by a plain `cargo test` without a fuzzer or a
//! nightly toolchain. A target directory that is missing or holds fewer
//! than [`MIN_INPUTS`] inputs fails: a corpus must not vanish unnoticed.

use std::path::{Path, PathBuf};
use std::time::Instant;

use phalanx_daemon::fuzz;

/// Fewest inputs a target's corpus may hold.
const MIN_INPUTS: usize = 10;

/// A fuzz target's body.
type Target = fn(&[u8]);

/// Every target, by its corpus directory's name.
const TARGETS: [(&str, Target); 9] = [
    ("file_reader", fuzz::file_reader),
    ("ring_record", fuzz::ring_record),
    ("peer_request", fuzz::peer_request),
    ("stitch_request", fuzz::stitch_request),
    ("peer_answer", fuzz::peer_answer),
    ("list_query", fuzz::list_query),
    ("config", fuzz::config),
    ("rule_expr", fuzz::rule_expr),
    ("token_file", fuzz::token_file),
];

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// The target's inputs, sorted by name so a failure replays the same way.
fn inputs(target: &str) -> Vec<PathBuf> {
    let dir = corpus_dir(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} of target {target}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_target_replays_its_corpus() {
    for (target, run) in TARGETS {
        let files = inputs(target);
        assert!(
            files.len() >= MIN_INPUTS,
            "corpus of {target} holds {} inputs, fewer than {MIN_INPUTS}",
            files.len()
        );
        let started = Instant::now();
        let mut bytes = 0;
        for f in &files {
            let data = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            bytes += data.len();
            // Name the input before running it: a panic's message then
            // says which file to look at.
            eprintln!("{target}: {}", f.display());
            run(&data);
        }
        println!(
            "{target}: {} inputs, {bytes} bytes, {:.2?}",
            files.len(),
            started.elapsed()
        );
    }
}

#[test]
fn every_corpus_directory_belongs_to_a_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for e in std::fs::read_dir(&root).expect("fuzz/corpus") {
        let name = e.expect("corpus entry").file_name();
        let name = name.to_string_lossy();
        assert!(
            TARGETS.iter().any(|(t, _)| *t == name),
            "fuzz/corpus/{name} has no target in tests/fuzz_corpus.rs"
        );
    }
}
