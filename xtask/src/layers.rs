//! `cargo xtask layers`: the daemon's modules import only downwards.
//!
//! Reads every `crate::` and `super::` path in `phalanx-daemon/src`
//! (test code under `#[cfg(test)]` and comments left out), resolves each to
//! the module that defines the item (following a module's `pub use`
//! re-exports), and checks two things:
//!
//! - between top-level modules, every import goes to a lower layer of
//!   [`LAYERS`] (so nothing reaches up into what wires it, and there is no
//!   loop);
//! - inside a module, its submodules import each other without a loop (the
//!   module's own `mod.rs` is their shared home and may be imported by all).
//!
//! `cargo xtask test` runs it first; `cargo xtask layers --graph` prints the
//! module graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};

/// Top-level modules from the bottom up. A module may import only modules
/// on an earlier line; modules on one line may not import each other.
///
/// `flow` sits below `capture`: capture fills the flow's vocabulary (keys,
/// filter specs) and the engine never imports a packet source, so it
/// cannot know whether its records came from the ring or from a file.
pub const LAYERS: &[&[&str]] = &[
    &["clock", "sign", "url", "health", "anonymize"],
    &["flow"],
    &["capture"],
    &["rules"],
    &["metrics", "stitch"],
    &["alerting"],
    &["config"],
    &["api"],
    &["pipeline"],
    &["analyze", "daemon"],
    &["cli"],
];

/// Modules that exist for tests only (compiled with the `synth` feature):
/// anything may use them from test code, nothing from production code.
const TEST_SUPPORT: &[&str] = &["synth", "fuzz"];

/// One source file: its module path (`flow::tcp`; `""` for the crate root).
struct Source {
    module: String,
    text: String,
}

/// A resolved import: from one module to the module that defines the item.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Edge {
    /// Importing module.
    pub from: String,
    /// Defining module.
    pub to: String,
}

/// Runs the check on the daemon's sources under `root`.
pub fn run(root: &Path, graph: bool) -> Result<()> {
    let src = root.join("phalanx-daemon/src");
    let edges = edges(&src)?;
    if graph {
        print_graph(&edges);
    }
    let problems = problems(&edges);
    if !problems.is_empty() {
        bail!(
            "module layering (xtask/src/layers.rs):\n  {}",
            problems.join("\n  ")
        );
    }
    eprintln!(
        "layers: {} imports between {} modules, all downwards, no loops",
        edges.len(),
        modules_of(&edges).len()
    );
    Ok(())
}

fn modules_of(edges: &[Edge]) -> BTreeSet<&str> {
    edges
        .iter()
        .flat_map(|e| [e.from.as_str(), e.to.as_str()])
        .collect()
}

fn print_graph(edges: &[Edge]) {
    let mut top: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for e in edges {
        let (a, b) = (top_of(&e.from), top_of(&e.to));
        if a != b && !a.is_empty() {
            top.entry(a).or_default().insert(b);
        }
    }
    for (m, deps) in top {
        println!("{m} -> {}", deps.into_iter().collect::<Vec<_>>().join(", "));
    }
}

/// Every import of the crate's production code, resolved.
pub fn edges(src: &Path) -> Result<Vec<Edge>> {
    let mut sources = read_sources(src)?;
    let tests = test_modules(&sources);
    sources.retain(|s| !tests.contains(&s.module));
    let modules: BTreeSet<String> = sources.iter().map(|s| s.module.clone()).collect();
    let reexports = reexports(&sources, &modules);
    let mut out = BTreeSet::new();
    for s in &sources {
        for path in paths(&strip(&s.text), &s.module) {
            let to = resolve(&path, &modules, &reexports);
            if to != s.module {
                out.insert(Edge {
                    from: s.module.clone(),
                    to,
                });
            }
        }
    }
    Ok(out.into_iter().collect())
}

