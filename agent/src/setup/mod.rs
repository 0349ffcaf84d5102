//! `telework-agent setup`: sets up an office PC in one step, asking IT staff one question at a
//! time (relay, trust, enrolment token, computer ID, password, one-time codes, service), or
//! taking every answer from flags. It is the command line's (not the library's): each step
//! calls the same library code as `register`, `set-password` and `totp enable`.

mod ask;
mod service;

use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use telework_agent::register::{register_with, suggested_id};
use telework_agent::state::{AgentSettings, DataDir};
use telework_agent::totp_enrol::Enrolment;
use telework_agent::{password, AgentError};
use telework_net::connect::{ConnectError, RelayAddr};
use telework_net::proxy::{ProxyEnv, ProxySetting};
use telework_net::tls::RelayTrust;
use telework_net::transport::TransportChoice;
use telework_protocol::{CertFingerprint, ComputerId, ErrorCode};

use ask::Ask;
use zeroize::Zeroizing;

/// The flags of `setup`: one per question, so that it can be scripted.
#[derive(clap::Args)]
pub struct SetupArgs {
    /// The agent's data directory [default: /var/lib/telework-agent, the service's].
    #[arg(long, env = "TELEWORK_AGENT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The relay, host:port.
    #[arg(long)]
    relay: Option<RelayAddr>,
    /// Pin the relay's self-signed certificate (from 'telework-relay fingerprint').
    #[arg(long, value_name = "sha256:HEX")]
    relay_fingerprint: Option<CertFingerprint>,
    /// Trust a private CA for the relay's certificate (PEM).
    #[arg(long, conflicts_with = "relay_fingerprint")]
    relay_ca: Option<PathBuf>,
    /// Enrolment token from the relay operator.
    #[arg(long, env = "TELEWORK_ENROLMENT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The computer ID to claim [default: from the host name].
    #[arg(long)]
    id: Option<ComputerId>,
    /// Read the connection password from the first line of standard input.
    #[arg(long)]
    password_stdin: bool,
    /// Require one-time codes (TOTP) from an authenticator app; shows the QR code.
    #[arg(long, conflicts_with = "no_totp")]
    totp: bool,
    /// Do not require one-time codes (turns them off if they were on).
    #[arg(long)]
    no_totp: bool,
    /// Install and start the service (the default).
    #[arg(long, conflicts_with = "no_service")]
    service: bool,
    /// Do not install or start the service.
    #[arg(long)]
    no_service: bool,
    /// Ask nothing: take every answer from the flags and the defaults, and stop with an error
    /// naming any flag that is missing.
    #[arg(long, short = 'y')]
    yes: bool,
    /// How to reach the relay (saved in the settings for 'run').
    #[arg(long, value_enum, default_value_t = TransportChoice::Auto)]
    transport: TransportChoice,
    /// Reach the relay through this HTTP proxy, http://[user:password@]host:port, or 'none'
    /// (saved in the settings for 'run').
    #[arg(long, value_name = "URL")]
    proxy: Option<String>,
}

/// How the relay's certificate is checked.
#[derive(Clone)]
enum Trust {
    System,
    Fingerprint(CertFingerprint),
    Ca(PathBuf),
}

/// A question registration sends back to, when the relay or the network says no.
enum AskAgain {
    Relay,
    Trust,
    Token,
    Id,
}

const RELAY_Q: &str = "Relay address (host:port, from the relay operator)";
const TRUST_Q: &str = "Relay certificate: paste its fingerprint (sha256:...), or the path of a \
                       CA certificate (PEM), or press Enter if it has a public certificate";
const TOKEN_Q: &str = "Enrolment token from the relay operator (press Enter if it needs none)";
const ID_Q: &str = "Computer ID employees will type (1-31 of a-z 0-9 - _)";

/// Runs the set-up.
///
/// # Errors
/// A sentence for anything that cannot be done or asked again.
pub fn run(args: SetupArgs) -> anyhow::Result<()> {
    let ask = Ask::new(!args.yes);
    if args.password_stdin && ask.interactive() {
        // Answers and the password would share standard input; keep scripts unambiguous.
        bail!("--password-stdin needs --yes (without it the password is asked at the terminal)");
    }
    if let Some(text) = &args.proxy {
        text.parse::<ProxySetting>()
            .map_err(|e| anyhow::anyhow!("--proxy: {e}"))?;
    }
    let data_dir = match (&args.data_dir, service::DEFAULT_DATA_DIR) {
        (Some(dir), _) => dir.clone(),
        (None, Some(dir)) => PathBuf::from(dir),
        (None, None) => bail!("missing --data-dir: where should the agent keep its files?"),
    };
    let data = DataDir::open(&data_dir)?;
    password::check_record(&data)?;
    // A scripted password is read and checked before anything is sent, so a bad one spends
    // no enrolment token.
    let scripted_password = match args.password_stdin {
        true => Some(read_password_line()?),
        false => None,
    };
    println!(
        "Setting up this office PC (data dir {}).",
        data_dir.display()
    );

    let id = register_step(&ask, &args, &data)?;
    password_step(&ask, scripted_password, &data)?;
    totp_step(&ask, &args, &data)?;
    let install = ask.yes_no(
        flag_pair(args.service, args.no_service),
        "Install and start the telework-agent service now?",
        true,
    )?;
    if install {
        service::install_and_start(&data_dir)?;
    } else {
        println!(
            "No service installed. Start the agent with:\n  telework-agent run --data-dir {}",
            data_dir.display()
        );
    }
    println!("Done: this office PC is {id}. Employees connect with 'telework connect {id}'.");
    Ok(())
}

