//! Flow table settings (`[flows]` in phalanx.toml).

use serde::Deserialize;

/// Flow table settings: the table's bound and the idle timeouts after which
/// a flow is evicted. Timeouts run on record time (virtual time), so an
/// offline analysis evicts exactly as the live daemon would.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlowConfig {
    /// Maximum number of flows tracked at once; when full, the flow idle for
    /// the longest time is evicted to make room. Default: 200000 (README, Memory).
    pub max_flows: usize,
    /// Idle timeout in seconds for TCP flows still in the handshake (SYN
    /// sent, SYN/ACK not yet acknowledged). Default: 30.
    pub syn_timeout_secs: u64,
    /// Idle timeout in seconds for TCP flows in the handshake whose SYN (or
    /// SYN/ACK) was re-sent with the same sequence number: long enough for
    /// the sender's backoff (Linux re-sends at 1, 3, 7, 15, 31 and 63 s and
    /// gives up at 127 s with the default `tcp_syn_retries = 6`), so a
    /// retried attempt stays one flow. Default: 130.
    pub syn_retry_timeout_secs: u64,
    /// Idle timeout in seconds for established TCP flows (also flows picked
    /// up mid-stream). Default: 600.
    pub established_timeout_secs: u64,
    /// Idle timeout in seconds for TCP flows that were closed by FIN in both
    /// directions or by RST. Default: 10.
    pub closed_timeout_secs: u64,
    /// Idle timeout in seconds for UDP flows and other IP protocols.
    /// Default: 60.
    pub udp_timeout_secs: u64,
}

impl Default for FlowConfig {
    fn default() -> Self {
        Self {
            max_flows: 200_000,
            syn_timeout_secs: 30,
            syn_retry_timeout_secs: 130,
            established_timeout_secs: 600,
            closed_timeout_secs: 10,
            udp_timeout_secs: 60,
        }
    }
}

impl FlowConfig {
    /// Timeout in nanoseconds for a timeout class.
    pub(crate) fn timeout_ns(&self, class: super::state::TimeoutClass) -> u64 {
        use super::state::TimeoutClass as C;
        let s = match class {
            C::Syn => self.syn_timeout_secs,
            C::SynRetried => self.syn_retry_timeout_secs,
            C::Established => self.established_timeout_secs,
            C::Closed => self.closed_timeout_secs,
            C::Udp => self.udp_timeout_secs,
        };
        s.saturating_mul(1_000_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_toml_keeps_defaults_and_unknown_keys_fail() {
        let c: FlowConfig = toml::from_str("max_flows = 10").expect("valid [flows] table");
        assert_eq!(c.max_flows, 10);
        assert_eq!(c.established_timeout_secs, 600);
        assert!(
            toml::from_str::<FlowConfig>("max_flow = 10").is_err(),
            "a misspelt key must be rejected"
        );
    }
}
