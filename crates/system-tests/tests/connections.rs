//! Connections are a budget: a listener holds at most `http.max_connections` connections (one
//! more is refused at once, with a `503` problem, while the open ones keep working), a request
//! must arrive whole — head and body — within `http.request_read_timeout` however steadily
//! it trickles, and `http_connections_open` says how many are open.

use platform::testing::eventually;
use serde_json::json;
use std::time::{Duration, Instant};
use system_tests::{Options, TestSystem};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The tests here read a process-wide gauge: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn address(base_url: &str) -> String {
    base_url.trim_start_matches("http://").to_owned()
}

/// Reads until the server closes the connection (or `limit` passes: `None`).
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut received = Vec::new();
    let closed = tokio::time::timeout(limit, async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    closed
        .ok()
        .map(|()| String::from_utf8_lossy(&received).into_owned())
}

/// Sends `GET /health` on a kept-alive connection and reads the whole answer.
async fn health_on(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("send GET /health");
    let mut received = Vec::new();
    let mut buffer = [0u8; 1024];
    let whole = tokio::time::timeout(Duration::from_secs(5), async {
        while !received.ends_with(b"}") {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    assert!(whole.is_ok(), "no answer to GET /health");
    String::from_utf8_lossy(&received).into_owned()
}

/// `http_connections_open{listener}` as the process's `/metrics` shows it.
async fn connections_open(system: &TestSystem, listener: &str) -> Option<f64> {
    let text = reqwest::get(format!("{}/metrics", system.order.admin_url))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let prefix = format!("http_connections_open{{listener=\"{listener}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|value| value.trim().parse().ok())
}

async fn wait_for_open(system: &TestSystem, expected: f64) {
    let reached = eventually(Duration::from_secs(5), || async {
        (connections_open(system, "public").await == Some(expected)).then_some(())
    })
    .await;
    assert!(
        reached.is_some(),
        "http_connections_open{{listener=\"public\"}} should read {expected}, reads {:?}",
        connections_open(system, "public").await
    );
}

#[tokio::test]
async fn beyond_the_cap_a_connection_is_refused_at_once_and_freed_slots_serve_again() {
    let _serial = SERIAL.lock().await;
    let system = TestSystem::start(Options {
        extra: "[http]\nmax_connections = 3\n",
        ..Options::default()
    })
    .await;
    let address = address(&system.order.base_url);
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(&address).await.expect("connect");
        let answer = health_on(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
        held.push(stream);
    }

    let started = Instant::now();
    let mut over = TcpStream::connect(&address)
        .await
        .expect("the kernel accepts");
    let _ = over
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let answer = read_until_closed(&mut over, Duration::from_secs(2))
        .await
        .expect("a connection over the cap was held open instead of refused");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused only after {:?}",
        started.elapsed()
    );
    let lower = answer.to_ascii_lowercase();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    assert!(lower.contains("retry-after: "), "{answer:?}");
    assert!(
        lower.contains("content-type: application/problem+json"),
        "{answer:?}"
    );

    // The connections already open keep working.
    let answer = health_on(&mut held[0]).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    wait_for_open(&system, 3.0).await;

    // Freed slots serve again: another buyer's order goes through.
    held.truncate(1);
    wait_for_open(&system, 1.0).await;
    let response = reqwest::Client::new()
        .post(format!("{}/orders", system.order.base_url))
        .bearer_auth(system.token(8))
        .json(&json!({ "product_id": 1, "quantity": 1 }))
        .send()
        .await
        .expect("send order");
    assert_eq!(response.status(), 202);
}

#[tokio::test]
async fn a_body_trickling_under_the_piece_timeout_is_cut_off_at_the_request_deadline() {
    let _serial = SERIAL.lock().await;
    let system = TestSystem::start(Options {
        extra: "[http]\nrequest_read_timeout = \"2s\"\nbody_read_timeout = \"1s\"\n",
        ..Options::default()
    })
    .await;
    let written = || TestSystem::count(&system.order.pool, "SELECT count(*) FROM orders");
    let before = written().await;
    let body = format!("{{\"product_id\": 1, \"quantity\": 1{}}}", " ".repeat(200));
    let head = format!(
        "POST /orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        system.token(7),
        body.len()
    );
    let mut stream = TcpStream::connect(address(&system.order.base_url))
        .await
        .expect("connect");
    let started = Instant::now();
    stream.write_all(head.as_bytes()).await.expect("head");
    let (mut reader, mut writer) = stream.into_split();
    // A byte every 500 ms: each piece is well within the 1 s piece timeout; the whole body
    // would take 2 minutes.
    let trickle = tokio::spawn(async move {
        for byte in body.into_bytes() {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if writer.write_all(&[byte]).await.is_err() {
                return;
            }
        }
    });
    let mut received = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(8), async {
        let mut buffer = [0u8; 4096];
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    trickle.abort();
    let answer = String::from_utf8_lossy(&received);
    assert!(
        closed.is_ok(),
        "8 s into a body trickling a byte every 500 ms the connection is still open \
         (received {answer:?}): the request has no deadline"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(4),
        "cut off after {took:?}, not at the 2 s deadline"
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("content-type: application/problem+json"),
        "{answer:?}"
    );
    assert_eq!(written().await, before, "a cut-off request wrote something");
}