/// The relay, its trust, the token and the ID, asked until the relay registers this PC.
fn register_step(ask: &Ask, args: &SetupArgs, data: &DataDir) -> anyhow::Result<ComputerId> {
    let mut relay = ask.value(args.relay.clone(), "--relay", RELAY_Q, None, parse_relay)?;
    let given_trust = match (&args.relay_fingerprint, &args.relay_ca) {
        (Some(fp), _) => Some(Trust::Fingerprint(*fp)),
        (None, Some(ca)) => Some(Trust::Ca(ca.clone())),
        (None, None) => None,
    };
    let mut trust = ask.value(
        given_trust,
        "--relay-fingerprint",
        TRUST_Q,
        Some(""),
        parse_trust,
    )?;
    let mut token = ask.value(
        args.token.clone().map(Some),
        "--token",
        TOKEN_Q,
        Some(""),
        |t| Ok((!t.is_empty()).then(|| t.to_owned())),
    )?;
    let suggested = suggested_id().ok().map(|id| id.to_string());
    let mut id = ask.value(
        args.id.clone(),
        "--id",
        ID_Q,
        suggested.as_deref(),
        parse_id,
    )?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    loop {
        let settings = AgentSettings {
            computer_id: id.clone(),
            relay: relay.to_string(),
            relay_fingerprint: match &trust {
                Trust::Fingerprint(fp) => Some(fp.to_string()),
                _ => None,
            },
            relay_ca: match &trust {
                Trust::Ca(path) => Some(path.clone()),
                _ => None,
            },
            transport: args.transport,
            proxy: args.proxy.clone(),
        };
        println!("Registering {id} on the relay {relay}...");
        let error = match runtime.block_on(register_with(
            data,
            &settings,
            token.clone(),
            &ProxyEnv::from_process(),
        )) {
            Ok(id) => {
                println!("Registered as computer ID {id}.");
                return Ok(id);
            }
            Err(e) => e,
        };
        let Some(again) = ask_again(&error).filter(|_| ask.interactive()) else {
            return Err(error).context("registering this office PC");
        };
        println!("The relay did not register this PC: {error}.");
        match again {
            AskAgain::Relay => relay = ask.again(RELAY_Q, None, parse_relay)?,
            AskAgain::Trust => trust = ask.again(TRUST_Q, Some(""), parse_trust)?,
            AskAgain::Token => {
                token = ask.again(TOKEN_Q, Some(""), |t| {
                    Ok((!t.is_empty()).then(|| t.to_owned()))
                })?
            }
            AskAgain::Id => id = ask.again(ID_Q, None, parse_id)?,
        }
    }
}

/// Which answer to ask for again after `error`, if another answer could help.
fn ask_again(error: &AgentError) -> Option<AskAgain> {
    match error {
        AgentError::Refused(ErrorCode::TokenRequired | ErrorCode::BadToken) => {
            Some(AskAgain::Token)
        }
        AgentError::Refused(ErrorCode::IdTaken) => Some(AskAgain::Id),
        AgentError::Connect(ConnectError::CertificateRejected { .. }) => Some(AskAgain::Trust),
        AgentError::Connect(
            ConnectError::Resolve { .. }
            | ConnectError::Unreachable { .. }
            | ConnectError::Timeout { .. }
            | ConnectError::VersionMismatch { .. },
        ) => Some(AskAgain::Relay),
        _ => None,
    }
}

/// The connection password: from standard input, or typed twice; an existing one is kept
/// unless IT staff want to change it.
fn password_step(
    ask: &Ask,
    scripted: Option<Zeroizing<String>>,
    data: &DataDir,
) -> anyhow::Result<()> {
    let password = if let Some(password) = scripted {
        password
    } else if data.password()?.is_some()
        && !ask.yes_no(
            None,
            "A connection password is set already. Change it?",
            false,
        )?
    {
        println!("The connection password stays as it was.");
        return Ok(());
    } else {
        ask.new_password()?
    };
    let set = password::set(data, &password)?;
    println!(
        "Connection password set (this PC keeps only an OPAQUE record of it). Identity key {}.",
        set.fingerprint
    );
    Ok(())
}

