//! The Grafana dashboard and the alert rules against the real metrics: every `sightline_*`
//! series they query is one the three binaries register, and every label they group or
//! filter by is one that series carries. The registries are the services' own
//! (`Metrics::new`), with one child made in each labelled family so its labels show.

use std::collections::{BTreeMap, BTreeSet};

use prometheus_client::registry::Registry;

/// Metric families by name, with the label names their samples carry.
type Families = BTreeMap<String, BTreeSet<String>>;

/// Families from `# TYPE name kind` lines, with the label names their samples carry.
fn families(text: &str) -> Families {
    let mut out: Families = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| Some((l.split_whitespace().next()?.to_owned(), BTreeSet::new())))
        .collect();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, rest)) = line.split_once('{') else {
            continue;
        };
        let Some(family) = family_of(series, &out).map(str::to_owned) else {
            continue;
        };
        let labels = rest.split('}').next().unwrap_or_default();
        let names = labels
            .split(',')
            .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.to_owned()));
        out.entry(family).or_default().extend(names);
    }
    out
}

/// The names of the samples in an exposition (what Prometheus stores and PromQL names:
/// `x_total` for a counter `x`, `x_bucket`, `x_sum`, `x_count` for a histogram).
fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The family a series name belongs to (`x_total` -> `x` for counters, `x_bucket` -> `x`).
fn family_of<'a, V>(series: &'a str, known: &BTreeMap<String, V>) -> Option<&'a str> {
    if known.contains_key(series) {
        return Some(series);
    }
    ["_total", "_bucket", "_sum", "_count", "_created"]
        .iter()
        .filter_map(|suffix| series.strip_suffix(suffix))
        .find(|base| known.contains_key(*base))
}

/// `sightline_*` names in a PromQL expression.
fn series_in(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("sightline_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

/// Label names an expression groups by (`by (a, b)`) or matches on (`{a="x"}`).
fn labels_in(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (open, close) in [("by (", ')'), ("{", '}')] {
        for part in expr.split(open).skip(1) {
            let inner = part.split(close).next().unwrap_or_default();
            for item in inner.split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        }
    }
    out
}

/// Every family of the three binaries, as their `/metrics` would show it, with the label
/// names of its samples; and the samples' names.
fn exported() -> anyhow::Result<(Families, BTreeSet<String>)> {
    use sightline_edge_agent::metrics::{CameraLabel, DropReason};
    use sightline_ingest::metrics::{DeadLetterReason, InsertOutcome, ReasonLabel};
    use sightline_query::metrics::{Route, RouteStatus};

    let mut registry = Registry::default();
    let edge = sightline_edge_agent::metrics::Metrics::new(&mut registry);
    edge.dropped(DropReason::Invalid, 0);
    edge.refused(DropReason::StorageFull, 0);
    let _ = edge.snapshot_uploads_dropped.get_or_create(
        &sightline_edge_agent::metrics::UploadDropLabel {
            reason: sightline_edge_agent::metrics::UploadDrop::Rotated,
        },
    );
    let camera = CameraLabel {
        camera: "gate".into(),
    };
    let c = &edge.cameras;
    for family in [
        &c.frames_captured,
        &c.frames_processed,
        &c.frames_skipped,
        &c.errors,
        &c.detect_errors,
        &c.events_suppressed,
        &c.snapshots_written,
        &c.snapshot_errors,
    ] {
        let _ = family.get_or_create(&camera);
    }
    let _ = c.fps.get_or_create(&camera);
    let _ = c.up.get_or_create(&camera);
    let _ = c.inference_seconds.get_or_create(&camera);
    let _ = c.capture_to_buffer_seconds.get_or_create(&camera);
    let ingest = sightline_ingest::metrics::Metrics::new(&mut registry);
    ingest.insert(InsertOutcome::Ok);
    let _ = ingest.dead_letters.get_or_create(&ReasonLabel {
        reason: DeadLetterReason::Decode,
    });
    let query = sightline_query::metrics::Metrics::new(&mut registry);
    let route = "/v1/events".to_owned();
    let _ = query.requests.get_or_create(&RouteStatus {
        route: route.clone(),
        status: 200,
    });
    let _ = query.latency.get_or_create(&Route {
        route: route.clone(),
    });
    let _ = query.events_returned.get_or_create(&Route { route });
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    // The alert on failed inserts matches `outcome!="Ok"`.
    assert!(
        text.contains(r#"sightline_ingest_inserts_total{outcome="Ok"}"#),
        "{text}"
    );
    Ok((families(&text), sample_names(&text)))
}

#[test]
fn the_dashboard_and_alerts_query_metrics_that_exist() -> anyhow::Result<()> {
    let (known, samples) = exported()?;
    assert!(known.len() > 45, "{known:?}");
    assert_eq!(
        known["sightline_ingest_inserts"],
        BTreeSet::from(["outcome".to_owned()])
    );

    let repo = crate::repo();
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        repo.join("deploy/monitoring/grafana-dashboard.json"),
    )?)?;
    let mut exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    let panels = exprs.len();
    assert!(panels >= 14, "{panels} dashboard queries");
    let alerts = std::fs::read_to_string(repo.join("deploy/monitoring/alerts.yaml"))?;
    exprs.extend(
        alerts
            .lines()
            .filter_map(|l| l.trim().strip_prefix("expr: "))
            .map(str::to_owned),
    );
    assert!(exprs.len() >= panels + 9, "alert expressions not found");

    // Labels every series has once scraped, plus the histogram bucket label.
    let scrape = ["instance", "job", "le"];
    for expr in &exprs {
        let mut carried: BTreeSet<String> = scrape.iter().map(|s| s.to_string()).collect();
        for series in series_in(expr) {
            // A counter queried without `_total` names nothing Prometheus stores.
            assert!(
                samples.contains(&series),
                "{series} (in `{expr}`) is not a series the binaries export"
            );
            let family = family_of(&series, &known)
                .unwrap_or_else(|| panic!("{series} (in `{expr}`) is not exported"));
            carried.extend(known[family].iter().cloned());
        }
        for label in labels_in(expr) {
            assert!(
                carried.contains(&label),
                "`{expr}`: no series in it has the label {label}"
            );
        }
    }
    Ok(())
}