/// What is wrong with a set of edges, one line each.
pub fn problems(edges: &[Edge]) -> Vec<String> {
    let mut out = Vec::new();
    for e in edges {
        let (a, b) = (top_of(&e.from), top_of(&e.to));
        if a == b || a.is_empty() || TEST_SUPPORT.contains(&a) {
            continue;
        }
        if TEST_SUPPORT.contains(&b) {
            out.push(format!("{} uses test support {}", e.from, e.to));
            continue;
        }
        match (layer(a), layer(b)) {
            (Some(la), Some(lb)) if lb < la => {}
            (Some(_), Some(_)) => out.push(format!(
                "{} imports {}: {b} is not below {a} (LAYERS)",
                e.from, e.to
            )),
            (None, _) => out.push(format!("module {a} is not in LAYERS")),
            (_, None) => out.push(format!("module {b} is not in LAYERS")),
        }
    }
    out.extend(sibling_loops(edges));
    out.sort();
    out.dedup();
    out
}

fn top_of(module: &str) -> &str {
    module.split("::").next().unwrap_or("")
}

fn layer(top: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&top))
}

/// Loops among the submodules of one module (edges to a parent excluded).
fn sibling_loops(edges: &[Edge]) -> Vec<String> {
    let mut adj: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for e in edges {
        let parent_of_to = e.from.starts_with(&format!("{}::", e.to));
        if top_of(&e.from) == top_of(&e.to) && !parent_of_to && e.to.contains("::") {
            adj.entry(e.from.as_str())
                .or_default()
                .insert(e.to.as_str());
        }
    }
    let mut out = Vec::new();
    for &start in adj.keys() {
        if let Some(cycle) = cycle_from(start, &adj) {
            out.push(format!("import loop: {}", cycle.join(" -> ")));
        }
    }
    out
}

/// A path from `start` back to itself, if any (depth-first).
fn cycle_from<'a>(
    start: &'a str,
    adj: &BTreeMap<&'a str, BTreeSet<&'a str>>,
) -> Option<Vec<&'a str>> {
    let mut stack = vec![(start, vec![start])];
    let mut seen = BTreeSet::new();
    while let Some((node, path)) = stack.pop() {
        for &next in adj.get(node).into_iter().flatten() {
            if next == start {
                let mut p = path.clone();
                p.push(start);
                // Report each loop once: from its smallest member.
                return (path.iter().all(|&m| m >= start)).then_some(p);
            }
            if seen.insert(next) {
                let mut p = path.clone();
                p.push(next);
                stack.push((next, p));
            }
        }
    }
    None
}

/// Modules declared `#[cfg(test)] mod name;` (files of test code).
fn test_modules(sources: &[Source]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for s in sources {
        let mut lines = s.text.lines().map(str::trim);
        while let Some(line) = lines.next() {
            if line != "#[cfg(test)]" {
                continue;
            }
            let next = lines.next().unwrap_or("");
            let name = next
                .trim_start_matches("pub ")
                .strip_prefix("mod ")
                .and_then(|m| m.strip_suffix(';'));
            if let Some(name) = name {
                out.insert(join(&s.module, name));
            }
        }
    }
    out
}

fn read_sources(src: &Path) -> Result<Vec<Source>> {
    let mut files = Vec::new();
    walk(src, &mut files)?;
    files
        .into_iter()
        .filter(|f| !f.ends_with("main.rs"))
        .map(|f| {
            let rel = f.strip_prefix(src).context("source under src")?;
            let text =
                std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
            Ok(Source {
                module: module_path(rel),
                text,
            })
        })
        .collect()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    Ok(())
}

/// `flow/tcp.rs` -> `flow::tcp`, `flow/mod.rs` -> `flow`, `lib.rs` -> ``.
fn module_path(rel: &Path) -> String {
    let mut parts: Vec<String> = rel
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts.join("::")
}

/// The source without comments, string literals and `#[cfg(test)]` items.
fn strip(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let code = line.split("//").next().unwrap_or("");
        if code.trim() == "#[cfg(test)]" {
            skip_item(&mut lines);
            continue;
        }
        out.push_str(&without_strings(code));
        out.push('\n');
    }
    out
}

