//! The bodies of the fuzz targets (`phalanx-daemon/fuzz`), one function per
//! input surface of the daemon, so that the fuzzers and the corpus replay
//! test (`tests/fuzz_corpus.rs`) run the same code.
//!
//! Each target takes arbitrary bytes, feeds them to the daemon's own entry
//! point for that surface and asserts more than "no panic": what the
//! surface promises about its output (a documented bound, a round trip, an
//! invariant of the state it fills). A failed assertion is a finding just
//! like a panic in the code under test.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::Query;
use axum::http::{header, HeaderMap, HeaderValue, Uri};
use phalanx_common::{PacketMeta, RecordKind, RING_SHORT_LEN};
use prometheus_client::registry::Registry;
use serde::Deserialize;

use crate::analyze::analyze_records_with;
use crate::api::auth::{Auth, Principal, Scope, TokenFileError, Tokens, MIN_TOKEN_LEN};
use crate::api::lists::{PAGE_DEFAULT, PAGE_MAX};
use crate::capture::file;
use crate::config::{Config, ConfigError, HistoryConfig, StitchConfig};
use crate::flow::history::{FlowHistory, HistoryBounds};
use crate::flow::rank::{Cursor, RankBy};
use crate::flow::{FlowConfig, FlowKey, FlowSummary, FlowTable, SharedTable};
use crate::metrics::kpi::{FlowMetrics, KpiCollector};
use crate::pipeline::Pipeline;
use crate::rules::expr::{self, Template};
use crate::rules::fields::flow_fields;
use crate::rules::{CustomRuleConfig, RuleEngine, RulesConfig, Severity};
use crate::stitch::live::LiveStitch;
use crate::stitch::peer::{self, FlowQuery, Nonces, PeerAnswer, PeerOutcome};
use crate::stitch::{summary::summarize, HopCapture};
use crate::synth::{tcp_conversation, tcp_segment, DataDir, TcpScenario};

/// Flows the fuzzed flow tables keep: small, so eviction runs too.
const FUZZ_MAX_FLOWS: usize = 64;
/// Shared key of the peer requests the targets sign.
const KEY: &[u8] = b"fuzz-shared-key-0123456789";
/// The answering host's clock (Unix seconds) in the peer targets.
const NOW_SECS: u64 = 1_700_000_000;
/// Hop name of the fixture's live stitching.
const HOP: &str = "here";
/// Records per pipeline batch in [`ring_record`], as the ring consumer
/// hands on partial batches when the ring runs dry.
const RING_BATCH: usize = 16;

/// Arbitrary bytes as a capture file (pcap, pcapng, zstd-compressed): the
/// reader yields records and at most one error, the error last; reading in
/// batches yields exactly what the iterator does; `analyze` over the
/// records keeps every flow once (report flows = flows created) and its
/// report encodes as JSON.
pub fn file_reader(data: &[u8]) {
    let Ok(reader) = file::from_reader(std::io::Cursor::new(data.to_vec())) else {
        return;
    };
    let mut records = Vec::new();
    let mut errors = 0;
    for item in reader {
        assert_eq!(errors, 0, "nothing follows the error");
        match item {
            Ok(rec) => records.push(rec),
            Err(_) => errors += 1,
        }
    }
    assert!(errors <= 1, "one error ends the iteration");
    if let Ok(mut batched) = file::from_reader(std::io::Cursor::new(data.to_vec())) {
        let mut got = Vec::new();
        let mut batch_errors = 0;
        loop {
            let limit = got.len() + 7;
            match batched.read_batch(&mut got, limit) {
                Ok(true) => {}
                Ok(false) => break,
                Err(_) => batch_errors += 1,
            }
        }
        assert_eq!(got, records, "batches and the iterator agree");
        assert_eq!(batch_errors, errors);
        assert_eq!(batched.stats().records, records.len() as u64);
    }
    let cfg = FlowConfig {
        max_flows: FUZZ_MAX_FLOWS,
        ..FlowConfig::default()
    };
    let report = analyze_records_with(records.iter().copied(), &cfg, &RuleEngine::default());
    assert_eq!(report.stats.records, records.len() as u64);
    assert_eq!(report.flows.len() as u64, report.stats.flows_created);
    assert!(report.stats.peak_flows <= FUZZ_MAX_FLOWS as u64);
    assert!(serde_json::to_vec(&report).is_ok());
}

