//! Bad input, whatever the door: every body endpoint of the three services answers malformed or
//! extreme input with a 4xx problem+json and writes nothing; slow clients are disconnected;
//! each service's OpenAPI document states what the server enforces.

use proptest::prelude::*;
use serde_json::{json, Value};
use std::time::Duration;
use system_tests::{Options, TestSystem, ADMIN_TOKEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Short read timeouts, so that the slow-client tests end quickly.
const SHORT_TIMEOUTS: &str =
    "[http]\nheader_read_timeout = \"300ms\"\nbody_read_timeout = \"300ms\"\n";
/// How long a slow client may stay connected before the test fails (the timeouts are 300 ms).
const DEADLINE: Duration = Duration::from_secs(5);

/// A body endpoint: URL, whose credential, and a valid body (fields in order).
struct Door {
    url: String,
    token: String,
    fields: Vec<(&'static str, Value)>,
}

fn doors(system: &TestSystem) -> Vec<Door> {
    let (order, inventory, payment) = (
        &system.order.base_url,
        &system.inventory.base_url,
        &system.payment.base_url,
    );
    let admin = ADMIN_TOKEN.to_owned();
    vec![
        Door {
            url: format!("{order}/orders"),
            token: system.token(7),
            fields: vec![("product_id", json!(1)), ("quantity", json!(1))],
        },
        Door {
            url: format!("{inventory}/products"),
            token: admin.clone(),
            fields: vec![
                ("id", json!(2)),
                ("name", json!("second")),
                ("price_cents", json!(100)),
                ("stock", json!(5)),
            ],
        },
        Door {
            url: format!("{inventory}/products/1/restock"),
            token: admin.clone(),
            fields: vec![("units", json!(5))],
        },
        Door {
            url: format!("{payment}/accounts"),
            token: admin.clone(),
            fields: vec![("user_id", json!(8)), ("balance_cents", json!(100))],
        },
        Door {
            url: format!("{payment}/accounts/7/deposits"),
            token: admin,
            fields: vec![("cents", json!(5))],
        },
    ]
}

/// Everything a refused request could have written: row counts and sums of stock and money.
async fn written(system: &TestSystem) -> Vec<i64> {
    let mut counts = Vec::new();
    for (pool, sql) in [
        (&system.order.pool, "SELECT count(*) FROM orders"),
        (&system.order.pool, "SELECT count(*) FROM outbox"),
        (&system.order.pool, "SELECT count(*) FROM idempotency_keys"),
        (&system.inventory.pool, "SELECT count(*) FROM products"),
        (
            &system.inventory.pool,
            "SELECT coalesce(sum(stock + received), 0)::bigint FROM products",
        ),
        (&system.payment.pool, "SELECT count(*) FROM accounts"),
        (
            &system.payment.pool,
            "SELECT coalesce(sum(balance_cents + deposited_cents), 0)::bigint FROM accounts",
        ),
    ] {
        counts.push(TestSystem::count(pool, sql).await);
    }
    counts
}

/// A system with product 1 and account 7, and nothing else.
async fn seeded(options: Options) -> TestSystem {
    let system = TestSystem::start(options).await;
    system.create_product(1, 1_000, 10).await;
    system.open_account(7, 100).await;
    system
}

/// Sends raw bytes as a body and returns status, content type and body.
async fn post_raw(system: &TestSystem, door: &Door, body: Vec<u8>) -> (u16, String, Vec<u8>) {
    let response = system
        .http
        .post(&door.url)
        .bearer_auth(&door.token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("send");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = response
        .bytes()
        .await
        .map(|b| b.to_vec())
        .unwrap_or_default();
    (status, content_type, body)
}

fn is_problem(status: u16, content_type: &str, body: &[u8]) -> bool {
    let Ok(problem) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    (400..500).contains(&status)
        && content_type == "application/problem+json"
        && problem["status"] == status
        && problem["type"].is_string()
        && problem["title"].is_string()
}

/// A valid body with one field's value replaced by raw JSON text.
fn with_value(door: &Door, field: usize, raw: &str) -> String {
    let parts: Vec<String> = door
        .fields
        .iter()
        .enumerate()
        .map(|(i, (name, value))| {
            let value = if i == field {
                raw.to_owned()
            } else {
                value.to_string()
            };
            format!("\"{name}\": {value}")
        })
        .collect();
    format!("{{{}}}", parts.join(", "))
}

/// What each door gets: a defect in an otherwise valid body, named for the failure message.
fn defects(door: &Door) -> Vec<(&'static str, Vec<u8>)> {
    let valid = with_value(door, usize::MAX, "");
    let first = door.fields[0].0;
    let mut cases = vec![
        (
            "overflowing integer",
            with_value(door, 0, "9223372036854775808").into_bytes(),
        ),
        (
            "underflowing integer",
            with_value(door, 0, "-9223372036854775809").into_bytes(),
        ),
        ("huge exponent", with_value(door, 0, "1e400").into_bytes()),
        ("fraction", with_value(door, 0, "1.5").into_bytes()),
        (
            "string for a number",
            with_value(door, 0, "\"1\"").into_bytes(),
        ),
        ("null", with_value(door, 0, "null").into_bytes()),
        ("leading zero", with_value(door, 0, "01").into_bytes()),
        (
            "deep nesting",
            with_value(
                door,
                0,
                &format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000)),
            )
            .into_bytes(),
        ),
        (
            "unknown field",
            valid.replacen('{', "{\"extra\": 1, ", 1).into_bytes(),
        ),
        (
            "duplicate key",
            valid
                .replacen('{', &format!("{{\"{first}\": 1, "), 1)
                .into_bytes(),
        ),
        ("truncated", valid.as_bytes()[..valid.len() - 1].to_vec()),
        ("empty", Vec::new()),
        ("array", b"[]".to_vec()),
        ("the fields as an array", {
            let values: Vec<String> = door.fields.iter().map(|(_, v)| v.to_string()).collect();
            format!("[{}]", values.join(", ")).into_bytes()
        }),
        (
            "oversized",
            format!("{{\"pad\": \"{}\"}}", "x".repeat(64 * 1024)).into_bytes(),
        ),
    ];
    let mut invalid_utf8 = valid.clone().into_bytes();
    invalid_utf8.splice(1..1, b"\"\xff\xfe\": 1, ".iter().copied());
    cases.push(("invalid UTF-8", invalid_utf8));
    cases
}

#[tokio::test]
async fn every_door_refuses_bad_bodies_with_a_problem_and_writes_nothing() {
    let system = seeded(Options::default()).await;
    let before = written(&system).await;
    for door in doors(&system) {
        for (defect, body) in defects(&door) {
            let (status, content_type, answer) = post_raw(&system, &door, body).await;
            assert!(
                is_problem(status, &content_type, &answer),
                "{}: {defect}: {status} {content_type} {}",
                door.url,
                String::from_utf8_lossy(&answer)
            );
        }
    }
    assert_eq!(
        written(&system).await,
        before,
        "a refused request wrote something"
    );
}

/// JSON does not tell `5` from `5.0` (nor does JSON Schema's `integer`): both are the integer 5.
#[tokio::test]
async fn a_whole_number_spelled_as_a_float_is_that_integer() {
    let system = seeded(Options::default()).await;
    let door = &doors(&system)[4];
    let (status, _, answer) = post_raw(&system, door, b"{\"cents\": 5.0}".to_vec()).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    let (status, _, _) = post_raw(&system, door, b"{\"cents\": 2e1}".to_vec()).await;
    assert_eq!(status, 200);
    assert_eq!(system.balance(7).await, 125);
}

#[tokio::test]
async fn a_huge_header_is_refused_and_the_connection_closed() {
    let system = seeded(Options::default()).await;
    let address = system
        .order
        .base_url
        .trim_start_matches("http://")
        .to_owned();
    let mut stream = TcpStream::connect(&address).await.expect("connect");
    let head = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(128 * 1024)
    );
    // The server may stop reading (and close) before the whole head is sent.
    let _ = stream.write_all(head.as_bytes()).await;
    let answer = read_until_closed(&mut stream).await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "expected 431, got {answer:?}"
    );
    assert_eq!(
        TestSystem::count(&system.order.pool, "SELECT count(*) FROM orders").await,
        0
    );
}

