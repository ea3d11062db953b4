//! The wall clock, for what leaves the engine: incident times, delivery
//! deadlines, signed timestamps. The flow engine never reads it; its time
//! is the records' own (`ts_ns`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Nanoseconds since the epoch.
pub fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Seconds since the epoch.
pub fn wall_secs() -> u64 {
    wall_ns() / 1_000_000_000
}

/// RFC 3339 (UTC, milliseconds) of a time in ns since the epoch.
pub fn rfc3339(ns: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_nanos(ns)).to_string()
}

/// Parses an RFC 3339 time into ns since the epoch.
pub fn parse_rfc3339(s: &str) -> Result<u64, String> {
    let t = humantime::parse_rfc3339(s).map_err(|e| format!("{s:?}: {e}"))?;
    let d = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| format!("{s:?} is before 1970"))?;
    u64::try_from(d.as_nanos()).map_err(|_| format!("{s:?} is too far ahead"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_at_millisecond_resolution() {
        let ns = 1_700_000_000_123_000_000;
        assert_eq!(rfc3339(ns), "2023-11-14T22:13:20.123Z");
        assert_eq!(parse_rfc3339(&rfc3339(ns)), Ok(ns));
        assert!(parse_rfc3339("yesterday").is_err());
    }

    #[test]
    fn seconds_and_nanoseconds_agree() {
        let (s, ns) = (wall_secs(), wall_ns());
        assert!(ns / 1_000_000_000 >= s && ns / 1_000_000_000 - s <= 1);
    }
}
