//! The console in a real headless Chromium (Debian's `chromium` and `chromium-driver`),
//! driven over WebDriver: sign in (and fail to), refuse a forged form, create an enrolment
//! token, see the agent registered with it come online without a reload, end its live
//! session (the client says why), and read the audit rows. Screenshots of every page go to
//! `target/console-screenshots/` (`UPDATE_CONSOLE_PNG=1` also copies the machines page to
//! `docs/console.png`). Skipped, saying so, when `chromedriver` is not installed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Console, OPERATOR, PASSWORD};
use fantoccini::{Client, ClientBuilder, Locator};
use telework_agent::state::{AgentSettings, DataDir};
use telework_client::ClientError;
use telework_protocol::e2e::pake::PasswordRecord;
use telework_protocol::ErrorCode;
use telework_relay::admin::AdminOptions;
use telework_relay::{Registration, RelayOptions};
use telework_tests::{options_with_profile, TestClient, TestRelay};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PC: &str = "pc-tanaka-01";
const PC_PASSWORD: &str = "office password 1";

/// `chromedriver` on a free port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_program(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

async fn start_driver() -> Option<Driver> {
    let program = find_program("chromedriver")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(program)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Some(driver);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not start listening on port {port}");
}

async fn browser(driver: &Driver) -> Client {
    let mut args = vec![
        "--headless=new",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,900",
    ];
    if rustix_is_root() {
        args.push("--no-sandbox");
    }
    let mut chrome = serde_json::json!({ "args": args });
    if let Some(binary) = find_program("chromium") {
        chrome["binary"] = binary.to_string_lossy().into_owned().into();
    }
    let mut caps = serde_json::Map::new();
    caps.insert("goog:chromeOptions".into(), chrome);
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

fn rustix_is_root() -> bool {
    std::env::var("USER").map_or(true, |u| u == "root")
        || Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(browser: &Client, name: &str) -> PathBuf {
    let png = browser.screenshot().await.unwrap();
    let path = screenshot_dir().join(format!("{name}.png"));
    std::fs::write(&path, png).unwrap();
    path
}

async fn text(browser: &Client, css: &str) -> String {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Waits until `css` matches an element whose text contains `want`.
async fn wait_text(browser: &Client, css: &str, want: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(e) = browser.find(Locator::Css(css)).await {
            if e.text().await.is_ok_and(|t| t.contains(want)) {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{css} never said {want:?}: {}",
            browser.source().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn fill(browser: &Client, css: &str, value: &str) {
    let field = browser.find(Locator::Css(css)).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(value).await.unwrap();
}

async fn sign_in(browser: &Client, console: &Console, password: &str) {
    browser.goto(&console.url("/signin")).await.unwrap();
    fill(browser, "#name", OPERATOR).await;
    fill(browser, "#password", password).await;
    browser
        .find(Locator::Css("#signin"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Registers `PC` with the enrolment `token` and runs its agent until it is online.
async fn office_pc_with_token(
    relay: &TestRelay,
    token: &str,
) -> (tempfile::TempDir, TestAgentTask) {
    let dir = tempfile::tempdir().unwrap();
    let data = DataDir::open(dir.path()).unwrap();
    let settings = AgentSettings {
        computer_id: PC.parse().unwrap(),
        relay: relay.addr.to_string(),
        relay_fingerprint: Some(relay.fingerprint.to_string()),
        relay_ca: None,
        transport: relay.transport,
        proxy: None,
    };
    telework_agent::register::register(&data, &settings, Some(token.to_owned()))
        .await
        .unwrap();
    data.save_password(&PasswordRecord::create(PC_PASSWORD.as_bytes()).unwrap())
        .unwrap();
    let desktop = telework_tests::EchoServer::start().await;
    let agent = telework_agent::Agent::open(
        data,
        desktop.addr.to_string(),
        telework_agent::RunOptions::default(),
    )
    .unwrap();
    let task = telework_tests::run_until_online(agent).await;
    (
        dir,
        TestAgentTask {
            task,
            _desktop: desktop,
        },
    )
}

struct TestAgentTask {
    task: tokio::task::JoinHandle<Result<(), telework_agent::AgentError>>,
    _desktop: telework_tests::EchoServer,
}

impl Drop for TestAgentTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_manages_the_relay_in_a_real_browser() {
    let Some(driver) = start_driver().await else {
        eprintln!(
            "SKIPPED: chromedriver is not installed (apt-get install chromium chromium-driver)"
        );
        return;
    };
    let relay = TestRelay::start_with(RelayOptions {
        registration: Registration::Token,
        ..RelayOptions::default()
    })
    .await;
    let console = Console::with_relay(relay, AdminOptions::default()).await;
    let browser = browser(&driver).await;

    // A wrong password is refused with one message; the right one opens the machines page.
    sign_in(&browser, &console, "not the password").await;
    wait_text(&browser, "#error", "Wrong user name or password").await;
    screenshot(&browser, "signin").await;
    sign_in(&browser, &console, PASSWORD).await;
    wait_text(&browser, "h1", "Machines").await;

    // A forged form without the CSRF token is refused.
    browser
        .execute(
            "const f = document.createElement('form'); f.method = 'post'; f.action = '/tokens';
             for (const [k, v] of [['uses', '5'], ['hours', '1']]) {
               const i = document.createElement('input'); i.name = k; i.value = v; f.appendChild(i);
             }
             document.body.appendChild(f); f.submit();",
            vec![],
        )
        .await
        .unwrap();
    wait_text(&browser, "body", "missing or wrong CSRF token").await;
    assert!(console
        .relay
        .relay
        .registry
        .enrolment_tokens()
        .await
        .unwrap()
        .is_empty());

    // An enrolment token, shown once.
    browser.goto(&console.url("/tokens")).await.unwrap();
    fill(&browser, "#uses", "2").await;
    fill(&browser, "#label", "Tanaka's office PC").await;
    browser
        .find(Locator::Css("#create-token"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&browser, "#new-token", "tw1-").await;
    let token = text(&browser, "#new-token").await;
    wait_text(&browser, "#tokens tbody", "Tanaka's office PC").await;
    screenshot(&browser, "tokens").await;
    browser.goto(&console.url("/tokens")).await.unwrap();
    assert!(
        !browser.source().await.unwrap().contains(&token),
        "shown only once"
    );

    // The agent registered with it comes online while the page is open: no reload.
    browser.goto(&console.url("/machines")).await.unwrap();
    browser
        .execute("window.notReloaded = true;", vec![])
        .await
        .unwrap();
    let (_agent_dir, _agent) = office_pc_with_token(&console.relay, &token).await;
    wait_text(&browser, &format!("tr[data-id='{PC}'] td.status"), "online").await;
    let same_page = browser
        .execute("return window.notReloaded === true;", vec![])
        .await
        .unwrap();
    assert_eq!(same_page, serde_json::Value::Bool(true), "updated live");
    let machines = screenshot(&browser, "machines").await;
    // The README's picture, refreshed on request only (so test runs leave the tree clean).
    if std::env::var_os("UPDATE_CONSOLE_PNG").is_some() {
        std::fs::copy(
            &machines,
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/console.png"),
        )
        .unwrap();
    }

    // A live session, ended from the console: the client says the operator ended it.
    let profile_dir = tempfile::tempdir().unwrap();
    let options =
        options_with_profile(&telework_client::profile::Profile::open(profile_dir.path()).unwrap());
    let session = telework_client::Session::login_with(
        &console.relay.target(PC),
        PC_PASSWORD.as_bytes(),
        &options,
    )
    .await
    .unwrap();
    let client = TestClient::serve(session).await;
    let mut rdp = tokio::net::TcpStream::connect(client.local).await.unwrap();
    rdp.write_all(&[7; 4096]).await.unwrap();
    let mut back = [0; 4096];
    rdp.read_exact(&mut back).await.unwrap();
    browser.goto(&console.url("/sessions")).await.unwrap();
    wait_text(&browser, "#sessions tbody", PC).await;
    screenshot(&browser, "sessions").await;
    browser
        .find(Locator::Css("#sessions tbody form button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), client.task)
        .await
        .expect("the client stops")
        .unwrap();
    match ended {
        Err(e @ ClientError::Relay(ErrorCode::EndedByOperator)) => {
            assert_eq!(e.to_string(), "the relay operator ended the session");
        }
        other => panic!("expected the operator's end, got {other:?}"),
    }

    // The audit log has the enrolment, the agent online, the session and the actions.
    let audit = console.relay.relay.audit.clone();
    assert!(
        tokio::task::spawn_blocking(move || audit.flush(Duration::from_secs(5)))
            .await
            .unwrap()
    );
    browser.goto(&console.url("/audit")).await.unwrap();
    for kind in [
        "enrolled",
        "agent_online",
        "session_started",
        "session_ended",
        "admin_action",
    ] {
        wait_text(&browser, "#audit tbody", kind).await;
    }
    let table = text(&browser, "#audit tbody").await;
    assert!(
        table.contains("token_create") && table.contains("session_end"),
        "{table}"
    );
    assert!(table.contains(OPERATOR), "{table}");
    screenshot(&browser, "audit").await;
    browser
        .goto(&console.url(&format!("/audit?computer_id={PC}&kind=enrolled")))
        .await
        .unwrap();
    let filtered = text(&browser, "#audit tbody").await;
    assert_eq!(filtered.lines().count(), 1, "{filtered}");

    browser.close().await.unwrap();
}