/// Reads until the server closes the connection; panics if it does not within the deadline.
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let closed = tokio::time::timeout(DEADLINE, async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the server kept the connection open for {DEADLINE:?}; received {:?}",
        String::from_utf8_lossy(&received)
    );
    String::from_utf8_lossy(&received).into_owned()
}

#[tokio::test]
async fn a_client_that_sends_half_a_head_is_disconnected() {
    let system = seeded(Options {
        extra: SHORT_TIMEOUTS,
        ..Options::default()
    })
    .await;
    for base in [
        &system.order.base_url,
        &system.order.admin_url,
        &system.inventory.base_url,
    ] {
        let address = base.trim_start_matches("http://");
        let mut stream = TcpStream::connect(address).await.expect("connect");
        stream
            .write_all(b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Ty")
            .await
            .expect("half a head");
        let answer = read_until_closed(&mut stream).await;
        // hyper closes without an answer, or with a 408; never with a handled request.
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "{base}: {answer:?}"
        );
    }
}

#[tokio::test]
async fn a_client_that_stalls_in_the_body_gets_a_problem_and_is_disconnected() {
    let system = seeded(Options {
        extra: SHORT_TIMEOUTS,
        ..Options::default()
    })
    .await;
    let before = written(&system).await;
    let address = system
        .order
        .base_url
        .trim_start_matches("http://")
        .to_owned();
    let mut stream = TcpStream::connect(&address).await.expect("connect");
    let head = format!(
        "POST /orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 40\r\n\r\n{{\"product_id\": 1,",
        system.token(7)
    );
    stream
        .write_all(head.as_bytes())
        .await
        .expect("head and half a body");
    let answer = read_until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("content-type: application/problem+json"),
        "{answer:?}"
    );
    assert_eq!(
        written(&system).await,
        before,
        "a stalled request wrote something"
    );
}

