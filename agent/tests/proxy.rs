//! `telework-agent register` and `run` through a real HTTP proxy (Debian's tinyproxy, started
//! by each test on loopback), and the one sentence printed for each way a proxy says no.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use telework_relay::{Registration, RelayOptions};
use telework_tests::tinyproxy::{ProxyConfig, Tinyproxy};
use telework_tests::{EchoServer, TestRelay};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

const PASSWORD: &str = "it-staff-chose-this";

/// The variables that name a proxy: cleared, so the test's own environment cannot interfere.
const PROXY_VARS: [&str; 6] = [
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

fn agent(data: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_telework-agent"));
    for var in PROXY_VARS {
        cmd.env_remove(var);
    }
    cmd.env("TELEWORK_AGENT_DATA_DIR", data)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

fn register(relay: &TestRelay, data: &Path, id: &str, extra: &[&str]) -> Command {
    let mut cmd = agent(data);
    cmd.args(["register", "--relay", &relay.addr.to_string(), "--id", id])
        .args(["--relay-fingerprint", &relay.fingerprint.to_string()])
        .args(extra);
    cmd
}

/// Runs `cmd` to the end (at most 30 s).
async fn output(mut cmd: Command) -> Output {
    let child = cmd.spawn().unwrap();
    tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("telework-agent finished in time")
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn open_relay() -> TestRelay {
    TestRelay::start_with(RelayOptions {
        registration: Registration::Open,
        ..Default::default()
    })
    .await
}

async fn set_password(data: &Path) {
    let mut cmd = agent(data);
    cmd.args(["set-password", "--password-stdin"]);
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

/// Starts `run`, waits until the relay has `id` online, stops it with SIGTERM and returns
/// everything it printed.
async fn run_until_online(
    relay: &TestRelay,
    data: &Path,
    id: &str,
    env: &[(&str, &str)],
) -> String {
    let desktop = EchoServer::start().await;
    let mut cmd = agent(data);
    cmd.args(["run", "--target", &desktop.addr.to_string()]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    let computer = id.parse().unwrap();
    for _ in 0..150 {
        if relay.relay.hub.is_online(&computer) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let online = relay.relay.hub.is_online(&computer);
    if online {
        // A session through the agent that came online through the proxy reaches the desktop.
        let session = relay.login(id, PASSWORD).await.unwrap();
        let tunnel = session.opener().open().await.unwrap();
        let (local, mut app) = tokio::io::duplex(1024);
        let pump = tokio::spawn(tunnel.pump(local));
        let back = tokio::time::timeout(Duration::from_secs(10), async {
            app.write_all(b"through the office proxy").await.unwrap();
            app.shutdown().await.unwrap();
            let mut back = Vec::new();
            app.read_to_end(&mut back).await.unwrap();
            pump.await.unwrap().unwrap();
            back
        })
        .await
        .expect("the echo came back in time");
        assert_eq!(back, b"through the office proxy");
    }
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("the agent stopped on SIGTERM")
        .unwrap();
    let printed = text(&out);
    assert!(online, "agent came online through the proxy: {printed}");
    printed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_and_run_through_a_proxy_with_basic_auth() {
    let relay = open_relay().await;
    let proxy = Tinyproxy::start(ProxyConfig {
        connect_ports: vec![relay.addr.port()],
        basic_auth: Some(("office".into(), "s3cret-proxy-pw".into())),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("agent");
    let url = proxy.url(Some(("office", "s3cret-proxy-pw")));

    let out = output(register(&relay, &data, "pc-proxy-01", &["--proxy", &url])).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        proxy.connects_to(&relay.addr.to_string()),
        1,
        "{}",
        proxy.log()
    );
    // 'run' takes the proxy from the settings file that 'register' wrote.
    let settings = std::fs::read_to_string(data.join("agent.toml")).unwrap();
    assert!(
        settings.contains(&format!("proxy = \"{url}\"")),
        "{settings}"
    );

    set_password(&data).await;
    let printed = run_until_online(&relay, &data, "pc-proxy-01", &[]).await;
    let expected = format!("online over TLS/TCP through the proxy {}", proxy.addr());
    assert!(printed.contains(&expected), "{printed}");
    assert!(!printed.contains("s3cret-proxy-pw"), "{printed}");
    assert_eq!(
        proxy.connects_to(&relay.addr.to_string()),
        2,
        "{}",
        proxy.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_proxy_and_no_proxy_from_the_environment() {
    let relay = open_relay().await;
    let proxy = Tinyproxy::start(ProxyConfig {
        connect_ports: vec![relay.addr.port()],
        basic_auth: None,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("agent");
    let target = relay.addr.to_string();

    // NO_PROXY names the relay: register goes direct.
    let mut cmd = register(&relay, &data, "pc-proxy-02", &[]);
    cmd.env("HTTPS_PROXY", proxy.url(None))
        .env("NO_PROXY", "localhost,127.0.0.1");
    let out = output(cmd).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(proxy.connects_to(&target), 0, "{}", proxy.log());

    set_password(&data).await;
    let printed = run_until_online(
        &relay,
        &data,
        "pc-proxy-02",
        &[("https_proxy", &proxy.url(None))],
    )
    .await;
    let expected = format!("online over TLS/TCP through the proxy {}", proxy.addr());
    assert!(printed.contains(&expected), "{printed}");
    assert_eq!(proxy.connects_to(&target), 1, "{}", proxy.log());

    // --proxy none ignores the environment.
    let data2 = dir.path().join("agent2");
    let mut cmd = register(&relay, &data2, "pc-proxy-03", &["--proxy", "none"]);
    cmd.env("HTTPS_PROXY", proxy.url(None));
    let out = output(cmd).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(proxy.connects_to(&target), 1, "{}", proxy.log());
}

/// Registers with `extra` arguments, expecting failure, and returns what it printed, which must be one line.
async fn refused(relay: &TestRelay, extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = output(register(
        relay,
        &dir.path().join("agent"),
        "pc-proxy-x",
        extra,
    ))
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let printed = text(&out);
    assert_eq!(printed.lines().count(), 1, "one line: {printed}");
    printed.trim_end().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_refusal_is_one_sentence_that_names_the_proxy() {
    let relay = open_relay().await;
    let relay_port = relay.addr.port();
    let with_auth = Tinyproxy::start(ProxyConfig {
        connect_ports: vec![relay_port],
        basic_auth: Some(("office".into(), "right".into())),
    })
    .await;
    let p = with_auth.addr();

    let printed = refused(
        &relay,
        &["--proxy", &with_auth.url(Some(("office", "wrong")))],
    )
    .await;
    assert_eq!(
        printed,
        format!(
            "telework-agent: the proxy at {p} wants a user name and password and refused the \
             ones given; check them (in --proxy, the settings file or HTTPS_PROXY)"
        )
    );
    let printed = refused(&relay, &["--proxy", &with_auth.url(None)]).await;
    assert_eq!(
        printed,
        format!(
            "telework-agent: the proxy at {p} wants a user name and password: give them as \
             --proxy http://USER:PASSWORD@{p}"
        )
    );

    // tinyproxy answers 403 for a port not in its ConnectPort list.
    let other_port = Tinyproxy::start(ProxyConfig {
        connect_ports: vec![relay_port.wrapping_add(1).max(1)],
        basic_auth: None,
    })
    .await;
    let printed = refused(&relay, &["--proxy", &other_port.url(None)]).await;
    assert_eq!(
        printed,
        format!(
            "telework-agent: the proxy at {} refuses connections to {}; ask the network \
             administrators to allow it",
            other_port.addr(),
            relay.addr
        )
    );

    // Nobody listens on this port any more.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let printed = refused(&relay, &["--proxy", &format!("http://{closed}")]).await;
    assert!(
        printed.starts_with(&format!(
            "telework-agent: cannot reach the proxy at {closed}: Connection refused"
        )),
        "{printed}"
    );
    assert!(!printed.contains(&relay.addr.to_string()), "{printed}");

    let printed = refused(
        &relay,
        &["--proxy", &with_auth.url(None), "--transport", "quic"],
    )
    .await;
    assert_eq!(
        printed,
        format!(
            "telework-agent: --transport quic cannot go through the proxy at {p}, which carries \
             TCP only: use --transport auto or tcp, or --proxy none"
        )
    );

    let printed = refused(
        &relay,
        &["--proxy", "socks5://office:hidden@127.0.0.1:1080"],
    )
    .await;
    assert!(
        printed.starts_with("telework-agent: --proxy: only http:// proxies"),
        "{printed}"
    );
    assert!(!printed.contains("hidden"), "{printed}");
}