/// Arbitrary bytes as ring-buffer entries (each a selector byte, then a
/// record of the length it picks: short, whole, malformed or longer):
/// [`PacketMeta::from_bytes`] accepts exactly the short and whole lengths
/// and a short record's tail comes back zero; the decoded records of any
/// content go through the live pipeline (histories, flow table, KPI
/// metrics), then the rules and a metrics scrape, with the table within
/// its bound.
pub fn ring_record(data: &[u8]) {
    const WHOLE: usize = std::mem::size_of::<PacketMeta>();
    let mut rest = data;
    let mut records = Vec::new();
    while let Some((&sel, tail)) = rest.split_first() {
        let want = match sel % 4 {
            0 => RING_SHORT_LEN,
            1 => WHOLE,
            2 => usize::from(sel / 4),
            _ => WHOLE + usize::from(sel / 4),
        };
        let (entry, next) = tail.split_at(want.min(tail.len()));
        rest = next;
        let decoded = PacketMeta::from_bytes(entry);
        let valid = entry.len() == RING_SHORT_LEN || entry.len() >= WHOLE;
        assert_eq!(decoded.is_some(), valid, "length {}", entry.len());
        let Some(m) = decoded else { continue };
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&entry[..8]);
        assert_eq!(m.ts_ns, u64::from_ne_bytes(ts));
        assert_eq!(m.kind, entry[8]);
        if entry.len() == RING_SHORT_LEN {
            assert!(m.sack == [0; 6] && m.inner_src == [0; 16] && m.inner_proto == 0);
        }
        records.push(m);
    }
    let mut cfg = Config::default();
    cfg.flows.max_flows = FUZZ_MAX_FLOWS;
    let history = crate::alerting::service::history(HistoryBounds {
        per_flow: 8,
        max_flows: 16,
    });
    let pipeline = Pipeline::new(&cfg, history, ring_live());
    for batch in records.chunks(RING_BATCH) {
        pipeline
            .ingest(batch)
            .expect("nothing else holds the locks");
    }
    let (len, stats, now) = pipeline
        .flows
        .read(|t| (t.len(), t.stats().clone(), t.now()))
        .expect("table lock");
    assert!(len <= FUZZ_MAX_FLOWS);
    assert_eq!(stats.records, records.len() as u64);
    let engine = RuleEngine::default();
    let mut evaluation = engine.begin(now);
    pipeline
        .flows
        .scan(0, |_, f| {
            evaluation.flow(f);
            ControlFlow::Continue(())
        })
        .expect("table lock");
    assert!(serde_json::to_vec(&evaluation.finish()).is_ok());
    let mut registry = Registry::default();
    KpiCollector::register(
        &mut registry,
        pipeline.metrics.clone(),
        pipeline.flows.clone(),
    );
    let mut text = String::new();
    assert!(prometheus_client::encoding::text::encode(&mut text, &registry).is_ok());
}