#[tokio::test]
async fn every_service_documents_its_api_with_the_bounds_it_enforces() {
    let system = seeded(Options {
        max_quantity: 10,
        ..Options::default()
    })
    .await;
    let document = |url: String| {
        let http = system.http.clone();
        async move {
            let response = http.get(url).send().await.expect("openapi.json");
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.expect("a JSON document")
        }
    };
    let order = document(format!("{}/openapi.json", system.order.base_url)).await;
    assert_eq!(order["openapi"], "3.1.0");
    let create = &order["components"]["schemas"]["CreateOrder"];
    assert_eq!(create["additionalProperties"], false);
    assert_eq!(create["properties"]["quantity"]["minimum"], 1);
    assert_eq!(
        create["properties"]["quantity"]["maximum"], 10,
        "the deployment's cap"
    );
    assert_eq!(create["properties"]["product_id"]["minimum"], 1);
    let post = &order["paths"]["/orders"]["post"];
    assert_eq!(post["tags"], json!(["orders"]));
    assert_eq!(post["security"], json!([{"buyer": []}]));
    assert_eq!(
        order["components"]["securitySchemes"]["buyer"]["bearerFormat"],
        "JWT"
    );
    for status in ["400", "401", "409", "413", "415", "422", "503"] {
        let content = &post["responses"][status]["content"]["application/problem+json"];
        assert_eq!(
            content["schema"]["$ref"], "#/components/schemas/Problem",
            "{status}"
        );
    }
    // A 500 may be outcome-unknown: a problem with the order it is about.
    let content = &post["responses"]["500"]["content"]["application/problem+json"];
    assert_eq!(
        content["schema"]["$ref"],
        "#/components/schemas/OutcomeUnknownProblem"
    );
    let outcome_unknown = &order["components"]["schemas"]["OutcomeUnknownProblem"];
    assert!(
        outcome_unknown
            .to_string()
            .contains("#/components/schemas/Problem"),
        "{outcome_unknown}"
    );

    let inventory = document(format!("{}/openapi.json", system.inventory.base_url)).await;
    let product = &inventory["components"]["schemas"]["NewProduct"];
    assert_eq!(product["additionalProperties"], false);
    assert_eq!(product["properties"]["price_cents"]["maximum"], 100_000_000);
    assert_eq!(product["properties"]["name"]["maxLength"], 200);
    assert_eq!(
        inventory["paths"]["/products"]["post"]["security"],
        json!([{"admin": []}])
    );

    let payment = document(format!("{}/openapi.json", system.payment.base_url)).await;
    let deposit = &payment["components"]["schemas"]["Deposit"];
    assert_eq!(
        deposit["properties"]["cents"]["maximum"],
        10_000_000_000_000i64
    );

    let admin = document(format!("{}/openapi.json", system.payment.admin_url)).await;
    let list = &admin["paths"]["/admin/dead-letters"]["get"];
    assert_eq!(list["tags"], json!(["dead-letters"]));
    assert_eq!(list["security"], json!([{"admin": []}]));
}