/// The first line of standard input, checked as a new connection password.
fn read_password_line() -> anyhow::Result<Zeroizing<String>> {
    let mut line = Zeroizing::new(String::new());
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let password = Zeroizing::new(line.trim_end_matches(['\r', '\n']).to_owned());
    password::check(&password).map_err(|e| anyhow::anyhow!("{e}; nothing was changed"))?;
    Ok(password)
}

/// One-time codes: turned on with the QR code shown (and a code typed back to check it), off,
/// or left as they are.
fn totp_step(ask: &Ask, args: &SetupArgs, data: &DataDir) -> anyhow::Result<()> {
    let on_now = data.totp()?.is_some();
    let wanted = flag_pair(args.totp, args.no_totp);
    if wanted == Some(false) {
        if on_now {
            data.save_totp(None)?;
            println!("One-time codes are no longer required.");
        }
        return Ok(());
    }
    if wanted.is_none() && on_now {
        println!("One-time codes are required already ('telework-agent totp' changes that).");
        return Ok(());
    }
    let question = "Also ask for a one-time code from an authenticator app at every login?";
    if !ask.yes_no(wanted, question, false)? {
        return Ok(());
    }
    let enrolment = Enrolment::for_data_dir(data)?;
    println!("{}", enrolment.instructions());
    if ask.interactive() {
        loop {
            let code = ask.line(
                "Type the 6-digit code the app shows now, to check it (or press Enter to skip): ",
            )?;
            if code.trim().is_empty() {
                break;
            }
            if enrolment
                .secret
                .verify(&code, telework_agent::unix_now(), None)
                .is_some()
            {
                println!("The code is right.");
                break;
            }
            println!("That code is not right (is the app's clock right?). Please try again.");
        }
    }
    enrolment.save(data)?;
    println!("From now on every login also asks for the app's 6-digit code.");
    Ok(())
}

/// A `--x` / `--no-x` pair as an answer, if either was given.
fn flag_pair(yes: bool, no: bool) -> Option<bool> {
    match (yes, no) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    }
}

fn parse_relay(text: &str) -> Result<RelayAddr, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("'{text}' is not host:port (for example relay.example.com:443)"))
}

fn parse_id(text: &str) -> Result<ComputerId, String> {
    text.trim()
        .parse()
        .map_err(|e| format!("'{text}' cannot be a computer ID ({e})"))
}

fn parse_trust(text: &str) -> Result<Trust, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(Trust::System);
    }
    let looks_hex = text.chars().all(|c| c.is_ascii_hexdigit() || c == ':');
    if text.starts_with("sha256:") || looks_hex {
        let full = match text.starts_with("sha256:") {
            true => text.to_owned(),
            false => format!("sha256:{text}"),
        };
        return full
            .parse()
            .map(Trust::Fingerprint)
            .map_err(|e| format!("'{text}' is not a certificate fingerprint ({e})"));
    }
    let path = Path::new(text);
    RelayTrust::ca_file(path)
        .map(|_| Trust::Ca(path.to_path_buf()))
        .map_err(|e| format!("cannot use {text} as the relay's CA: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_answers() {
        let hex = "ab".repeat(32);
        assert!(matches!(parse_trust(""), Ok(Trust::System)));
        assert!(matches!(
            parse_trust(&format!("sha256:{hex}")),
            Ok(Trust::Fingerprint(_))
        ));
        assert!(matches!(parse_trust(&hex), Ok(Trust::Fingerprint(_))));
        let short = parse_trust("sha256:abcd").err().unwrap();
        assert!(short.contains("not a certificate fingerprint"), "{short}");
        let missing = parse_trust("/nonexistent/ca.pem").err().unwrap();
        assert!(
            missing.contains("cannot use /nonexistent/ca.pem"),
            "{missing}"
        );
    }

    #[test]
    fn relay_and_id_answers() {
        assert!(parse_relay("relay.example.com:443").is_ok());
        let bad = parse_relay("relay.example.com").err().unwrap();
        assert!(bad.contains("is not host:port"), "{bad}");
        assert!(parse_id("pc-01").is_ok());
        assert!(parse_id("no spaces!").is_err());
    }

    #[test]
    fn refusals_send_back_to_the_question_that_can_fix_them() {
        let again = |code| ask_again(&AgentError::Refused(code));
        assert!(matches!(again(ErrorCode::BadToken), Some(AskAgain::Token)));
        assert!(matches!(
            again(ErrorCode::TokenRequired),
            Some(AskAgain::Token)
        ));
        assert!(matches!(again(ErrorCode::IdTaken), Some(AskAgain::Id)));
        assert!(again(ErrorCode::Internal).is_none());
        assert_eq!(flag_pair(true, false), Some(true));
        assert_eq!(flag_pair(false, true), Some(false));
        assert_eq!(flag_pair(false, false), None);
    }
}