/// Skips the item after a `#[cfg(test)]`: one line ending in `;`, or up to
/// the brace that closes the one it opens.
fn skip_item<'a>(lines: &mut std::iter::Peekable<impl Iterator<Item = &'a str>>) {
    let mut depth = 0i32;
    let mut opened = false;
    for line in lines.by_ref() {
        let code = without_strings(line.split("//").next().unwrap_or(""));
        for c in code.chars() {
            match c {
                '{' => {
                    depth += 1;
                    opened = true;
                }
                '}' => depth -= 1,
                _ => {}
            }
        }
        let attr = code.trim_start().starts_with("#[");
        if (opened && depth <= 0) || (!opened && !attr && code.trim_end().ends_with(';')) {
            return;
        }
    }
}

fn without_strings(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut in_str = false;
    let mut escaped = false;
    for c in code.chars() {
        match (in_str, c) {
            (true, '\\') if !escaped => escaped = true,
            (true, '"') if !escaped => in_str = false,
            (true, _) => escaped = false,
            (false, '"') => in_str = true,
            (false, _) => out.push(c),
        }
    }
    out
}

/// Every `crate::`/`super::` path in code, made absolute (`flow::tcp::Dir`),
/// with `{a, b::c}` groups expanded.
fn paths(code: &str, module: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < code.len() {
        let rest = &code[i..];
        let boundary = i == 0 || !is_ident(bytes[i - 1] as char) && bytes[i - 1] != b':';
        let base = if !boundary {
            None
        } else if rest.starts_with("crate::") {
            Some((String::new(), "crate::".len()))
        } else if rest.starts_with("super::") {
            let mut parent: Vec<&str> = module.split("::").filter(|s| !s.is_empty()).collect();
            let mut n = 0;
            while code[i + n..].starts_with("super::") {
                parent.pop();
                n += "super::".len();
            }
            Some((parent.join("::"), n))
        } else {
            None
        };
        match base {
            Some((prefix, skip)) => {
                let (tree, used) = use_tree(&code[i + skip..]);
                for p in tree {
                    out.push(join(&prefix, &p));
                }
                i += skip + used.max(1);
            }
            None => i += rest.chars().next().map_or(1, char::len_utf8),
        }
    }
    out
}

fn join(prefix: &str, p: &str) -> String {
    match (prefix.is_empty(), p.is_empty()) {
        (true, _) => p.to_string(),
        (false, true) => prefix.to_string(),
        (false, false) => format!("{prefix}::{p}"),
    }
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// A path or `{...}` group at the start of `s`: the paths it names and the
/// bytes it took.
fn use_tree(s: &str) -> (Vec<String>, usize) {
    let mut head = String::new();
    let mut i = 0;
    let b = s.as_bytes();
    loop {
        while i < s.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < s.len() && b[i] == b'{' {
            let (inner, used) = group(&s[i + 1..]);
            let paths = inner.into_iter().map(|p| join(&head, &p)).collect();
            return (paths, i + 1 + used);
        }
        let start = i;
        while i < s.len() && is_ident(b[i] as char) {
            i += 1;
        }
        let ident = &s[start..i];
        if ident.is_empty() || ident == "self" {
            return (vec![head], i);
        }
        head = join(&head, ident);
        if s[i..].starts_with("::") {
            i += 2;
        } else {
            return (vec![head], i);
        }
    }
}

/// The comma-separated trees of a group up to its closing brace.
fn group(s: &str) -> (Vec<String>, usize) {
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let c = s.as_bytes()[i];
        if c == b'}' {
            return (out, i + 1);
        }
        if c == b',' || c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let (paths, used) = use_tree(&s[i..]);
        out.extend(paths);
        i += used.max(1);
        // Skip `as name` and anything else up to the next separator.
        while i < s.len() && !matches!(s.as_bytes()[i], b',' | b'}') {
            i += 1;
        }
    }
    (out, i)
}