/// Raw JSON text that no endpoint accepts for an integer field.
fn bad_number() -> impl Strategy<Value = String> {
    prop_oneof![
        // Past i64 either way.
        "[1-9][0-9]{19,40}",
        "-[1-9][0-9]{19,40}",
        // Not whole numbers.
        "-?[0-9]{1,5}\\.[0-9]{0,4}[1-9]",
        "-?[1-9][eE]-[1-9][0-9]{0,2}",
        // Whole, but past i64 (up to past f64).
        "-?[1-9](\\.[0-9]{0,3})?[eE]\\+?(19|[2-9][0-9]|[1-9][0-9]{2,3})",
        Just("NaN".to_owned()),
        Just("Infinity".to_owned()),
        Just("true".to_owned()),
        "\"[0-9]{0,8}\"",
        "\\{\\}|\\[\\]|null",
        // Not JSON.
        "0[0-9]{1,5}|0x[0-9a-f]{1,6}|\\+[0-9]{1,3}",
    ]
}

/// A body with one defect: a bad number in some field, an unknown or duplicate field, deep
/// nesting, or bytes that are not UTF-8 / not JSON.
fn malformed_body(fields: usize) -> impl Strategy<Value = (usize, BodyDefect)> {
    (
        0..fields,
        prop_oneof![
            bad_number().prop_map(BodyDefect::Number),
            "[a-z_]{1,12}".prop_map(BodyDefect::UnknownField),
            Just(BodyDefect::DuplicateField),
            (65usize..2000).prop_map(BodyDefect::Nesting),
            proptest::collection::vec(0x80u8..=0xff, 1..8).prop_map(BodyDefect::NotUtf8),
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(BodyDefect::Bytes),
        ],
    )
}

#[derive(Debug, Clone)]
enum BodyDefect {
    Number(String),
    UnknownField(String),
    DuplicateField,
    Nesting(usize),
    NotUtf8(Vec<u8>),
    Bytes(Vec<u8>),
}

fn body_with(door: &Door, field: usize, defect: &BodyDefect) -> Vec<u8> {
    let valid = with_value(door, usize::MAX, "");
    let name = door.fields[field].0;
    match defect {
        BodyDefect::Number(raw) => {
            // A bad number goes into an integer field (a quoted one is a fine product name).
            let field = if door.fields[field].1.is_string() {
                0
            } else {
                field
            };
            with_value(door, field, raw).into_bytes()
        }
        BodyDefect::UnknownField(extra) => {
            let extra = if door.fields.iter().any(|(n, _)| n == extra) {
                "zz_unknown"
            } else {
                extra
            };
            valid
                .replacen('{', &format!("{{\"{extra}\": 1, "), 1)
                .into_bytes()
        }
        BodyDefect::DuplicateField => valid
            .replacen('{', &format!("{{\"{name}\": {}, ", door.fields[field].1), 1)
            .into_bytes(),
        BodyDefect::Nesting(depth) => with_value(
            door,
            field,
            &format!("{}1{}", "[".repeat(*depth), "]".repeat(*depth)),
        )
        .into_bytes(),
        BodyDefect::NotUtf8(bytes) => {
            let mut body = format!("{{\"{name}\": \"").into_bytes();
            body.extend_from_slice(bytes);
            body.extend_from_slice(b"\"}");
            body
        }
        BodyDefect::Bytes(bytes) => {
            // Anything but a valid body: a leading byte that no JSON object starts with.
            let mut body = vec![b'#'];
            body.extend_from_slice(bytes);
            body
        }
    }
}

/// Generated malformed and extreme bodies at every door: each is a 4xx problem+json, and
/// nothing is ever written.
#[test]
fn generated_malformed_bodies_get_a_problem_and_write_nothing() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let system = runtime.block_on(seeded(Options::default()));
    let doors = doors(&system);
    let config = ProptestConfig {
        cases: 300,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let strategy = (0..doors.len()).prop_flat_map(|door| (Just(door), malformed_body(4)));
    proptest!(config, |((door, (field, defect)) in strategy)| {
        let door = &doors[door];
        let field = field % door.fields.len();
        let body = body_with(door, field, &defect);
        runtime.block_on(async {
            let before = written(&system).await;
            let (status, content_type, answer) = post_raw(&system, door, body.clone()).await;
            prop_assert!(
                is_problem(status, &content_type, &answer),
                "{} {:?}: {} {} {}", door.url, String::from_utf8_lossy(&body), status, content_type,
                String::from_utf8_lossy(&answer)
            );
            prop_assert_eq!(written(&system).await, before, "{:?} wrote something", defect);
            Ok(())
        })?;
    });
}
