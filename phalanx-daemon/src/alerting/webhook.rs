//! Generic webhooks: the Alertmanager webhook payload (version 4), so
//! receivers written for Alertmanager accept it, optionally signed with
//! HMAC-SHA256 over the exact body.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::alerting::{Incident, Status};
use crate::clock::rfc3339;

use super::alertmanager::incident_url;

/// Header carrying the body's signature: `sha256=<hex>`.
pub const SIGNATURE_HEADER: &str = "X-Phalanx-Signature";

/// What Alertmanager writes as `endsAt` of a firing alert (Go's zero time).
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// The Alertmanager webhook payload.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Payload<'a> {
    /// Always "4".
    pub version: &'static str,
    /// Identifies the group (here: one incident's rule and group).
    pub group_key: String,
    /// Alerts left out; always 0.
    pub truncated_alerts: u32,
    /// "firing" or "resolved".
    pub status: &'static str,
    /// Name of the receiver.
    pub receiver: &'a str,
    /// Labels the group is formed by.
    pub group_labels: BTreeMap<&'a str, &'a str>,
    /// Labels shared by every alert.
    pub common_labels: &'a BTreeMap<String, String>,
    /// Annotations shared by every alert.
    pub common_annotations: &'a BTreeMap<String, String>,
    /// Base URL of the daemon's API.
    #[serde(rename = "externalURL")]
    pub external_url: &'a str,
    /// The alerts (one per payload).
    pub alerts: Vec<Alert<'a>>,
}

/// One alert of a webhook payload.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert<'a> {
    /// "firing" or "resolved".
    pub status: &'static str,
    /// Identity.
    pub labels: &'a BTreeMap<String, String>,
    /// Details.
    pub annotations: &'a BTreeMap<String, String>,
    /// When it fired.
    pub starts_at: String,
    /// When it resolved, or Go's zero time while firing.
    pub ends_at: String,
    /// Link to the incident.
    #[serde(rename = "generatorURL")]
    pub generator_url: String,
    /// Stable fingerprint of rule and group.
    pub fingerprint: &'a str,
}

/// The payload for one incident's transition.
pub fn payload<'a>(inc: &'a Incident, receiver: &'a str, external_url: &'a str) -> Payload<'a> {
    let status = inc.status.as_str();
    let group_labels: BTreeMap<&str, &str> = [
        ("alertname", inc.rule.as_str()),
        ("group", inc.group.as_str()),
    ]
    .into_iter()
    .collect();
    let group_key = format!("{{}}:{{alertname={:?}, group={:?}}}", inc.rule, inc.group);
    Payload {
        version: "4",
        group_key,
        truncated_alerts: 0,
        status,
        receiver,
        group_labels,
        common_labels: &inc.labels,
        common_annotations: &inc.annotations,
        external_url,
        alerts: vec![Alert {
            status,
            labels: &inc.labels,
            annotations: &inc.annotations,
            starts_at: rfc3339(inc.starts_at),
            ends_at: match (inc.status, inc.ends_at) {
                (Status::Resolved, Some(t)) => rfc3339(t),
                _ => ZERO_TIME.to_string(),
            },
            generator_url: incident_url(external_url, inc),
            fingerprint: &inc.fingerprint,
        }],
    }
}

/// The serialized payload (the exact bytes that are sent and signed).
pub fn body(
    inc: &Incident,
    receiver: &str,
    external_url: &str,
) -> Result<String, serde_json::Error> {
    serde_json::to_string(&payload(inc, receiver, external_url))
}

/// `sha256=<hex of HMAC-SHA256(secret, body)>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    crate::sign::sign(secret, &[body])
}

/// Checks a signature header value against the body (constant time).
pub fn verify(secret: &[u8], body: &[u8], header: &str) -> bool {
    crate::sign::verify(secret, &[body], header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerting::alertmanager::tests::sample;

    #[test]
    fn hmac_sha256_known_vectors() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // RFC 4231, test case 1: 20 bytes of 0x0b, "Hi There".
        assert_eq!(
            signature(&[0x0b; 20], b"Hi There"),
            "sha256=b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        let body = b"{\"version\":\"4\"}";
        let sig = signature(b"s3cret", body);
        assert!(verify(b"s3cret", body, &sig));
        assert!(!verify(b"other", body, &sig), "wrong secret");
        assert!(
            !verify(b"s3cret", b"{\"version\":\"5\"}", &sig),
            "altered body"
        );
        assert!(!verify(b"s3cret", body, "sha256=zz"), "malformed header");
    }

    #[test]
    fn golden_payload() {
        let (fired, resolved) = sample();
        let got = body(&fired, "oncall", "http://node-1:9740").expect("json");
        let want = concat!(
            r#"{"version":"4","groupKey":"{}:{alertname=\"pmtud_blackhole\", group=\"svc-443/10.0.0.0/8\"}","#,
            r#""truncatedAlerts":0,"status":"firing","receiver":"oncall","#,
            r#""groupLabels":{"alertname":"pmtud_blackhole","group":"svc-443/10.0.0.0/8"},"#,
            r#""commonLabels":{"alertname":"pmtud_blackhole","group":"svc-443/10.0.0.0/8","host":"node-1","severity":"critical"},"#,
            r#""commonAnnotations":{"evidence":"{\"retransmitted_full_size\":7}","pcapng":"bb013924feaf54b6-17979cfe362a0000.pcapng.zst","summary":"Full-size segments to 10.0.0.2 are lost."},"#,
            r#""externalURL":"http://node-1:9740","#,
            r#""alerts":[{"status":"firing","#,
            r#""labels":{"alertname":"pmtud_blackhole","group":"svc-443/10.0.0.0/8","host":"node-1","severity":"critical"},"#,
            r#""annotations":{"evidence":"{\"retransmitted_full_size\":7}","pcapng":"bb013924feaf54b6-17979cfe362a0000.pcapng.zst","summary":"Full-size segments to 10.0.0.2 are lost."},"#,
            r#""startsAt":"2023-11-14T22:13:20.000Z","endsAt":"0001-01-01T00:00:00Z","#,
            r#""generatorURL":"http://node-1:9740/api/v1/incidents/bb013924feaf54b6-17979cfe362a0000","#,
            r#""fingerprint":"bb013924feaf54b6"}]}"#
        );
        assert_eq!(got, want);
        let v: serde_json::Value =
            serde_json::from_str(&body(&resolved, "oncall", "http://x").expect("json"))
                .expect("valid");
        assert_eq!(v["status"], "resolved");
        assert_eq!(v["alerts"][0]["status"], "resolved");
        assert_eq!(v["alerts"][0]["endsAt"], "2023-11-14T22:14:50.000Z");
    }
}
