//! Report wording: one sentence saying where a stitched flow's packets were
//! lost (and delayed), for incident annotations and the live stitch answer.

use super::StitchReport;

/// Link delay (p99, ms) from which the summary mentions it.
pub const NOTABLE_DELAY_MS: f64 = 10.0;

/// One sentence about where a flow's packets were lost.
///
/// Counting: a link is one direction between two neighbouring hops of the
/// report. M = the sum of `lost` over every link: packets of the flow seen
/// leaving a link's upstream hop and never seen at its downstream hop (while
/// that hop was recording). N = `lost` of the link with the most, which the
/// sentence names: "N of M lost packets dropped between hop A and hop B
/// (direction A -> B: N of P packets lost)", P being the packets that left
/// A on that link. N = M says nothing was lost anywhere else. When the
/// largest p99 one-way delay of a link reaches [`NOTABLE_DELAY_MS`], the
/// sentence names that link's delay too.
pub fn summarize(r: &StitchReport) -> String {
    let lost: u64 = r.links.iter().map(|l| l.lost).sum();
    let worst = r
        .links
        .iter()
        .reduce(|a, b| if b.lost > a.lost { b } else { a });
    let mut s = match worst {
        Some(w) if lost > 0 => format!(
            "{} of {lost} lost packets dropped between hop {} and hop {} (direction {} -> {}: {} of {} packets lost)",
            w.lost, w.from, w.to, w.from, w.to, w.lost, w.packets
        ),
        _ => {
            let names: Vec<&str> = r.hops.iter().map(|h| h.name.as_str()).collect();
            let matched: u64 = r.links.iter().map(|l| l.delivered).sum();
            format!(
                "no packet lost between hops {} ({matched} packets matched)",
                names.join(", ")
            )
        }
    };
    let slowest = r
        .links
        .iter()
        .filter_map(|l| l.delay_ms.p99.map(|p| (p, l)))
        // The first of equals: path order.
        .reduce(|a, b| if b.0 > a.0 { b } else { a });
    if let Some((p99, l)) = slowest {
        if p99 >= NOTABLE_DELAY_MS {
            s.push_str(&format!(
                "; one-way delay {} -> {} p50 {:.1} ms, p99 {p99:.1} ms",
                l.from,
                l.to,
                l.delay_ms.p50.unwrap_or(p99)
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(lost_fwd: u64, lost_rev: u64, p99: Option<f64>) -> StitchReport {
        use super::super::{
            link::DelayStats, ClockMethod, HopReport, LinkReport, OrderSource, PathDirection,
        };
        let hop = |name: &str, position| HopReport {
            name: name.into(),
            position,
            packets: 100,
            flows: 1,
            shared_flows: 1,
            collisions: 0,
            clock_offset_ms: 0.0,
            clock_offset_ns: 0,
        };
        let link = |from: &str, to: &str, direction, lost: u64| LinkReport {
            from: from.into(),
            to: to.into(),
            direction,
            packets: 1000,
            delivered: 1000 - lost,
            lost,
            duplicates: 0,
            unmatched: 0,
            outside_window: 0,
            reordered: 0,
            delay_ms: DelayStats {
                samples: 1,
                p50: p99.map(|p| p / 2.0),
                p99,
                ..DelayStats::default()
            },
            clock_offset_ms: 0.0,
            clock_method: ClockMethod::TwoWay,
            flows: 1,
            flows_missing: 0,
            payload_hash: false,
        };
        StitchReport {
            order: OrderSource::Inferred,
            hops: vec![hop("client", 0), hop("server", 1)],
            links: vec![
                link("client", "server", PathDirection::Forward, lost_fwd),
                link("server", "client", PathDirection::Reverse, lost_rev),
            ],
            flows: Vec::new(),
        }
    }

    #[test]
    fn summary_names_the_worst_link() {
        assert_eq!(
            summarize(&report(37, 3, Some(1.0))),
            "37 of 40 lost packets dropped between hop client and hop server \
             (direction client -> server: 37 of 1000 packets lost)"
        );
        assert_eq!(
            summarize(&report(0, 5, None)),
            "5 of 5 lost packets dropped between hop server and hop client \
             (direction server -> client: 5 of 1000 packets lost)"
        );
        assert_eq!(
            summarize(&report(0, 0, Some(24.0))),
            "no packet lost between hops client, server (2000 packets matched); \
             one-way delay client -> server p50 12.0 ms, p99 24.0 ms"
        );
    }
}
