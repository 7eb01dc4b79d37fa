//! The store crate owns the ClickHouse contract: this test holds the rest of the workspace to
//! it. Outside `store/`, no SQL text in a non-test crate names a ClickHouse table or view
//! (SQL reaches them through `sightline_store::tables`), and the query service links
//! neither the ingest service nor a Kubernetes client.
//!
//! Out of scope, as they are not ClickHouse: the edge agent's own DuckDB buffer
//! (`edge-agent/src/buffer/`), the `tests` crate, `#[cfg(test)]` modules, comments, and
//! string literals that are not SQL (JSON field names such as `"events"`).

use std::path::{Path, PathBuf};

use sightline_store::tables;

/// The SQL words after which a table's name comes (`FROM t`, `JOIN t`, `INSERT INTO t`,
/// `ALTER TABLE t`, `CREATE TABLE IF NOT EXISTS t`, `CREATE VIEW v TO t`, `OPTIMIZE TABLE t`).
const BEFORE_A_TABLE: [&str; 6] = ["FROM", "JOIN", "INTO", "TABLE", "EXISTS", "TO"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the store crate sits in the workspace")
        .to_path_buf()
}

/// The string literals of Rust source, without comments and without the `#[cfg(test)]`
/// module at the end of a file (the house layout).
fn string_literals(source: &str) -> Vec<String> {
    let code = match source.find("#[cfg(test)]\nmod tests") {
        Some(at) => &source[..at],
        None => source,
    };
    let bytes = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            // A char literal such as '"' or '\'' (lifetimes have no closing quote nearby).
            b'\'' if bytes.get(i + 2) == Some(&b'\'') => i += 3,
            b'\'' if bytes.get(i + 1) == Some(&b'\\') && bytes.get(i + 3) == Some(&b'\'') => i += 4,
            b'r' if matches!(bytes.get(i + 1), Some(b'"' | b'#'))
                && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_')) =>
            {
                let hashes = bytes[i + 1..].iter().take_while(|&&b| b == b'#').count();
                let start = i + 1 + hashes + 1;
                if bytes.get(start - 1) != Some(&b'"') {
                    i += 1;
                    continue;
                }
                let close: String = std::iter::once('"')
                    .chain(std::iter::repeat_n('#', hashes))
                    .collect();
                let end = code[start..]
                    .find(&close)
                    .map_or(bytes.len(), |e| start + e);
                out.push(code[start..end].to_owned());
                i = end + close.len();
            }
            b'"' => {
                let start = i + 1;
                let mut j = start;
                while j < bytes.len() && bytes[j] != b'"' {
                    j += if bytes[j] == b'\\' { 2 } else { 1 };
                }
                out.push(code[start..j.min(bytes.len())].to_owned());
                i = j + 1;
            }
            _ => i += 1,
        }
    }
    out
}

