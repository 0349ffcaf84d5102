//! `telework connect` through a real HTTP proxy (Debian's tinyproxy, started by each test on
//! loopback): the session reaches the office PC's desktop with and without Basic
//! authentication, `HTTPS_PROXY` is honoured, and each refusal is one sentence.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

mod common;

use common::{interrupt, round_trip, start, PW};
use telework_tests::tinyproxy::{ProxyConfig, Tinyproxy};
use telework_tests::{EchoServer, TestRelay};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// The variables that name a proxy: cleared, so the test's own environment cannot interfere.
const PROXY_VARS: [&str; 6] = [
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// `telework connect ID` with `extra` arguments and no proxy variables but `env`.
fn telework(relay: &TestRelay, id: &str, extra: &[&str], env: &[(&str, &str)]) -> Command {
    let mut args = vec!["--launch", "none"];
    args.extend_from_slice(extra);
    let mut cmd = common::telework(relay, id, &args, None);
    for var in PROXY_VARS {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Connects, checks the line printed names the proxy, sends bytes to the desktop through it,
/// and ends with Ctrl-C.
async fn session_through(cmd: Command, id: &str, proxy: &Tinyproxy) {
    let (mut child, addr, _stdout, line) = start(cmd).await;
    assert!(
        line.starts_with(&format!(
            "connected to {id} over TLS/TCP through the proxy {}: ",
            proxy.addr()
        )),
        "{line}"
    );
    assert_eq!(
        round_trip(&addr, b"desktop bytes via the home proxy").await,
        b"desktop bytes via the home proxy"
    );
    interrupt(&mut child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_through_a_proxy_with_and_without_basic_auth() {
    let relay = TestRelay::start().await;
    let desktop = EchoServer::start().await;
    let _agent = relay.agent("pc-px-1", PW).target(desktop.addr).run().await;
    let target = relay.addr.to_string();

    let with_auth = Tinyproxy::start(ProxyConfig {
        connect_ports: vec![relay.addr.port()],
        basic_auth: Some(("tanaka".into(), "homepass".into())),
    })
    .await;
    // Percent-encoded, as in any URL ("%70" is "p"; tinyproxy's own syntax allows no
    // punctuation in passwords).
    let url = format!("http://tanaka:home%70ass@{}", with_auth.addr());
    session_through(
        telework(&relay, "pc-px-1", &["--proxy", &url], &[]),
        "pc-px-1",
        &with_auth,
    )
    .await;
    assert!(with_auth.connects_to(&target) >= 1, "{}", with_auth.log());

    // No credentials, and the proxy from HTTPS_PROXY.
    let open = Tinyproxy::start(ProxyConfig {
        connect_ports: vec![relay.addr.port()],
        basic_auth: None,
    })
    .await;
    session_through(
        telework(&relay, "pc-px-1", &[], &[("HTTPS_PROXY", &open.url(None))]),
        "pc-px-1",
        &open,
    )
    .await;
    assert!(open.connects_to(&target) >= 1, "{}", open.log());
    assert_eq!(desktop.connections(), 2);
}

/// Runs `cmd` to the end with the password typed; returns its standard error, which must be
/// the one line after "connecting to …".
async fn failure(mut cmd: Command) -> String {
    let mut child = cmd.spawn().unwrap();
    // An up-front error exits before reading the password: a broken pipe is fine here.
    let _ = child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{PW}\n").as_bytes())
        .await;
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("telework finished in time")
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let last: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("connecting to "))
        .collect();
    assert_eq!(last.len(), 1, "one line: {stderr}");
    last[0].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_refusals_are_one_sentence_each() {
    let relay = TestRelay::start().await;
    let with_auth = Tinyproxy::start(ProxyConfig {
        connect_ports: vec![relay.addr.port()],
        basic_auth: Some(("tanaka".into(), "right".into())),
    })
    .await;
    let p = with_auth.addr();
    let id = "pc-px-2";

    let wrong = with_auth.url(Some(("tanaka", "wrong")));
    assert_eq!(
        failure(telework(&relay, id, &["--proxy", &wrong], &[])).await,
        format!(
            "telework: the proxy at {p} wants a user name and password and refused the ones \
             given; check them (in --proxy, the settings file or HTTPS_PROXY)"
        )
    );
    assert_eq!(
        failure(telework(
            &relay,
            id,
            &[],
            &[("https_proxy", &with_auth.url(None))]
        ))
        .await,
        format!(
            "telework: the proxy at {p} wants a user name and password: give them as \
             --proxy http://USER:PASSWORD@{p}"
        )
    );

    let other_port = Tinyproxy::start(ProxyConfig {
        connect_ports: vec![relay.addr.port().wrapping_add(1).max(1)],
        basic_auth: None,
    })
    .await;
    assert_eq!(
        failure(telework(
            &relay,
            id,
            &["--proxy", &other_port.url(None)],
            &[]
        ))
        .await,
        format!(
            "telework: the proxy at {} refuses connections to {}; ask the network \
             administrators to allow it",
            other_port.addr(),
            relay.addr
        )
    );

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let line = failure(telework(
        &relay,
        id,
        &["--proxy", &format!("http://{closed}")],
        &[],
    ))
    .await;
    assert!(
        line.starts_with(&format!(
            "telework: cannot reach the proxy at {closed}: Connection refused"
        )),
        "{line}"
    );

    // Up front, before the password is asked for.
    assert_eq!(
        failure(telework(
            &relay,
            id,
            &["--transport", "quic"],
            &[("HTTPS_PROXY", &with_auth.url(None))]
        ))
        .await,
        format!(
            "telework: --transport quic cannot go through the proxy at {p}, which carries TCP \
             only: use --transport auto or tcp, or --proxy none"
        )
    );
}