/// Arbitrary bytes as the body of a correctly signed peer request
/// (`POST /api/v1/peer/observations`): the answer is `ok` exactly when the
/// body names a flow and carries a valid nonce, else `malformed`; an `ok`
/// answer is signed, echoes the flow and the nonce, holds only packets of
/// the flow within the query's window, and the same request again is
/// refused as replayed. The same body with a wrong signature is refused,
/// and headers taken from the input (first line: timestamp, second:
/// signature, then the body) never pass for a signature they are not.
pub fn peer_request(data: &[u8]) {
    let live = fixture_live();
    let ts = NOW_SECS.to_string();
    let sig = peer::sign(KEY, NOW_SECS, data);
    let nonces = Mutex::new(Nonces::default());
    let ask = |body: &[u8], sig: &str| {
        peer::answer(
            Some(KEY),
            HOP,
            Some(&ts),
            Some(sig),
            body,
            NOW_SECS,
            &nonces,
            |k, q| live.local(k, q),
        )
    };
    let reply = ask(data, &sig);
    let parsed = FlowQuery::parse(data);
    match reply.outcome {
        PeerOutcome::Ok => {
            let Ok((q, key)) = parsed else {
                panic!("answered a body that does not parse")
            };
            let (ats, asig) = reply.signed.as_ref().expect("an answer is signed");
            let at = peer::verify(KEY, Some(ats), Some(asig), &reply.body, NOW_SECS);
            assert_eq!(at, Ok(NOW_SECS), "the answer's signature checks");
            let a: PeerAnswer = serde_json::from_slice(&reply.body).expect("answer JSON");
            assert_eq!(
                (a.hop.as_str(), &a.flow, &a.nonce),
                (HOP, &q.flow, &q.nonce)
            );
            for o in &a.observations {
                assert!(q.contains(o.ts_ns), "a packet outside the window");
                assert_eq!(o.sighting(key).flow, key);
            }
            assert_eq!(ask(data, &sig).outcome, PeerOutcome::Replayed);
        }
        PeerOutcome::Malformed => {
            assert!(reply.signed.is_none());
            let nonce_ok =
                |n: &str| (16..=64).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_hexdigit());
            if let Ok((q, _)) = parsed {
                assert!(
                    !q.nonce.as_deref().is_some_and(nonce_ok),
                    "refused a good body"
                );
            }
        }
        other => panic!("a signed, fresh request was {other}"),
    }
    let forged = ask(data, "sha256=00");
    assert_eq!(forged.outcome, PeerOutcome::Unauthenticated);
    let mut lines = data.splitn(3, |&b| b == b'\n');
    let (Some(h_ts), Some(h_sig), Some(body)) = (lines.next(), lines.next(), lines.next()) else {
        return;
    };
    let (h_ts, h_sig) = (
        String::from_utf8_lossy(h_ts),
        String::from_utf8_lossy(h_sig),
    );
    if let Ok(t) = peer::verify(KEY, Some(&h_ts), Some(&h_sig), body, NOW_SECS) {
        assert_eq!(
            h_sig.trim(),
            peer::sign(KEY, t, body),
            "a forged signature passed"
        );
    }
}

/// Arbitrary bytes as the body of `POST /api/v1/stitch`: a body that
/// parses names the same canonical flow after a JSON round trip and in its
/// `for_key` form; the peer request built from it (with a nonce) is one a
/// peer answers, naming the same flow; the local and answered packets
/// stitch (or fail with an error) and the report encodes as JSON.
pub fn stitch_request(data: &[u8]) {
    let Ok((q, key)) = FlowQuery::parse(data) else {
        return;
    };
    assert_eq!(q.key(), Ok(key));
    let json = serde_json::to_vec(&q).expect("query JSON");
    assert_eq!(
        FlowQuery::parse(&json),
        Ok((q.clone(), key)),
        "JSON round trip"
    );
    let whole = FlowQuery::for_key(&key);
    assert_eq!(whole.key(), Ok(key), "for_key names the same flow");
    let mut forwarded = q.clone();
    forwarded.nonce = Some("0123456789abcdef0123".into());
    let body = serde_json::to_vec(&forwarded).expect("request JSON");
    let live = fixture_live();
    let reply = peer::answer(
        Some(KEY),
        "peer",
        Some(&NOW_SECS.to_string()),
        Some(&peer::sign(KEY, NOW_SECS, &body)),
        &body,
        NOW_SECS,
        &Mutex::new(Nonces::default()),
        |k, q| live.local(k, q),
    );
    assert_eq!(reply.outcome, PeerOutcome::Ok, "a peer refused our request");
    let a: PeerAnswer = serde_json::from_slice(&reply.body).expect("answer JSON");
    assert_eq!(a.flow, q.flow);
    // The peer's packets, as a hop 1 ms and one router downstream.
    let theirs = a
        .observations
        .iter()
        .map(|o| {
            let mut s = o.sighting(key);
            s.ts_ns = s.ts_ns.saturating_add(1_000_000);
            s.ttl = s.ttl.saturating_sub(1);
            s
        })
        .collect();
    stitch_hops(vec![
        HopCapture {
            name: HOP.into(),
            observations: live.local(&key, &q),
        },
        HopCapture {
            name: a.hop,
            observations: theirs,
        },
    ]);
}

