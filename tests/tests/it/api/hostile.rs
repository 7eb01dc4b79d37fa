//! Hostile parameters never cause a server error: random values for every parameter.

use rand::Rng as _;
use sightline_query::openapi::ENDPOINTS;
use sightline_query::params::Kind;
use sightline_tests::Stack;

use crate::known_events;

/// Values nobody should send.
const HOSTILE: &[&str] = &[
    "",
    "0",
    "-1",
    "1e400",
    "NaN",
    "inf",
    "-0",
    "99999999999999999999999999",
    "18446744073709551616",
    "4294967296000",
    "' OR 1=1 --",
    "x'); DROP TABLE events; --",
    "%00",
    "\u{0}",
    "../../etc/passwd",
    "😀😀😀",
    "ü",
    "a,b,,c",
    ",",
    "true",
    "oldest",
    "csv",
    "1d",
    "camera,label",
    "replay.",
    "replay.x",
    "replay.x.>",
    "replay.*",
    "2026-13-45T99:99:99Z",
    "2026-11-22T00:00:00Z",
    "1795000000000",
    "Europe/Berlin",
    "Nowhere/Atlantis",
    "UTC",
    "0190b1d2-0000-7000-8000-000000000000",
];

fn random_value(rng: &mut impl rand::Rng) -> String {
    match rng.random_range(0..4) {
        0 => HOSTILE[rng.random_range(0..HOSTILE.len())].to_owned(),
        1 => (0..rng.random_range(0..300))
            .map(|_| rng.random::<char>())
            .collect(),
        2 => rng.random::<i128>().to_string(),
        _ => "x".repeat(rng.random_range(0..20_000)),
    }
}

/// Percent-encodes every byte but the unreserved ones.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_parameters_never_cause_a_server_error() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    stack
        .insert_direct(&known_events("edge-f", "fuzz", 50))
        .await?;
    let mut rng = rand::rng();
    let mut requests = 0;
    let send = async |method: &str, path: String| -> anyhow::Result<(u16, String)> {
        let url = format!("{}{path}", stack.api);
        let request = if method == "post" {
            stack.http.post(url)
        } else if method == "delete" {
            stack.http.delete(url)
        } else {
            stack.http.get(url)
        };
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        Ok((status, text))
    };
    for e in ENDPOINTS {
        let path = e
            .path
            .replace("{id}", "0190b1d2-0000-7000-8000-000000000000");
        // The route exists with its method: no "no such route", no 405.
        let (status, body) = send(e.method, path.clone()).await?;
        assert!(
            status != 405 && !body.contains("no such route"),
            "{} {}: {status} {body}",
            e.method,
            e.path
        );
        let params: Vec<_> = e.query.iter().flat_map(|g| g.iter()).collect();
        for p in &params {
            for value in HOSTILE {
                let (status, body) =
                    send(e.method, format!("{path}?{}={}", p.name, encode(value))).await?;
                requests += 1;
                assert!(
                    status < 500,
                    "{} {path}?{}={value:?}: {status} {body}",
                    e.method,
                    p.name
                );
                if status == 400 && !body.contains("\"parameter\"") {
                    panic!(
                        "{} {path}?{}={value:?}: 400 without a parameter: {body}",
                        e.method, p.name
                    );
                }
            }
        }
        // Random combinations of the endpoint's own parameters.
        for _ in 0..40 {
            let query: Vec<String> = (0..rng.random_range(1..5))
                .filter(|_| !params.is_empty())
                .map(|_| {
                    let p = params[rng.random_range(0..params.len())];
                    let value = if rng.random_bool(0.5) && matches!(p.kind, Kind::Choice(_)) {
                        match p.kind {
                            Kind::Choice(c) => c[rng.random_range(0..c.len())].to_owned(),
                            _ => String::new(),
                        }
                    } else {
                        random_value(&mut rng)
                    };
                    format!("{}={}", p.name, encode(&value))
                })
                .collect();
            let (status, body) = send(e.method, format!("{path}?{}", query.join("&"))).await?;
            requests += 1;
            assert!(
                status < 500,
                "{} {path}?{}: {status} {body}",
                e.method,
                query.join("&")
            );
        }
        // Hostile path ids.
        if e.path.contains("{id}") {
            for value in HOSTILE.iter().filter(|v| !v.is_empty()) {
                let (status, body) = send(e.method, e.path.replace("{id}", &encode(value))).await?;
                requests += 1;
                assert!(status < 500, "{} {}: {status} {body}", e.method, e.path);
            }
        }
    }
    println!("{requests} hostile requests, no 5xx");
    // Still healthy afterwards.
    let (status, body) = stack.get("/v1/events?camera=fuzz&limit=100").await?;
    assert_eq!((status, body["count"].as_u64()), (200, Some(50)));
    stack.stop().await
}
