//! `[stitch]`: the peer daemons on other hops of the paths, the shared key
//! of their requests, and what this daemon keeps so peers can ask it.

use serde::Deserialize;

use crate::url::HttpUrl;

/// A shared key that cannot be used (the message names the key).
#[derive(Debug, thiserror::Error)]
#[error("invalid config: {0}")]
pub struct SecretError(pub String);

/// `[stitch]` section: peer daemons on other hops of the paths, and what
/// this daemon keeps so that peers can ask it about a flow.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StitchConfig {
    /// Base URLs of the peer daemons' APIs (`http://host:9740`).
    pub peers: Vec<HttpUrl>,
    /// Shared HMAC-SHA256 key of the peer requests; "" = not set.
    pub secret: String,
    /// File holding the shared key (trailing newline ignored); "" = not set.
    pub secret_file: std::path::PathBuf,
    /// This daemon's hop name in stitch reports; "" = the system host name.
    pub hop: String,
    /// Timeout of one request to a peer, milliseconds.
    pub timeout_ms: u64,
    /// Firing incidents are stitched again this often (seconds).
    pub refresh_secs: u64,
    /// Deprecated: `history.peer_packets` (read for one release).
    pub history_packets: Option<usize>,
    /// Deprecated: `history.peer_flows` (read for one release).
    pub history_flows: Option<usize>,
}

impl Default for StitchConfig {
    fn default() -> Self {
        Self {
            peers: Vec::new(),
            secret: String::new(),
            secret_file: std::path::PathBuf::new(),
            hop: String::new(),
            timeout_ms: 3000,
            refresh_secs: 30,
            history_packets: None,
            history_flows: None,
        }
    }
}

impl StitchConfig {
    /// Whether a key is configured (the peer endpoint answers and a history is kept).
    pub fn has_secret(&self) -> bool {
        !self.secret.is_empty() || !self.secret_file.as_os_str().is_empty()
    }

    /// The shared key: `secret`, or the contents of `secret_file`.
    pub fn load_secret(&self) -> Result<Option<Vec<u8>>, SecretError> {
        if !self.secret.is_empty() {
            return Ok(Some(self.secret.as_bytes().to_vec()));
        }
        if self.secret_file.as_os_str().is_empty() {
            return Ok(None);
        }
        let text = std::fs::read(&self.secret_file).map_err(|e| {
            SecretError(format!(
                "stitch.secret_file: cannot read {}: {e}",
                self.secret_file.display()
            ))
        })?;
        let key = text.trim_ascii_end().to_vec();
        check_secret_len("stitch.secret_file", key.len())?;
        Ok(Some(key))
    }
}

/// Shortest shared key accepted: HMAC keys shorter than this are guessable.
pub const MIN_SECRET_BYTES: usize = 16;

pub fn check_secret_len(key: &str, len: usize) -> Result<(), SecretError> {
    if len < MIN_SECRET_BYTES {
        return Err(SecretError(format!(
            "{key}: the shared key must be at least {MIN_SECRET_BYTES} bytes, got {len}"
        )));
    }
    Ok(())
}
