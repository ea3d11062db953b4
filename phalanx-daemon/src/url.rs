//! URLs of receivers and peers: `http://` or `https://` with a host,
//! checked while the configuration is parsed so errors carry the key and
//! line.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

/// An `http://` or `https://` URL with a host, validated while parsing so
/// errors carry the key and line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl(pub reqwest::Url);

impl FromStr for HttpUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let u = reqwest::Url::parse(s).map_err(|e| format!("{s:?} is not a URL ({e})"))?;
        if !matches!(u.scheme(), "http" | "https") {
            return Err(format!(
                "{s:?}: only http:// and https:// URLs are supported"
            ));
        }
        if u.host_str().is_none_or(str::is_empty) {
            return Err(format!("{s:?}: the URL has no host"));
        }
        Ok(HttpUrl(u))
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for HttpUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