/// Arbitrary bytes as a peer's (authenticated) answer to a request for the
/// fixture's TCP flow: an answer that parses stitches with the local
/// packets or fails with an error, never panics, and the report encodes as
/// JSON with its summary sentence.
pub fn peer_answer(data: &[u8]) {
    let Ok(a) = serde_json::from_slice::<PeerAnswer>(data) else {
        return;
    };
    let live = fixture_live();
    let key = fixture_key();
    let q = FlowQuery::for_key(&key);
    let theirs = a.observations.iter().map(|o| o.sighting(key)).collect();
    assert!(a.observations.iter().all(|o| o.sighting(key).dir <= 1));
    stitch_hops(vec![
        HopCapture {
            name: HOP.into(),
            observations: live.local(&key, &q),
        },
        HopCapture {
            name: a.hop,
            observations: theirs,
        },
    ]);
}

/// Stitches as the live endpoint does (hops that saw nothing dropped
/// first); a report must encode and summarise.
fn stitch_hops(mut hops: Vec<HopCapture>) {
    hops.retain(|h| !h.observations.is_empty());
    if let Ok(r) = crate::stitch::stitch(hops) {
        assert!(serde_json::to_vec(&r).is_ok());
        assert!(!summarize(&r).is_empty());
    }
}

/// `/api/v1/flows?sort=&limit=&cursor=` (`FlowsQuery` in api/lists.rs).
#[derive(Debug, Deserialize)]
struct FlowsQuery {
    sort: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// `/api/v1/incidents?limit=&cursor=` (`IncidentsQuery` in api/lists.rs).
#[derive(Debug, Deserialize)]
struct IncidentsQuery {
    limit: Option<usize>,
    cursor: Option<String>,
}

/// `/api/v1/incidents/{id}/pcapng?compressed=` (`PcapngQuery` in api/mod.rs).
#[derive(Debug, Deserialize)]
struct PcapngQuery {
    #[serde(default)]
    #[allow(dead_code)]
    compressed: bool,
}

/// Arbitrary bytes as the query string of the list endpoints, decoded as
/// axum's `Query` does: a sort key that parses prints back to itself and
/// an unknown one is echoed at most 32 characters long; a cursor that
/// parses prints to text that parses to the same cursor; a page of the
/// fixture table taken with the query holds at most `limit` flows, and
/// following each page's `next_cursor` (printed and parsed back, as a
/// client does) visits no flow twice and, from the start, every flow.
pub fn list_query(data: &[u8]) {
    let mut uri = b"/api/v1/flows?".to_vec();
    uri.extend_from_slice(data);
    let Ok(uri) = Uri::try_from(uri) else {
        return;
    };
    let _ = Query::<IncidentsQuery>::try_from_uri(&uri).map(|Query(q)| {
        let from = q
            .cursor
            .as_deref()
            .map(|c| c.strip_prefix('i')?.parse::<usize>().ok());
        (page_limit(q.limit), from)
    });
    let _ = Query::<PcapngQuery>::try_from_uri(&uri);
    let Ok(Query(q)) = Query::<FlowsQuery>::try_from_uri(&uri) else {
        return;
    };
    let by = match q.sort.as_deref().map(str::parse::<RankBy>).transpose() {
        Ok(by) => by,
        Err(e) => {
            assert!(
                e.0.chars().count() <= 32,
                "an unknown key is echoed bounded"
            );
            return;
        }
    };
    if let Some(by) = by {
        assert_eq!(by.to_string().parse::<RankBy>().ok(), Some(by));
    }
    let Some(limit) = page_limit(q.limit) else {
        return;
    };
    let cursor = match q.cursor.as_deref().map(str::parse::<Cursor>).transpose() {
        Ok(c) => c,
        Err(_) => return,
    };
    if let Some(c) = cursor {
        assert_eq!(reparse(&c), c.to_string(), "a parsed cursor prints back");
    }
    let table = fixture_table();
    let total = table.read(|t| t.len()).expect("table lock");
    let from_start = cursor.is_none();
    let mut seen = HashSet::new();
    let mut cursor = cursor;
    for _ in 0..=total {
        let Some((flows, next)) = flow_page(table, by, cursor, limit) else {
            return;
        };
        assert!(flows.len() <= limit);
        for f in &flows {
            assert!(seen.insert(identity(f)), "a flow listed twice: {f:?}");
        }
        let Some(next) = next else {
            if from_start {
                assert_eq!(seen.len(), total, "every flow is listed");
            }
            return;
        };
        let text = reparse(&next);
        cursor = Some(text.parse().expect("our own cursor parses"));
    }
    panic!("more pages than flows");
}

/// `limit` within 1 to [`PAGE_MAX`] (default [`PAGE_DEFAULT`]), as the
/// list endpoints take it.
fn page_limit(limit: Option<usize>) -> Option<usize> {
    match limit.unwrap_or(PAGE_DEFAULT) {
        n @ 1..=PAGE_MAX => Some(n),
        _ => None,
    }
}

/// A cursor printed, parsed back and printed again: must be the same text.
fn reparse(c: &Cursor) -> String {
    let text = c.to_string();
    let back: Cursor = match text.parse() {
        Ok(b) => b,
        Err(e) => panic!("cursor {text:?} does not parse back: {e}"),
    };
    assert_eq!(back.to_string(), text, "cursor {text:?} changes");
    text
}

/// What tells two fixture flows apart.
fn identity(f: &FlowSummary) -> String {
    format!(
        "{} {} {} {} {} {}",
        f.src, f.sport, f.dst, f.dport, f.proto, f.first_ts_ns
    )
}

/// One page as the endpoint makes it (`api::lists`); `None` for a cursor
/// of another list (the endpoint's 400).
fn flow_page(
    table: &SharedTable,
    by: Option<RankBy>,
    cursor: Option<Cursor>,
    limit: usize,
) -> Option<(Vec<FlowSummary>, Option<Cursor>)> {
    let page = crate::api::lists::flow_page(table, by, cursor, limit).ok()?;
    let next = page
        .next_cursor
        .map(|c| c.parse().expect("a cursor the API gave out parses"));
    Some((page.flows, next))
}

/// Arbitrary bytes (UTF-8, invalid sequences replaced) as `phalanx.toml`:
/// `Config::from_toml` returns a value or an error; a configuration it
/// accepts validates again, builds its rules and exemptions, and runs the
/// daemon's in-memory stages with its settings over the fixture records
/// (flow table within `max_flows`, KPI metrics, evidence history, rules,
/// exemptions, a metrics scrape).
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let cfg = match Config::from_toml(&text, "fuzz.toml") {
        Ok(c) => c,
        Err(ConfigError::Invalid { path, message }) => {
            assert_eq!(path, "fuzz.toml");
            assert!(!message.is_empty());
            return;
        }
        Err(ConfigError::Semantic(m)) => {
            assert!(!m.is_empty());
            return;
        }
        Err(e @ ConfigError::Read { .. }) => panic!("parsing text read a file: {e}"),
    };
    if let Err(e) = cfg.validate() {
        panic!("an accepted config does not validate again: {e}");
    }
    let engine = RuleEngine::new(&cfg.rules).expect("accepted rules compile");
    let mut exemptions = cfg.exemptions().expect("accepted exemptions");
    let mut table = FlowTable::new(cfg.flows.clone());
    let mut metrics = FlowMetrics::new(&cfg.metrics);
    let mut history = FlowHistory::new(cfg.history.evidence());
    for m in fixture_records() {
        history.record(m);
        table.ingest_observed(m, &mut metrics);
    }
    assert!(table.len() <= cfg.flows.max_flows);
    let mut findings = engine.evaluate(&table.snapshot(), table.now());
    exemptions.apply(&mut findings, NOW_SECS * 1_000_000_000);
    let mut registry = Registry::default();
    exemptions.register(&mut registry);
    let flows = Arc::new(SharedTable::new(table));
    KpiCollector::register(&mut registry, Arc::new(Mutex::new(metrics)), flows);
    let mut out = String::new();
    assert!(prometheus_client::encoding::text::encode(&mut out, &registry).is_ok());
}

