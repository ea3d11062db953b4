//! Writes a synthetic many-flow capture (pcapng, headers only) for the
//! whole-file benchmark: `gen_capture OUT N_PACKETS N_FLOWS LOSS`.
//! Timestamps on, a quarter IPv6, loss split before/after the vantage point.
//! Prints the generator's total retransmissions (the truth) on stdout.

use std::io::{BufWriter, Write as _};

use anyhow::{bail, Context as _, Result};
use phalanx_daemon::capture::frame::PayloadMode;
use phalanx_daemon::synth::{self, ManyFlows};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [out, packets, flows, loss] = args.as_slice() else {
        bail!("usage: gen_capture OUT N_PACKETS N_FLOWS LOSS");
    };
    let cfg = ManyFlows {
        packets: packets.parse().context("N_PACKETS")?,
        flows: flows.parse().context("N_FLOWS")?,
        loss: loss.parse().context("LOSS")?,
        timestamps: true,
        ..ManyFlows::default()
    };
    let g = synth::many_flows(&cfg);
    let file = std::fs::File::create(out).with_context(|| format!("creating {out}"))?;
    synth::write_pcapng(
        &g.records,
        BufWriter::with_capacity(1 << 20, file),
        PayloadMode::HeadersOnly,
    )
    .context("writing pcapng")?
    .flush()
    .context("writing pcapng")?;
    let retrans: u64 = g.truth.iter().map(|t| u64::from(t.retransmissions)).sum();
    println!(
        "{{\"packets\": {}, \"flows\": {}, \"retransmissions\": {retrans}}}",
        g.records.len(),
        g.truth.len()
    );
    Ok(())
}
