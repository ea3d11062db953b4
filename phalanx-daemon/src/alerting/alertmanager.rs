//! Alertmanager API v2 payloads (`POST /api/v2/alerts`).
//!
//! Alertmanager identifies an alert by its label set, expects firing alerts
//! to be re-sent before they time out (its `resolve_timeout`, 5 minutes by
//! default), and takes an alert whose `endsAt` has passed as resolved.

use std::collections::BTreeMap;

use reqwest::Url;
use serde::Serialize;

use crate::alerting::{Incident, Status};
use crate::clock::rfc3339;

/// One element of the v2 `postableAlerts` array.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PostableAlert<'a> {
    /// Identity of the alert.
    pub labels: &'a BTreeMap<String, String>,
    /// Free-form details.
    pub annotations: &'a BTreeMap<String, String>,
    /// When it fired.
    pub starts_at: String,
    /// When it resolved; absent while firing (Alertmanager then applies its timeout).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<String>,
    /// Link back to the incident in the daemon's API.
    #[serde(rename = "generatorURL")]
    pub generator_url: String,
}

/// Link to an incident in the daemon's API.
pub fn incident_url(external_url: &str, inc: &Incident) -> String {
    format!(
        "{}/api/v1/incidents/{}",
        external_url.trim_end_matches('/'),
        inc.id
    )
}

/// The v2 alert for an incident.
pub fn alert<'a>(inc: &'a Incident, external_url: &str) -> PostableAlert<'a> {
    PostableAlert {
        labels: &inc.labels,
        annotations: &inc.annotations,
        starts_at: rfc3339(inc.starts_at),
        ends_at: match inc.status {
            Status::Firing => None,
            Status::Resolved => inc.ends_at.map(rfc3339),
        },
        generator_url: incident_url(external_url, inc),
    }
}

/// Body of `POST /api/v2/alerts` for these incidents.
pub fn body(incidents: &[&Incident], external_url: &str) -> Result<String, serde_json::Error> {
    let alerts: Vec<PostableAlert<'_>> = incidents.iter().map(|i| alert(i, external_url)).collect();
    serde_json::to_string(&alerts)
}

/// `POST` endpoint of an Alertmanager base URL (which may carry a path
/// prefix, e.g. behind a reverse proxy).
pub fn alerts_endpoint(base: &Url) -> Url {
    let mut u = base.clone();
    let path = format!("{}/api/v2/alerts", base.path().trim_end_matches('/'));
    u.set_path(&path);
    u
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::alerting::{IncidentManager, ManagerSettings, Observation, Severity, Transition};

    /// A fired and a resolved incident with fixed times, for golden payloads.
    pub(crate) fn sample() -> (Incident, Incident) {
        let t0 = 1_700_000_000_000_000_000u64;
        let mut m = IncidentManager::new(ManagerSettings {
            resolve_after: std::time::Duration::from_secs(60),
            host: "node-1".into(),
            ..ManagerSettings::default()
        });
        m.observe(
            Observation {
                activity_ns: None,
                client: None,
                rule: "pmtud_blackhole".into(),
                severity: Severity::Critical,
                group: "svc-443/10.0.0.0/8".into(),
                flow: None,
                summary: "Full-size segments to 10.0.0.2 are lost.".into(),
                evidence: serde_json::json!({ "retransmitted_full_size": 7 }),
            },
            t0,
        );
        let t = m.tick(t0);
        let Some(Transition::Fired(mut fired)) = t.into_iter().next() else {
            panic!("fired")
        };
        fired = m
            .annotate(&fired.id, "pcapng", format!("{}.pcapng.zst", fired.id))
            .unwrap_or(fired);
        let t = m.tick(t0 + 90_000_000_000);
        let Some(Transition::Resolved(resolved)) = t.into_iter().next() else {
            panic!("resolved")
        };
        (fired, resolved)
    }

    #[test]
    fn golden_v2_body() {
        let (fired, resolved) = sample();
        let got = body(&[&fired], "http://node-1:9740/").expect("json");
        let want = r#"[{"labels":{"alertname":"pmtud_blackhole","group":"svc-443/10.0.0.0/8","host":"node-1","severity":"critical"},"annotations":{"evidence":"{\"retransmitted_full_size\":7}","pcapng":"bb013924feaf54b6-17979cfe362a0000.pcapng.zst","summary":"Full-size segments to 10.0.0.2 are lost."},"startsAt":"2023-11-14T22:13:20.000Z","generatorURL":"http://node-1:9740/api/v1/incidents/bb013924feaf54b6-17979cfe362a0000"}]"#;
        assert_eq!(got, want);
        let got = body(&[&resolved], "http://node-1:9740").expect("json");
        let v: serde_json::Value = serde_json::from_str(&got).expect("valid json");
        assert_eq!(
            v[0]["endsAt"], "2023-11-14T22:14:50.000Z",
            "resolved carries endsAt"
        );
        assert_eq!(
            v[0]["labels"],
            serde_json::to_value(&fired.labels).expect("labels")
        );
    }

    #[test]
    fn endpoint_keeps_a_path_prefix() {
        for (base, want) in [
            (
                "http://127.0.0.1:9093",
                "http://127.0.0.1:9093/api/v2/alerts",
            ),
            (
                "http://127.0.0.1:9093/",
                "http://127.0.0.1:9093/api/v2/alerts",
            ),
            (
                "https://am.example/am/",
                "https://am.example/am/api/v2/alerts",
            ),
        ] {
            let u = Url::parse(base).expect("url");
            assert_eq!(alerts_endpoint(&u).as_str(), want);
        }
    }
}