/// Arbitrary bytes (UTF-8, invalid sequences replaced) as a custom rule's
/// condition: `expr::compile` accepts it exactly when `RuleEngine::new`
/// with it as a `[[rules.custom]]` condition does, and exactly when
/// `Config::from_toml` of such a rule does (whose error then names the
/// condition's line); a compiled condition names only known fields and
/// its rule fires on exactly the fixture flows it holds for. The same text
/// as a summary template compiles or fails with a column, and renders.
pub fn rule_expr(data: &[u8]) {
    let src = String::from_utf8_lossy(data);
    let fields = flow_fields();
    let compiled = expr::compile(&src, fields);
    if let Err(e) = &compiled {
        assert!(e.column >= 1 && e.column <= src.chars().count() + 1, "{e}");
    }
    let rules = RulesConfig {
        custom: vec![CustomRuleConfig::new(
            "fuzz",
            &src,
            Severity::Warning,
            "{packets} packets",
        )],
        ..RulesConfig::default()
    };
    let engine = RuleEngine::new(&rules);
    assert_eq!(compiled.is_ok(), engine.is_ok());
    let quoted = toml::Value::String(src.to_string()).to_string();
    let text = format!(
        "[[rules.custom]]\nname = \"fuzz\"\ncondition = {quoted}\nsummary = \"{{packets}}\"\n"
    );
    match Config::from_toml(&text, "fuzz.toml") {
        Ok(_) => assert!(compiled.is_ok(), "the config took a bad condition"),
        Err(e) => {
            assert!(
                compiled.is_err(),
                "the config refused a good condition: {e}"
            );
            assert!(e.to_string().contains("(line 3)"), "{e}");
        }
    }
    let flows = fixture_flows();
    if let (Ok(c), Ok(engine)) = (&compiled, &engine) {
        assert!(c.fields.iter().all(|f| fields.kind(f).is_some()));
        let holds = flows.iter().filter(|(_, v)| c.holds(v)).count();
        let summaries: Vec<FlowSummary> = flows.iter().map(|(f, _)| f.clone()).collect();
        let fired = engine
            .evaluate(&summaries, u64::MAX / 2)
            .iter()
            .filter(|f| f.rule == "fuzz")
            .count();
        assert_eq!(fired, holds);
    }
    match Template::compile(&src, fields) {
        Ok(t) => {
            assert!(t.fields.iter().all(|f| fields.kind(f).is_some()));
            for (_, v) in flows {
                let _ = t.render(v);
            }
        }
        Err(e) => assert!(e.column >= 1 && e.column <= src.chars().count() + 1, "{e}"),
    }
}

