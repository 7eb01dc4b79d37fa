//! Bearer tokens guard the API but not the probes.

use sightline_tests::Stack;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_guard_the_api_but_not_probes() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    const TOKEN: &str = "s3cret-token-0123456789";
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("tokens");
    std::fs::write(&file, format!("# team\n{TOKEN}\n"))?;
    let guarded = stack
        .start_query(|c| {
            c.auth.token_file = Some(file.display().to_string());
        })
        .await?;
    let no_replay = stack.start_query(|c| c.replay.enabled = false).await?;
    let http = &stack.http;
    for path in [
        "/v1/events",
        "/v1/cameras",
        "/v1/stats",
        "/v1/events/export",
        "/v1/replay",
    ] {
        let response = http.get(format!("{guarded}{path}")).send().await?;
        assert_eq!(response.status(), 401, "{path}");
        assert_eq!(
            response
                .headers()
                .get("www-authenticate")
                .map(|v| v.as_bytes()),
            Some(&b"Bearer"[..])
        );
        let wrong = http
            .get(format!("{guarded}{path}"))
            .bearer_auth("s3cret-token-0123456788")
            .send()
            .await?;
        assert_eq!(wrong.status(), 401, "{path}");
        let right = http
            .get(format!("{guarded}{path}"))
            .bearer_auth(TOKEN)
            .send()
            .await?;
        assert_eq!(right.status(), 200, "{path}");
        // Auth off: the same route answers without a token.
        assert_eq!(
            http.get(format!("{}{path}", stack.api))
                .send()
                .await?
                .status(),
            200,
            "{path}"
        );
    }
    for open in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        assert_eq!(
            http.get(format!("{guarded}{open}")).send().await?.status(),
            200,
            "{open}"
        );
    }
    // Replay switched off: 403, with the JSON error body like every error; so is a 405.
    let response = http
        .post(format!(
            "{no_replay}/v1/replay?subject=replay.x&since=0&until=1"
        ))
        .send()
        .await?;
    assert_eq!(response.status(), 403);
    let body: serde_json::Value = response.json().await?;
    assert_eq!(body["error"]["code"], "forbidden", "{body}");
    let response = http
        .delete(format!("{}/v1/events", stack.api))
        .send()
        .await?;
    assert_eq!(response.status(), 405);
    let body: serde_json::Value = response.json().await?;
    assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");

    // Named clients get what their scopes allow: a reader reads, and is refused exports
    // and replays with 403 naming the missing scope; an exporter exports only.
    let dir = tempfile::tempdir()?;
    let reader_file = dir.path().join("grafana");
    std::fs::write(&reader_file, "reader-token-0123456789\n")?;
    let scoped = stack
        .start_query(|c| {
            c.auth.clients = vec![
                sightline_query::ClientConfig {
                    name: "grafana".into(),
                    scopes: vec![sightline_query::Scope::Read],
                    token: None,
                    token_file: Some(reader_file.display().to_string()),
                },
                sightline_query::ClientConfig {
                    name: "nightly-export".into(),
                    scopes: vec![sightline_query::Scope::Export],
                    token: Some("export-token-0123456789".into()),
                    token_file: None,
                },
            ];
        })
        .await?;
    for (token, path, status) in [
        ("reader-token-0123456789", "/v1/events", 200),
        ("reader-token-0123456789", "/v1/stats", 200),
        ("reader-token-0123456789", "/v1/events/export", 403),
        ("reader-token-0123456789", "/v1/replay", 403),
        ("export-token-0123456789", "/v1/events/export", 200),
        ("export-token-0123456789", "/v1/events", 403),
    ] {
        let response = stack
            .http
            .get(format!("{scoped}{path}"))
            .bearer_auth(token)
            .send()
            .await?;
        assert_eq!(response.status(), status, "{token} {path}");
        if status == 403 {
            let body: serde_json::Value = response.json().await?;
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains("scope"), "{message}");
        }
    }

    // The query service's ClickHouse user really is read-only.
    let denied = stack
        .clickhouse
        .query_as(
            sightline_tests::stack::READER,
            "sightline",
            "INSERT INTO events (event_id) VALUES (generateUUIDv4())",
        )
        .await;
    let error = denied.expect_err("the reader inserted a row");
    assert!(error.to_string().contains("readonly"), "{error:#}");
    stack.stop().await
}
