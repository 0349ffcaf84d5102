//! The admin listener under bad input: every route refuses strangers, bodies and headers are
//! bounded in size and time, no path reaches a file, forms need their CSRF token, sign-ins
//! are rate-limited, and the cookies carry the right flags.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{set_cookie_line, Console, OPERATOR, PASSWORD};
use telework_relay::admin::{Access, AdminOptions, ROUTES};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A concrete path for a route pattern.
fn concrete(path: &str) -> String {
    path.replace("{id}", "pc-1")
        .replace("{node}", "node-2")
        .replace("{file}", "console.css")
}

#[tokio::test]
async fn every_route_refuses_unauthenticated_requests_except_the_public_ones() {
    let console = Console::start().await;
    for route in ROUTES {
        let url = console.url(&concrete(route.path));
        let method = reqwest::Method::from_bytes(route.method.as_bytes()).unwrap();
        let response = console.http.request(method, &url).send().await.unwrap();
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_owned());
        match route.access {
            Access::Public => assert!(
                status != 401 && location.as_deref() != Some("/signin"),
                "{} {}: public, got {status}",
                route.method,
                route.path
            ),
            Access::Page => assert!(
                status == 303 && location.as_deref() == Some("/signin"),
                "{} {}: sent to sign in, got {status} {location:?}",
                route.method,
                route.path
            ),
            Access::Api => {
                assert_eq!(status, 401, "{} {}", route.method, route.path);
                let body: serde_json::Value = response.json().await.unwrap();
                assert!(body["error"].is_string());
            }
        }
    }
    // A wrong session cookie or API token is no better than none.
    let response = console
        .http
        .get(console.url("/api/v1/machines"))
        .header("cookie", "telework_admin=00")
        .bearer_auth("twa1-guess")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let metrics = console
        .http
        .get(console.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(metrics
        .text()
        .await
        .unwrap()
        .contains("telework_sessions_active"));
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let console = Console::start().await;
    let big = "x".repeat(64 * 1024);
    for path in ["/signin", "/tokens", "/api/v1/tokens"] {
        let response = console
            .http
            .post(console.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(big.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 413, "{path}");
    }
    // Signed in, too, and as a chunked body that does not say its length.
    let signed = console.sign_in().await;
    let chunks =
        futures_util::stream::iter((0..64).map(|_| Ok::<_, std::io::Error>(vec![b'a'; 1024])));
    let response = console
        .http
        .post(console.url("/tokens"))
        .header("cookie", &signed.cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
}

/// Reads until the server closes; returns what it sent and how long that took.
async fn until_closed(mut tcp: TcpStream) -> (String, Duration) {
    let started = Instant::now();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut got)).await;
    (
        String::from_utf8_lossy(&got).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test]
async fn slow_clients_are_cut_off() {
    let console = Console::start_with(AdminOptions {
        header_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        ..AdminOptions::default()
    })
    .await;
    // Half a header, then nothing.
    let mut tcp = TcpStream::connect(console.addr).await.unwrap();
    tcp.write_all(b"GET /signin HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let (_, took) = until_closed(tcp).await;
    assert!(
        took < Duration::from_secs(4),
        "half a header: cut after {took:?}"
    );
    // Nothing at all.
    let tcp = TcpStream::connect(console.addr).await.unwrap();
    let (_, took) = until_closed(tcp).await;
    assert!(took < Duration::from_secs(4), "silent: cut after {took:?}");
    // A whole header, then a body that never comes.
    let mut tcp = TcpStream::connect(console.addr).await.unwrap();
    tcp.write_all(
        b"POST /signin HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nname=",
    )
    .await
    .unwrap();
    let (reply, took) = until_closed(tcp).await;
    assert!(
        took < Duration::from_secs(5),
        "slow body: cut after {took:?}"
    );
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 408"),
        "{reply}"
    );
}

#[tokio::test]
async fn no_path_reaches_a_file() {
    let console = Console::start().await;
    for path in [
        "/static/../../etc/passwd",
        "/static/..%2f..%2f..%2fetc%2fpasswd",
        "/static/%2e%2e/%2e%2e/etc/passwd",
        "/static/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/static/..%252f..%252fetc%252fpasswd",
        "/static//etc/passwd",
        "/static/..\\..\\etc\\passwd",
        "/static/console.css/../../../etc/passwd",
        "/../../etc/passwd",
    ] {
        let mut tcp = TcpStream::connect(console.addr).await.unwrap();
        tcp.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let (reply, _) = until_closed(tcp).await;
        let status = reply.split(' ').nth(1).unwrap_or("");
        assert!(status == "404" || status == "400", "{path}: {reply}");
        assert!(!reply.contains("root:"), "{path}: {reply}");
    }
    let css = console
        .http
        .get(console.url("/static/console.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(css.status(), 200);
}

#[tokio::test]
async fn posts_without_the_csrf_token_are_refused() {
    let console = Console::start().await;
    let signed = console.sign_in().await;
    for body in [
        vec![("uses", "1"), ("hours", "1")],
        vec![("uses", "1"), ("hours", "1"), ("csrf", "0000")],
    ] {
        let response = console
            .http
            .post(console.url("/tokens"))
            .header("cookie", &signed.cookie)
            .form(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{body:?}");
    }
    let response = console
        .http
        .post(console.url("/api/v1/tokens"))
        .header("cookie", &signed.cookie)
        .json(&serde_json::json!({"uses": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        403,
        "API with the cookie but no CSRF header"
    );
    assert!(console
        .relay
        .relay
        .registry
        .enrolment_tokens()
        .await
        .unwrap()
        .is_empty());
    // With the token, both work.
    let response = console
        .http
        .post(console.url("/tokens"))
        .header("cookie", &signed.cookie)
        .form(&[("uses", "1"), ("hours", "1"), ("csrf", &signed.csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = console
        .http
        .post(console.url("/api/v1/tokens"))
        .header("cookie", &signed.cookie)
        .header("x-csrf-token", &signed.csrf)
        .json(&serde_json::json!({"uses": 2, "hours": 1, "label": "api"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let created: serde_json::Value = response.json().await.unwrap();
    assert!(created["token"].as_str().unwrap().starts_with("tw1-"));
    assert_eq!(
        console
            .relay
            .relay
            .registry
            .enrolment_tokens()
            .await
            .unwrap()
            .len(),
        2
    );
    // The sign-in form needs its own token too.
    let response = console
        .http
        .post(console.url("/signin"))
        .form(&[("name", OPERATOR), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
}

#[tokio::test]
async fn failed_sign_ins_are_rate_limited_and_say_the_same_for_any_mistake() {
    let console = Console::start().await;
    let wrong_password = console.try_sign_in(OPERATOR, "wrong horse battery").await;
    assert_eq!(wrong_password.status(), 401);
    let wrong_password = wrong_password.text().await.unwrap();
    let unknown_user = console.try_sign_in("mallory", PASSWORD).await;
    assert_eq!(unknown_user.status(), 401);
    let unknown_user = unknown_user.text().await.unwrap();
    let error = |page: &str| {
        let at = page.find("id=\"error\">").unwrap();
        page[at..page[at..].find("</p>").unwrap() + at].to_owned()
    };
    assert_eq!(error(&wrong_password), error(&unknown_user));
    for _ in 0..3 {
        assert_eq!(
            console
                .try_sign_in(OPERATOR, "guess guess guess")
                .await
                .status(),
            401
        );
    }
    let limited = console.try_sign_in(OPERATOR, PASSWORD).await;
    assert_eq!(limited.status(), 429, "even the right password waits");
    assert!(limited.text().await.unwrap().contains("wait a minute"));
}

#[tokio::test]
async fn session_cookies_are_http_only_strict_and_secure_over_tls() {
    let console = Console::start().await;
    let response = console.try_sign_in(OPERATOR, PASSWORD).await;
    let line = set_cookie_line(&response, "telework_admin").unwrap();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(line.contains(flag), "{line}");
    }
    assert!(!line.contains("Secure"), "plain HTTP on loopback: {line}");

    let console = Console::start_tls().await;
    assert!(console.base.starts_with("https://"));
    let response = console.try_sign_in(OPERATOR, PASSWORD).await;
    let line = set_cookie_line(&response, "telework_admin").unwrap();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Secure"] {
        assert!(line.contains(flag), "{line}");
    }
    let signin = set_cookie_line(&response, "telework_signin").unwrap();
    assert!(signin.contains("Secure"), "{signin}");
}

#[tokio::test]
async fn api_tokens_work_until_revoked_and_sign_out_ends_the_session() {
    let console = Console::start().await;
    let (_office, _agent) = console.relay.office_pc("pc-1", "password-1").await;
    let registry = &console.relay.relay.registry;
    let (id, secret) = registry.create_api_token("script").await.unwrap();
    let machines: serde_json::Value = console
        .http
        .get(console.url("/api/v1/machines"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(machines[0]["id"], "pc-1");
    assert_eq!(machines[0]["online"], true);
    let response = console
        .http
        .post(console.url("/api/v1/machines/pc-1/disable"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        204,
        "a bearer token needs no CSRF header"
    );
    assert!(
        registry
            .machine(&"pc-1".parse().unwrap())
            .await
            .unwrap()
            .unwrap()
            .disabled
    );
    let response = console
        .http
        .delete(console.url("/api/v1/machines/pc-9"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert!(registry.revoke_api_token(&id).await.unwrap());
    let response = console
        .http
        .get(console.url("/api/v1/machines"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    let signed = console.sign_in().await;
    let response = console
        .http
        .post(console.url("/signout"))
        .header("cookie", &signed.cookie)
        .form(&[("csrf", &signed.csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    let response = console
        .http
        .get(console.url("/machines"))
        .header("cookie", &signed.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303, "the old cookie no longer works");
}