/// Arbitrary bytes as the `[http] token_file` (UTF-8, invalid sequences
/// replaced) and as request headers: a file that parses signs in every
/// token it lists with its name and scope; a refused line is a line of the
/// file and its message does not contain the line's token; with the
/// fixture tokens, an `Authorization` or `Cookie` header made of the input
/// lets in nobody but the owner of a token it presents.
pub fn token_file(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let path = std::path::Path::new("tokens");
    match Tokens::parse(&text, path) {
        Ok(tokens) => {
            let auth = Auth::new(Some(tokens), std::time::Duration::from_secs(60));
            for line in text.lines().map(str::trim) {
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let mut parts = line.splitn(3, ':').map(str::trim);
                let (Some(name), Some(scope), Some(token)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    panic!("accepted line {line:?} is not NAME:SCOPE:TOKEN");
                };
                let scope = if scope == "admin" {
                    Scope::Admin
                } else {
                    Scope::Read
                };
                // Only printable ASCII reaches a token through a header
                // (`HeaderValue::to_str`); the file takes others as well.
                if !token.bytes().all(|b| b.is_ascii_graphic()) {
                    continue;
                }
                let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) else {
                    continue;
                };
                let mut h = HeaderMap::new();
                h.insert(header::AUTHORIZATION, v);
                let want = Principal {
                    name: name.to_string(),
                    scope,
                };
                assert_eq!(auth.admit(&h, Scope::Read), Ok(Some(want)));
            }
        }
        Err(TokenFileError::Line { line, message, .. }) => {
            assert!(line >= 1 && line <= text.lines().count());
            let bad = text.lines().nth(line - 1).unwrap_or_default().trim();
            let parts: Vec<&str> = bad.splitn(3, ':').collect();
            if let [name, scope, token] = parts[..] {
                let token = token.trim();
                let elsewhere = name.contains(token) || scope.contains(token);
                if token.chars().count() >= MIN_TOKEN_LEN && !elsewhere {
                    assert!(!message.contains(token), "a token in an error: {message}");
                }
            }
        }
        Err(TokenFileError::Empty(_)) => {}
        Err(e @ TokenFileError::Io { .. }) => panic!("parsing text read a file: {e}"),
    }
    let auth = fixture_auth();
    for name in [header::AUTHORIZATION, header::COOKIE] {
        let Ok(v) = HeaderValue::from_bytes(data) else {
            return;
        };
        let mut h = HeaderMap::new();
        h.insert(name, v);
        if let Ok(Some(p)) = auth.admit(&h, Scope::Read) {
            let token = FIXTURE_TOKENS
                .iter()
                .find(|(n, _)| *n == p.name)
                .map(|(_, t)| *t)
                .expect("a fixture principal");
            assert!(String::from_utf8_lossy(data).contains(token));
        }
    }
}

