//! Who may use the HTTP API: bearer tokens with a scope, and the browser
//! sessions a token is exchanged for.
//!
//! `[http] token_file` holds one `NAME:SCOPE:TOKEN` per line (`#` starts a
//! comment). A request names its caller with `Authorization: Bearer TOKEN`
//! or, from a browser (server-sent events and download links cannot carry
//! that header), with the `phalanx_session` cookie that
//! `POST /api/v1/session` set for a token. `read` reads; `admin` also acts
//! (stitch requests, and what later acts on the network). Tokens are kept
//! as SHA-256 digests and every entry is compared in constant time. Without
//! a token file the API is open, which the configuration allows only on a
//! loopback address or with `insecure_open = true`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "phalanx_session";
/// Shortest token accepted (characters): guessing must be hopeless.
pub const MIN_TOKEN_LEN: usize = 16;
/// Most sessions open at once; the oldest is closed to make room.
const MAX_SESSIONS: usize = 1024;

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Read flows, incidents, evidence and metrics.
    Read,
    /// Also act: stitch requests, approvals.
    Admin,
}

impl Scope {
    /// Its name in the token file.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }
}

/// A signed-in caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The token's name: what logs and audit records show.
    pub name: String,
    /// What it may do.
    pub scope: Scope,
}

/// A token file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file cannot be read.
    #[error("http.token_file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line is wrong.
    #[error("http.token_file {path} line {line}: {message}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong (never the token itself).
        message: String,
    },
    /// No token at all.
    #[error("http.token_file {0}: no token (lines are NAME:SCOPE:TOKEN)")]
    Empty(PathBuf),
}

/// The tokens of a token file, as digests.
#[derive(Debug)]
pub struct Tokens {
    entries: Vec<([u8; 32], Principal)>,
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

impl Tokens {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses token-file text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, TokenFileError> {
        let err = |line: usize, message: String| TokenFileError::Line {
            path: path.to_path_buf(),
            line,
            message,
        };
        let mut entries: Vec<([u8; 32], Principal)> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.splitn(3, ':');
            let (Some(name), Some(scope), Some(token)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(err(i + 1, "expected NAME:SCOPE:TOKEN".into()));
            };
            let name = name.trim();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
            {
                return Err(err(
                    i + 1,
                    "the name must be letters, digits, '-', '_', '.' or '@'".into(),
                ));
            }
            let scope = match scope.trim() {
                "read" => Scope::Read,
                "admin" => Scope::Admin,
                // Not echoed: with its fields swapped, a line has its
                // token here, and errors reach logs.
                _ => {
                    return Err(err(
                        i + 1,
                        "the second field is the scope: \"read\" or \"admin\"".to_string(),
                    ))
                }
            };
            let token = token.trim();
            if token.chars().count() < MIN_TOKEN_LEN || token.chars().any(char::is_whitespace) {
                return Err(err(
                    i + 1,
                    format!("the token of {name:?} must be {MIN_TOKEN_LEN} or more characters without spaces"),
                ));
            }
            let d = digest(token);
            if entries.iter().any(|(e, p)| *e == d || p.name == name) {
                return Err(err(i + 1, format!("{name:?}: name or token used twice")));
            }
            entries.push((
                d,
                Principal {
                    name: name.to_string(),
                    scope,
                },
            ));
        }
        if entries.is_empty() {
            return Err(TokenFileError::Empty(path.to_path_buf()));
        }
        Ok(Self { entries })
    }

    /// The principal of a presented token. Every entry is compared, in
    /// constant time, whatever matches.
    pub fn check(&self, token: &str) -> Option<Principal> {
        let d = digest(token);
        let mut found = None;
        for (e, p) in &self.entries {
            if bool::from(e.ct_eq(&d)) {
                found = Some(p.clone());
            }
        }
        found
    }
}

/// Browser sessions opened for a token.
#[derive(Debug)]
struct Sessions {
    ttl: Duration,
    /// By digest of the session id.
    open: Mutex<HashMap<[u8; 32], (Principal, Instant)>>,
}

