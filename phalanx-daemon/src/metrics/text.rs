//! The Prometheus text format (0.0.4) for scrapers that do not ask for
//! OpenMetrics.
//!
//! prometheus-client encodes OpenMetrics only. The two formats differ, for
//! the families we export, in three places: OpenMetrics names a counter
//! family without its `_total` suffix in `# HELP`/`# TYPE` (0.0.4 names it
//! as its samples are named), it may carry `# UNIT` lines, and it ends with
//! `# EOF`. Prometheus itself asks for OpenMetrics and gets it unchanged;
//! curl, `promtool check metrics` and older scrapers get 0.0.4.

/// `Content-Type` of the OpenMetrics text.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// `Content-Type` of the Prometheus text format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether an `Accept` header asks for OpenMetrics.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/openmetrics-text"))
}

/// Rewrites OpenMetrics text into the Prometheus 0.0.4 text format.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            flush(&mut out, help.take());
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let name = if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            if let Some((_, text)) = help.take() {
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        } else {
            flush(&mut out, help.take());
            out.push_str(line);
            out.push('\n');
        }
    }
    flush(&mut out, help);
    out
}

fn flush(out: &mut String, help: Option<(&str, &str)>) {
    if let Some((name, text)) = help {
        out.push_str(&format!("# HELP {name} {text}\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gain_total_in_their_descriptors() {
        let om = "# HELP a_packets Packets.\n# TYPE a_packets counter\na_packets_total{x=\"1\"} 3\n\
                  # HELP b_rtt_seconds RTT.\n# TYPE b_rtt_seconds histogram\n# UNIT b_rtt_seconds seconds\n\
                  b_rtt_seconds_bucket{le=\"+Inf\"} 1\nb_rtt_seconds_sum 0.5\nb_rtt_seconds_count 1\n\
                  # HELP c Gauge.\n# TYPE c gauge\nc 2\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP a_packets_total Packets.\n# TYPE a_packets_total counter\na_packets_total{x=\"1\"} 3\n\
             # HELP b_rtt_seconds RTT.\n# TYPE b_rtt_seconds histogram\n\
             b_rtt_seconds_bucket{le=\"+Inf\"} 1\nb_rtt_seconds_sum 0.5\nb_rtt_seconds_count 1\n\
             # HELP c Gauge.\n# TYPE c gauge\nc 2\n"
        );
    }

    #[test]
    fn accept_header_negotiation() {
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        )));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(None));
    }
}