/// Names and tokens of [`fixture_auth`].
const FIXTURE_TOKENS: [(&str, &str); 2] = [
    ("alice", "0123456789abcdef-alice"),
    ("prom", "0123456789abcdef-prom"),
];

/// API authentication with the two [`FIXTURE_TOKENS`].
fn fixture_auth() -> &'static Auth {
    static AUTH: OnceLock<Auth> = OnceLock::new();
    AUTH.get_or_init(|| {
        let text = format!(
            "{}:admin:{}\n{}:read:{}\n",
            FIXTURE_TOKENS[0].0, FIXTURE_TOKENS[0].1, FIXTURE_TOKENS[1].0, FIXTURE_TOKENS[1].1
        );
        let tokens = Tokens::parse(&text, std::path::Path::new("fixture")).expect("fixture");
        Auth::new(Some(tokens), std::time::Duration::from_secs(60))
    })
}

/// The fixture's TCP flow `10.0.0.1:40000 -> 10.0.0.2:80`.
fn fixture_key() -> FlowKey {
    let spec: crate::config::FlowSpec = "10.0.0.1:40000 -> 10.0.0.2:80"
        .parse()
        .expect("fixture flow");
    spec.key(crate::flow::Proto::TCP)
}

/// A few conversations with known content: an IPv4 upload with losses and
/// reordering, an IPv6 download with a zero window, and UDP flows of
/// different sizes; in time order.
fn fixture_records() -> &'static [PacketMeta] {
    static RECORDS: OnceLock<Vec<PacketMeta>> = OnceLock::new();
    RECORDS.get_or_init(|| {
        let up = TcpScenario {
            segments: 30,
            drop_before: vec![4],
            drop_after: vec![11],
            reorder: vec![(20, 2)],
            ..TcpScenario::default()
        };
        let down = TcpScenario {
            client: ("2001:db8::1".parse().expect("v6"), 50000),
            server: ("2001:db8::2".parse().expect("v6"), 443),
            start_ns: up.start_ns + 3_000_000,
            data: DataDir::Download,
            segments: 20,
            zero_window: Some((5, 50_000_000)),
            ..TcpScenario::default()
        };
        let mut all = tcp_conversation(&up).records;
        all.extend(tcp_conversation(&down).records);
        for port in 0..8u16 {
            for i in 0..=u64::from(port) {
                let mut m = tcp_segment(0, up.start_ns + u64::from(port) * 1_000 + i * 500_000);
                m.kind = RecordKind::Udp as u8;
                m.l4_proto = phalanx_common::ipproto::UDP;
                m.sport = 5000 + port;
                m.dport = 53;
                m.payload_len = 40 + u32::from(port);
                m.wire_len = 82 + u32::from(port);
                all.push(m);
            }
        }
        all.sort_by_key(|m| m.ts_ns);
        all
    })
}