impl Sessions {
    /// A new session for `p`: its id (64 hex digits of OS randomness).
    fn open(&self, p: Principal) -> Result<String, getrandom::Error> {
        let id = crate::sign::random_hex(32)?;
        let now = Instant::now();
        if let Ok(mut m) = self.open.lock() {
            m.retain(|_, (_, until)| *until > now);
            if m.len() >= MAX_SESSIONS {
                let oldest = m
                    .iter()
                    .min_by_key(|(_, (_, until))| *until)
                    .map(|(k, _)| *k);
                if let Some(k) = oldest {
                    m.remove(&k);
                }
            }
            m.insert(digest(&id), (p, now + self.ttl));
        }
        Ok(id)
    }

    fn get(&self, id: &str) -> Option<Principal> {
        let m = self.open.lock().ok()?;
        m.get(&digest(id))
            .filter(|(_, until)| *until > Instant::now())
            .map(|(p, _)| p.clone())
    }

    fn close(&self, id: &str) {
        if let Ok(mut m) = self.open.lock() {
            m.remove(&digest(id));
        }
    }
}

/// Why a request was not let in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denied {
    /// No credentials.
    Missing,
    /// A token or session that is not known (or expired).
    Invalid,
    /// Known, but its scope is not enough.
    Forbidden,
}

impl Denied {
    /// Its name in `phalanx_http_auth_total{outcome}`.
    pub fn as_str(self) -> &'static str {
        match self {
            Denied::Missing => "missing",
            Denied::Invalid => "invalid",
            Denied::Forbidden => "forbidden",
        }
    }
}

/// Labels `{outcome}` of `phalanx_http_auth_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// The API's authentication: open, or the tokens of a token file.
#[derive(Debug)]
pub struct Auth {
    tokens: Option<Tokens>,
    sessions: Sessions,
    outcomes: Family<OutcomeLabels, Counter>,
}

impl Auth {
    /// No authentication: every request is let in.
    pub fn open() -> Self {
        Self::new(None, Duration::from_secs(3600))
    }

    /// Tokens (or none: open), with sessions that last `session_ttl`.
    pub fn new(tokens: Option<Tokens>, session_ttl: Duration) -> Self {
        Self {
            tokens,
            sessions: Sessions {
                ttl: session_ttl,
                open: Mutex::new(HashMap::new()),
            },
            outcomes: Family::default(),
        }
    }

    /// Registers `phalanx_http_auth_total{outcome}`: requests that needed
    /// a caller, by `ok` or the reason they were refused.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "phalanx_http_auth",
            "API requests that had to name a caller, by outcome (ok, missing, invalid, forbidden)",
            self.outcomes.clone(),
        );
    }

    fn count(&self, outcome: &'static str) {
        self.outcomes
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// The authentication `[http]` configures: its token file's tokens,
    /// or open.
    pub fn from_config(http: &crate::config::HttpConfig) -> Result<Self, TokenFileError> {
        let file = &http.token_file;
        let tokens = (!file.as_os_str().is_empty())
            .then(|| Tokens::load(file))
            .transpose()?;
        Ok(Self::new(
            tokens,
            Duration::from_secs(http.session_ttl_secs),
        ))
    }

    /// Whether requests must name a caller.
    pub fn required(&self) -> bool {
        self.tokens.is_some()
    }

    /// The caller of a request needing `scope`: `Ok(None)` when the API is
    /// open.
    pub fn admit(&self, headers: &HeaderMap, scope: Scope) -> Result<Option<Principal>, Denied> {
        let Some(tokens) = &self.tokens else {
            return Ok(None);
        };
        let caller = match (bearer(headers), cookie(headers, SESSION_COOKIE)) {
            (Some(t), _) => tokens.check(t).ok_or(Denied::Invalid),
            (None, Some(id)) => self.sessions.get(id).ok_or(Denied::Invalid),
            (None, None) => Err(Denied::Missing),
        };
        let admitted = caller.and_then(|p| {
            if p.scope < scope {
                Err(Denied::Forbidden)
            } else {
                Ok(Some(p))
            }
        });
        self.count(admitted.as_ref().map_or_else(|d| d.as_str(), |_| "ok"));
        admitted
    }

    /// Opens a browser session for the bearer token of `headers`: the
    /// `Set-Cookie` value (HttpOnly, SameSite=Strict; `Secure` over TLS).
    pub fn open_session(
        &self,
        headers: &HeaderMap,
        tls: bool,
    ) -> Result<(Principal, String), Denied> {
        let tokens = self.tokens.as_ref().ok_or(Denied::Missing)?;
        let token = bearer(headers).ok_or(Denied::Missing)?;
        let p = tokens.check(token).ok_or(Denied::Invalid)?;
        let id = self.sessions.open(p.clone()).map_err(|_| Denied::Invalid)?;
        let cookie = format!(
            "{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
            self.sessions.ttl.as_secs(),
            if tls { "; Secure" } else { "" }
        );
        Ok((p, cookie))
    }

    /// Closes the request's session, if it has one; the `Set-Cookie` value
    /// that clears it.
    pub fn close_session(&self, headers: &HeaderMap) -> String {
        if let Some(id) = cookie(headers, SESSION_COOKIE) {
            self.sessions.close(id);
        }
        format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
    }
}

