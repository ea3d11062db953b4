//! `cargo xtask lab NAME`: a fault scenario on namespace networks, watched
//! by the daemon, with what it saw printed at the end.

use std::time::Duration;

use anyhow::{Context as _, Result};
use phalanx_lab::scenario::{Scenario, SCENARIOS};

use crate::daemon::{Daemon, Options};

const API: &str = "127.0.0.1:9740";

/// Lists the scenarios.
pub fn list() {
    println!("Scenarios (cargo xtask lab NAME):");
    for (name, what) in SCENARIOS {
        println!("  {name:<16} {what}");
    }
}

/// Runs scenario `name` for `seconds` of traffic.
pub fn run(name: &str, seconds: u64) -> Result<()> {
    crate::setup::build_release()?;
    let phalanx = crate::demo::release_binary();
    let scenario = Scenario::new(name).with_context(|| format!("building scenario {name}"))?;
    let watch = scenario.watch();
    eprintln!(
        "lab {name}: daemon in namespace {} on {}",
        watch.ns.name(),
        watch.interfaces.join(", ")
    );
    let daemon = Daemon::start(
        watch.ns,
        &phalanx,
        &Options {
            interfaces: watch.interfaces.clone(),
            mode: "tcx",
            config: None,
            listen: API,
            log: "info",
        },
    )?;
    eprintln!(
        "lab {name}: {seconds} s of downloads from {} to {}",
        scenario.net.client_v4(),
        scenario.server_addr()
    );
    let traffic = scenario.drive(Duration::from_secs(seconds))?;
    println!(
        "\nTraffic: {} downloads completed, {} failed or stalled, {} body bytes",
        traffic.completed, traffic.failed, traffic.bytes
    );
    if let Some(n) = scenario.dropped() {
        // The router forwards GRO aggregates: one counted drop can be many
        // segments. Exact per-segment counts need offloads off (see the tests).
        println!("Packets the fault dropped (nftables counter on the router, GRO aggregates): {n}");
    }
    let (_, flows) = daemon.get("/api/v1/flows")?;
    crate::demo::print_flows(&flows)?;
    match daemon.get("/api/v1/incidents") {
        Ok((status, body)) if status.contains("200") => {
            println!(
                "\nIncidents (/api/v1/incidents):\n{}",
                String::from_utf8_lossy(&body)
            );
        }
        _ => println!("\n(no incident API on this build)"),
    }
    daemon.stop();
    eprintln!("lab {name}: daemon stopped; removing the namespaces");
    Ok(())
}