/// The fixture records in a flow table, as the API lists read it.
fn fixture_table() -> &'static SharedTable {
    static TABLE: OnceLock<SharedTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = FlowTable::new(FlowConfig::default());
        for m in fixture_records() {
            t.ingest(m);
        }
        SharedTable::new(t)
    })
}

/// The fixture flows' summaries with their JSON reports (what custom
/// rules read).
fn fixture_flows() -> &'static [(FlowSummary, serde_json::Value)] {
    static FLOWS: OnceLock<Vec<(FlowSummary, serde_json::Value)>> = OnceLock::new();
    FLOWS.get_or_init(|| {
        let flows = fixture_table().read(|t| t.snapshot()).expect("table lock");
        flows
            .into_iter()
            .map(|f| {
                let v = serde_json::to_value(&f).expect("flow JSON");
                (f, v)
            })
            .collect()
    })
}

/// Live stitching with the shared [`KEY`] (so it keeps a peer history)
/// within `bounds`.
fn live_stitch(bounds: HistoryBounds) -> Arc<LiveStitch> {
    let cfg = StitchConfig {
        secret: String::from_utf8_lossy(KEY).into_owned(),
        hop: HOP.into(),
        ..StitchConfig::default()
    };
    let live = LiveStitch::new(&cfg, bounds, HOP, &mut Registry::default());
    Arc::new(live.expect("fixture live stitching"))
}

/// Live stitching whose peer history holds the fixture records (what peer
/// requests are answered from); never written by the targets.
fn fixture_live() -> Arc<LiveStitch> {
    static LIVE: OnceLock<Arc<LiveStitch>> = OnceLock::new();
    LIVE.get_or_init(|| {
        let live = live_stitch(HistoryConfig::default().peers());
        live.record(fixture_records());
        live
    })
    .clone()
}

/// Live stitching for [`ring_record`]'s pipeline: built once (a client
/// per input would dominate the run), with a small history that the
/// inputs share.
fn ring_live() -> Arc<LiveStitch> {
    static LIVE: OnceLock<Arc<LiveStitch>> = OnceLock::new();
    LIVE.get_or_init(|| {
        live_stitch(HistoryBounds {
            per_flow: 8,
            max_flows: 32,
        })
    })
    .clone()
}