/// The token of an `Authorization: Bearer` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (kind, token) = v.split_once(' ')?;
    kind.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The value of cookie `name`.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find_map(|(k, v)| (k == name).then_some(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const FILE: &str =
        "# operators\nalice:admin:0123456789abcdef-alice\n\nprom:read:0123456789abcdef-prom\n";

    fn auth() -> Auth {
        let t = Tokens::parse(FILE, Path::new("tokens")).expect("valid");
        Auth::new(Some(t), Duration::from_secs(60))
    }

    fn with(name: header::HeaderName, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).expect("header"));
        h
    }

    #[test]
    fn tokens_sign_in_with_their_scope() {
        let a = auth();
        let admin = with(header::AUTHORIZATION, "Bearer 0123456789abcdef-alice");
        let read = with(header::AUTHORIZATION, "bearer 0123456789abcdef-prom");
        assert_eq!(
            a.admit(&admin, Scope::Admin).map(|p| p.map(|p| p.name)),
            Ok(Some("alice".into()))
        );
        assert_eq!(
            a.admit(&read, Scope::Read).map(|p| p.map(|p| p.name)),
            Ok(Some("prom".into()))
        );
        assert_eq!(a.admit(&read, Scope::Admin), Err(Denied::Forbidden));
        let wrong = with(header::AUTHORIZATION, "Bearer 0123456789abcdef-alicE");
        assert_eq!(a.admit(&wrong, Scope::Read), Err(Denied::Invalid));
        assert_eq!(
            a.admit(&HeaderMap::new(), Scope::Read),
            Err(Denied::Missing)
        );
        assert_eq!(
            Auth::open().admit(&HeaderMap::new(), Scope::Admin),
            Ok(None)
        );
    }

    #[test]
    fn a_session_stands_for_its_token_until_closed() {
        let a = auth();
        let (p, set) = a
            .open_session(
                &with(header::AUTHORIZATION, "Bearer 0123456789abcdef-prom"),
                false,
            )
            .expect("session");
        assert_eq!(p.name, "prom");
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Strict"),
            "{set}"
        );
        let id = set
            .split(';')
            .next()
            .and_then(|kv| kv.split_once('='))
            .map(|(_, v)| v.to_string())
            .expect("cookie value");
        assert_eq!(id.len(), 64);
        let browser = with(
            header::COOKIE,
            &format!("theme=dark; {SESSION_COOKIE}={id}"),
        );
        assert_eq!(
            a.admit(&browser, Scope::Read).map(|p| p.is_some()),
            Ok(true)
        );
        assert_eq!(a.admit(&browser, Scope::Admin), Err(Denied::Forbidden));
        a.close_session(&browser);
        assert_eq!(a.admit(&browser, Scope::Read), Err(Denied::Invalid));
        let forged = with(
            header::COOKIE,
            &format!("{SESSION_COOKIE}={}", "0".repeat(64)),
        );
        assert_eq!(a.admit(&forged, Scope::Read), Err(Denied::Invalid));
    }

    #[test]
    fn bad_token_files_name_the_line() {
        let p = Path::new("t");
        for (text, want) in [
            ("alice:admin\n", "line 1: expected NAME:SCOPE:TOKEN"),
            (
                "alice:root:0123456789abcdef\n",
                "line 1: the second field is the scope",
            ),
            (
                "alice:read:short\n",
                "line 1: the token of \"alice\" must be 16",
            ),
            (
                "a:read:0123456789abcdef\nb:read:0123456789abcdef\n",
                "line 2: \"b\": name or token used twice",
            ),
            ("a b:read:0123456789abcdef\n", "line 1: the name must be"),
            ("# nothing\n", "no token"),
        ] {
            let e = Tokens::parse(text, p).expect_err(text).to_string();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(!e.contains("0123456789abcdef"), "never echoes a token: {e}");
        }
    }
}
