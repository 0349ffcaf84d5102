//! `telework-agent setup` as IT staff use it: typed at a real terminal (tmux) against a real
//! `telework-relay`, with mistakes along the way, and scripted with flags. Either way the PC
//! ends up registered, `telework-agent run` brings it online, and an employee logs in.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use telework_agent::totp::TotpSecret;
use telework_client::{LoginOptions, Session, Target};
use telework_net::tls::RelayTrust;
use telework_net::transport::TransportChoice;
use telework_tests::netns::binary;
use telework_tests::relay_process::{stop, RelayProcess};
use telework_tests::tmux::Tmux;
use telework_tests::{echo_once, EchoServer, TestClient};

/// How long each prompt may take to appear.
const PROMPT: Duration = Duration::from_secs(20);

/// `telework-agent run` on `data_dir`, stopped when dropped.
struct RunningAgent(Child);

impl RunningAgent {
    fn start(data_dir: &Path, desktop: &EchoServer) -> Self {
        let child = Command::new(binary("telework-agent"))
            .args(["run", "--target", &desktop.addr.to_string(), "--data-dir"])
            .arg(data_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Self(child)
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        stop(&mut self.0);
    }
}

/// Logs in to `id` as an employee once its agent is online (retrying "offline" for 20 s), and
/// sends bytes through to the desktop and back.
async fn employee_reaches(relay: &RelayProcess, id: &str, password: &str, options: LoginOptions) {
    let target = Target {
        relay: relay.addr.to_string().parse().unwrap(),
        trust: RelayTrust::Fingerprint(relay.fingerprint),
        transport: TransportChoice::Auto,
        id: id.parse().unwrap(),
    };
    let start = Instant::now();
    let session = loop {
        match Session::login_with(&target, password.as_bytes(), &options).await {
            Ok(session) => break session,
            Err(e) if start.elapsed() < Duration::from_secs(20) => {
                eprintln!("not yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the employee could not log in to {id}: {e}"),
        }
    };
    let client = TestClient::serve(session).await;
    let mut conn = tokio::net::TcpStream::connect(client.local).await.unwrap();
    echo_once(&mut conn).await;
    drop(conn);
    client.stop().await.unwrap();
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_typed_at_a_terminal_with_mistakes() {
    let relay = RelayProcess::start(&[]);
    let token = relay.token();
    let office = tempfile::tempdir().unwrap();
    let data_dir = office.path().join("agent");
    let agent = binary("telework-agent").display().to_string();
    let term = Tmux::start(&[
        agent,
        "setup".into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
    ]);

    // The relay: a typo first, re-asked.
    term.wait_for("Relay address (host:port", 1, PROMPT);
    term.type_line("relay.example.com");
    term.wait_for("'relay.example.com' is not host:port", 1, PROMPT);
    term.wait_for("Relay address (host:port", 2, PROMPT);
    term.type_line(&relay.addr.to_string());
    term.wait_for("Relay certificate: paste its fingerprint", 1, PROMPT);
    term.type_line(&relay.fingerprint.to_string());

    // A wrong token: the relay refuses it and only the token is asked again.
    term.wait_for("Enrolment token from the relay operator", 1, PROMPT);
    term.type_line("tw1-not-the-token");
    term.wait_for("Computer ID employees will type", 1, PROMPT);
    term.type_line("pc-setup-01");
    term.wait_for("enrolment token is not valid", 1, PROMPT);
    term.wait_for("Enrolment token from the relay operator", 2, PROMPT);
    term.type_line(&token);
    term.wait_for("Registered as computer ID pc-setup-01.", 1, PROMPT);

    // The password: a mistyped confirmation is asked again, and nothing is echoed.
    term.wait_for("Connection password for employees", 1, PROMPT);
    term.type_line("office-password-1");
    term.wait_for("Type the same password again", 1, PROMPT);
    term.type_line("office-password-2");
    term.wait_for("The two passwords differ", 1, PROMPT);
    term.wait_for("Connection password for employees", 2, PROMPT);
    term.type_line("office-password-1");
    term.wait_for("Type the same password again", 2, PROMPT);
    term.type_line("office-password-1");
    let screen = term.wait_for("Connection password set", 1, PROMPT);
    assert!(!screen.contains("office-password"), "echoed:\n{screen}");

    // One-time codes: the QR code and the secret, then a wrong code and the right one.
    term.wait_for(
        "one-time code from an authenticator app at every login?",
        1,
        PROMPT,
    );
    term.type_line("y");
    let screen = term.wait_for("Type the 6-digit code the app shows now", 1, PROMPT);
    assert!(
        screen.contains('█') || screen.contains('▀'),
        "a QR code:\n{screen}"
    );
    let secret_line = screen
        .lines()
        .skip_while(|l| !l.contains("enter this secret by hand:"))
        .nth(1)
        .unwrap_or_else(|| panic!("no secret shown:\n{screen}"));
    let secret = TotpSecret::from_base32(secret_line.trim()).unwrap();
    let right = secret.code_at(telework_agent::unix_now());
    let wrong = format!(
        "{:06}",
        (right.parse::<u32>().unwrap() + 500_000) % 1_000_000
    );
    term.type_line(&wrong);
    term.wait_for("That code is not right", 1, PROMPT);
    term.type_line(&secret.code_at(telework_agent::unix_now()));
    term.wait_for("The code is right.", 1, PROMPT);

    // The service: here systemd is not PID 1 (or the data dir is not the service's), so the
    // set-up says what to run instead and succeeds.
    term.wait_for(
        "Install and start the telework-agent service now?",
        1,
        PROMPT,
    );
    term.type_line("y");
    let screen = term.wait_for("[exited with ", 1, PROMPT);
    eprintln!("the terminal at the end of the set-up:\n{screen}");
    assert!(screen.contains("[exited with 0]"), "{screen}");
    assert!(
        screen.contains(&format!(
            "telework-agent run --data-dir {}",
            data_dir.display()
        )),
        "{screen}"
    );
    assert!(
        screen.contains("Done: this office PC is pc-setup-01."),
        "{screen}"
    );

    let machines = relay.machines();
    assert!(machines.contains("pc-setup-01"), "{machines}");
    let desktop = EchoServer::start().await;
    let _agent = RunningAgent::start(&data_dir, &desktop);
    employee_reaches(
        &relay,
        "pc-setup-01",
        "office-password-1",
        telework_tests::with_current_codes(secret),
    )
    .await;
    assert_eq!(desktop.connections(), 1);
}

/// `setup --yes` with every answer in flags and the password on standard input.
fn scripted(data_dir: &Path, args: &[&str], password: &str) -> std::process::Output {
    let mut child = Command::new(binary("telework-agent"))
        .args(["setup", "--yes", "--data-dir"])
        .arg(data_dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // The command may have stopped before reading (a missing flag): that is not our error.
    let _ = writeln!(stdin, "{password}");
    drop(stdin);
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_scripted_with_flags() {
    let relay = RelayProcess::start(&[]);
    let office = tempfile::tempdir().unwrap();
    let addr = relay.addr.to_string();
    let fp = relay.fingerprint.to_string();

    // Anything missing is an error naming its flag, before anything is asked or sent.
    let out = scripted(
        &office.path().join("a"),
        &["--id", "pc-x"],
        "scripted-password",
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("missing --relay"), "{}", text(&out));
    let base = [
        "--relay",
        &addr,
        "--relay-fingerprint",
        &fp,
        "--id",
        "pc-scripted",
    ];
    let out = scripted(&office.path().join("b"), &base, "scripted-password");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("the relay requires an enrolment token"),
        "{}",
        text(&out)
    );
    let out = scripted(&office.path().join("c"), &["--relay", "no-port"], "x");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--relay"), "{}", text(&out));
    let token = relay.token();
    let mut short = base.to_vec();
    short.extend([
        "--token",
        &token,
        "--no-totp",
        "--no-service",
        "--password-stdin",
    ]);
    let data_dir = office.path().join("agent");
    let out = scripted(&data_dir, &short, "short");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("at least 8 characters"),
        "{}",
        text(&out)
    );

    // All of it given: registered (the token was not spent by the refusal above), password
    // set, no one-time codes, no service.
    let out = scripted(&data_dir, &short, "scripted-password");
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("Registered as computer ID pc-scripted."),
        "{said}"
    );
    assert!(said.contains("No service installed."), "{said}");
    assert!(!said.contains("scripted-password"), "{said}");
    let machines = relay.machines();
    assert!(machines.contains("pc-scripted"), "{machines}");

    let desktop = EchoServer::start().await;
    let _agent = RunningAgent::start(&data_dir, &desktop);
    employee_reaches(
        &relay,
        "pc-scripted",
        "scripted-password",
        LoginOptions::default(),
    )
    .await;
}