/// `pub use` re-exports: (module, name) -> the path it stands for.
fn reexports(sources: &[Source], modules: &BTreeSet<String>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for s in sources {
        for line in strip(&s.text).lines() {
            let Some(rest) = line.trim_start().strip_prefix("pub use ") else {
                continue;
            };
            let rel = rest.trim_end_matches(';').replace("self::", "");
            let absolute: Vec<String> = if rel.starts_with("crate::") || rel.starts_with("super::")
            {
                paths(&rel, &s.module)
            } else {
                use_tree(&rel)
                    .0
                    .into_iter()
                    .filter(|p| modules.contains(&join(&s.module, top_of(p))))
                    .map(|p| join(&s.module, &p))
                    .collect()
            };
            for p in absolute {
                if let Some(name) = p.rsplit("::").next() {
                    out.insert(join(&s.module, name), p.clone());
                }
            }
        }
    }
    out
}

/// The module that defines the item a path names.
fn resolve(path: &str, modules: &BTreeSet<String>, reexports: &BTreeMap<String, String>) -> String {
    let mut path = path.to_string();
    for _ in 0..8 {
        let module = longest_module(&path, modules);
        let item = path[module.len()..].trim_start_matches("::");
        let first = item.split("::").next().unwrap_or("");
        match reexports.get(&join(&module, first)) {
            Some(target) if !first.is_empty() && *target != path => path = target.clone(),
            _ => return module,
        }
    }
    longest_module(&path, modules)
}

fn longest_module(path: &str, modules: &BTreeSet<String>) -> String {
    let parts: Vec<&str> = path.split("::").collect();
    (0..=parts.len())
        .rev()
        .map(|n| parts[..n].join("::"))
        .find(|m| modules.contains(m))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(from: &str, to: &str) -> Edge {
        Edge {
            from: from.into(),
            to: to.into(),
        }
    }

    #[test]
    fn use_groups_and_super_paths_resolve_to_absolute_modules() {
        let code = "use crate::{flow::{FlowKey, tcp::Dir}, rules};\nuse super::super::clock::now;\nlet x = crate::capture::file::open(p);";
        let got = paths(code, "alerting::delivery::retry");
        assert_eq!(
            got,
            [
                "flow::FlowKey",
                "flow::tcp::Dir",
                "rules",
                "alerting::clock::now",
                "capture::file::open"
            ]
        );
    }

    #[test]
    fn test_code_comments_and_strings_are_not_imports() {
        let code = "use crate::flow::FlowKey; // crate::api\nlet s = \"crate::daemon\";\n#[cfg(test)]\nmod tests {\n    use crate::daemon::x;\n}\n#[cfg(test)]\nuse crate::synth;\nfn f() {}\n";
        assert_eq!(paths(&strip(code), "rules"), ["flow::FlowKey"]);
    }

    #[test]
    fn upward_imports_and_sibling_loops_are_reported() {
        let good = [
            edge("rules::storm", "flow"),
            edge("flow::table", "flow::tcp"),
        ];
        assert!(problems(&good).is_empty(), "{:?}", problems(&good));
        let up = [edge("flow::table", "rules")];
        assert_eq!(problems(&up).len(), 1, "flow may not import rules");
        let same_layer = [edge("stitch::live", "metrics::kpi")];
        assert_eq!(
            problems(&same_layer).len(),
            1,
            "one layer's modules are peers"
        );
        let looped = [
            edge("flow::table", "flow::tcp"),
            edge("flow::tcp", "flow::table"),
        ];
        assert_eq!(
            problems(&looped),
            ["import loop: flow::table -> flow::tcp -> flow::table"]
        );
        let child_to_parent = [edge("rules::storm", "rules"), edge("rules", "rules::storm")];
        assert!(problems(&child_to_parent).is_empty());
    }

    #[test]
    fn reexports_lead_to_the_defining_module() {
        let modules: BTreeSet<String> = ["flow", "flow::key", "rules"]
            .into_iter()
            .map(String::from)
            .collect();
        let sources = [Source {
            module: "flow".into(),
            text: "pub mod key;\npub use key::FlowKey;\n".into(),
        }];
        let re = reexports(&sources, &modules);
        assert_eq!(resolve("flow::FlowKey", &modules, &re), "flow::key");
        assert_eq!(resolve("flow::Other", &modules, &re), "flow");
    }
}
