//! The access log, from the real service over real HTTP. Its own test binary: the global
//! tracing subscriber it installs captures everything the service writes, with no other test
//! running beside it.

use std::sync::{Arc, Mutex};

use sightline_query::QueryConfig;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

/// What the service logged.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Self;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// `GET path` over a fresh connection; the response's status.
async fn get(port: u16, path: &str, token: Option<&str>) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line")
}

#[tokio::test]
async fn every_request_is_logged_with_its_token_name_never_the_token() {
    let captured = Captured::default();
    tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_ansi(false)
        .init();
    let (first, second) = ("first-token-0123456789", "second-token-0123456789");
    let mut config = QueryConfig::default();
    config.clickhouse.url = "http://127.0.0.1:9".into();
    config.auth.tokens = Some(vec![first.into(), second.into()]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = CancellationToken::new();
    let server = tokio::spawn(sightline_query::run(
        config,
        listener,
        stop.clone().cancelled_owned(),
    ));
    assert_eq!(get(port, "/v1/replay", Some(second)).await, 200);
    assert_eq!(
        get(port, "/v1/replay", Some("wrong-token-0123456789")).await,
        401
    );
    assert_eq!(get(port, "/healthz", None).await, 200);
    stop.cancel();
    server.await.unwrap().unwrap();

    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let access: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("sightline_query::access"))
        .collect();
    assert_eq!(access.len(), 3, "{log}");
    for (line, caller, route, status) in [
        (access[0], "token-2", "/v1/replay", 200),
        (access[1], "refused", "/v1/replay", 401),
        (access[2], "anonymous", "/healthz", 200),
    ] {
        assert!(
            line.contains(caller)
                && line.contains(route)
                && line.contains(&format!("status={status}"))
                && line.contains("method=GET")
                && line.contains(" ms="),
            "{line}"
        );
    }
    assert!(
        !log.contains(second) && !log.contains("wrong-token"),
        "{log}"
    );
}