/// The tables a piece of SQL text names where SQL names a table: right after one of
/// [`BEFORE_A_TABLE`], bare or qualified with a database (`` `db`.events ``). A column that
/// shares a table's name (`detections_hourly.detections`) is not a table.
fn tables_named(sql: &str) -> Vec<&'static str> {
    let tokens: Vec<&str> = sql
        .split(|c: char| c.is_whitespace() || "(),;".contains(c))
        .filter(|t| !t.is_empty())
        .collect();
    tokens
        .windows(2)
        .filter(|pair| BEFORE_A_TABLE.contains(&pair[0]))
        .filter_map(|pair| {
            let name = pair[1].rsplit('.').next()?.trim_matches('`');
            tables::ALL.iter().copied().find(|table| *table == name)
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn only_the_store_crate_names_clickhouse_tables_in_sql() {
    let root = workspace();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&root)
        .expect("read the workspace")
        .flatten()
    {
        let name = entry.file_name();
        let crate_dir = entry.path();
        if name == "store" || name == "tests" || !crate_dir.join("Cargo.toml").is_file() {
            continue;
        }
        rust_files(&crate_dir.join("src"), &mut files);
    }
    let edge_buffer = root.join("edge-agent/src/buffer");
    files.retain(|f| !f.starts_with(&edge_buffer));
    assert!(
        files
            .iter()
            .any(|f| f.ends_with("query-service/src/store.rs")),
        "the scan must cover the query service ({} files found)",
        files.len()
    );
    let mut offences = Vec::new();
    for file in &files {
        let source = std::fs::read_to_string(file).expect("read a source file");
        for literal in string_literals(&source) {
            let named = tables_named(&literal);
            if !named.is_empty() {
                offences.push(format!(
                    "{}: {named:?} in {literal:?}",
                    file.strip_prefix(&root).unwrap_or(file).display()
                ));
            }
        }
    }
    assert!(
        offences.is_empty(),
        "SQL outside the store crate names ClickHouse tables; use sightline_store::tables:\n{}",
        offences.join("\n")
    );
}

#[test]
fn the_scan_finds_a_table_named_in_sql_and_nothing_else() {
    let source = r####"
        let a = "SELECT count() FROM detections WHERE 1";
        let b = format!("SELECT countMerge(detections) AS detections FROM {DETECTIONS_HOURLY}");
        let c = json!({"events": 1});
        // "SELECT * FROM events" in a comment
        let d = r#"ALTER TABLE `db`.events_by_id DELETE WHERE 1"#;
        let e = '"'; let f = "INSERT INTO edge_heartbeats_archive VALUES";
        let g = "SELECT 1 FROM sightline.edge_heartbeats";
#[cfg(test)]
mod tests { const T: &str = "SELECT * FROM events"; }
    "####;
    let named: Vec<_> = string_literals(source)
        .iter()
        .flat_map(|l| tables_named(l))
        .collect();
    assert_eq!(named, ["detections", "events_by_id", "edge_heartbeats"]);
}

#[test]
fn the_query_service_links_neither_ingest_nor_kubernetes() {
    let output = std::process::Command::new(env!("CARGO"))
        .args([
            "tree",
            "--locked",
            "--offline",
            "-p",
            "sightline-query",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .current_dir(workspace())
        .output()
        .expect("run cargo tree");
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tree = String::from_utf8_lossy(&output.stdout);
    assert!(tree.contains("sightline-store"), "{tree}");
    for forbidden in ["sightline-ingest", "kube ", "kube-client", "k8s-openapi"] {
        assert!(
            !tree.lines().any(|l| l.starts_with(forbidden)),
            "the query service links {forbidden}:\n{tree}"
        );
    }
}

/// The top-level modules of `crate_dir/src` each file's code (comments, its test module and
/// test-only `tests.rs` files left out) refers to through `crate::`.
fn module_imports(crate_dir: &Path) -> std::collections::BTreeMap<String, Vec<String>> {
    let src = crate_dir.join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for file in files {
        let relative = file.strip_prefix(&src).expect("under src");
        let module = relative
            .iter()
            .next()
            .and_then(|m| m.to_str())
            .unwrap_or_default()
            .trim_end_matches(".rs")
            .to_owned();
        if module == "lib" || module == "main" || file.ends_with("tests.rs") {
            continue;
        }
        let source = std::fs::read_to_string(&file).expect("read a source file");
        let code = source
            .split("#[cfg(test)]\nmod tests")
            .next()
            .unwrap_or_default();
        // One line of code without comments, so `use crate::{...}` groups that rustfmt
        // spreads over lines read as one.
        let code: String = code
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join(" ");
        let mut refers = Vec::new();
        for (at, _) in code.match_indices("crate::") {
            refers.extend(
                first_segments(&code[at + "crate::".len()..])
                    .into_iter()
                    .filter(|n| *n != module && !n.is_empty())
                    .filter(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
                    .map(str::to_owned),
            );
        }
        let entry = graph.entry(module).or_default();
        entry.extend(refers);
        entry.sort();
        entry.dedup();
    }
    graph
}

/// The first path segment of what follows `crate::`: `a` of `a::B`, and `a`, `c` of
/// `{a::{B, C}, c}` (top-level items of a group only).
fn first_segments(rest: &str) -> Vec<&str> {
    let ident = |s: &str| -> usize {
        s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(s.len())
    };
    let Some(group) = rest.strip_prefix('{') else {
        return vec![&rest[..ident(rest)]];
    };
    let mut out = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                let item = group[start..i].trim();
                out.push(&item[..ident(item)]);
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                let item = group[start..i].trim();
                out.push(&item[..ident(item)]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out
}

/// A cycle in `graph`, if there is one, as the modules along it.
fn find_cycle(graph: &std::collections::BTreeMap<String, Vec<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &std::collections::BTreeMap<String, Vec<String>>,
        path: &mut Vec<String>,
        done: &mut std::collections::BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = std::collections::BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn every_crates_modules_import_each_other_without_cycles() {
    for krate in [
        "shared",
        "store",
        "runtime",
        "ingest-service",
        "query-service",
        "edge-agent",
    ] {
        let graph = module_imports(&workspace().join(krate));
        assert!(graph.len() > 1 || krate == "runtime", "{krate}: {graph:?}");
        assert_eq!(find_cycle(&graph), None, "a module cycle in {krate}");
    }
    // The scan sees the imports that are there.
    let ingest = module_imports(&workspace().join("ingest-service"));
    for wired in ["consumer", "writer", "backlog", "leader", "nats"] {
        assert!(ingest["service"].iter().any(|m| m == wired), "{ingest:?}");
    }
    let edge = module_imports(&workspace().join("edge-agent"));
    for wired in ["buffer", "camera", "config", "publisher", "status"] {
        assert!(edge["agent"].iter().any(|m| m == wired), "{edge:?}");
    }
    // The settings types live with what they configure; `config` builds them.
    assert!(edge["config"].iter().any(|m| m == "buffer"), "{edge:?}");
    assert_eq!(
        first_segments("{backlog::{self, AckFloor},\n config::IngestConfig, writer};"),
        ["backlog", "config", "writer"]
    );
    assert_eq!(first_segments("metrics::Metrics;"), ["metrics"]);
    let mut cyclic = std::collections::BTreeMap::new();
    cyclic.insert("a".to_owned(), vec!["b".to_owned()]);
    cyclic.insert("b".to_owned(), vec!["c".to_owned()]);
    cyclic.insert("c".to_owned(), vec!["a".to_owned()]);
    assert_eq!(
        find_cycle(&cyclic),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}
