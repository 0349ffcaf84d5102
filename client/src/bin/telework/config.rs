//! `telework config`: the relay, its trust and the proxy, saved once so that `telework
//! connect ID` needs nothing else.

use std::path::PathBuf;

use clap::Subcommand;
use telework_client::settings::{proxy_for_display, RelayTrustSetting, SavedTrust, Settings};
use telework_net::connect::RelayAddr;
use telework_net::proxy::ProxySetting;
use telework_net::relay_profile::RelayProfile;
use telework_protocol::proof::key_fingerprint;
use telework_protocol::CertFingerprint;

#[derive(clap::Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    command: ConfigCommand,
    /// Profile directory [default: the user's config dir].
    #[arg(long, env = "TELEWORK_CONFIG_DIR", global = true)]
    config_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the saved settings, the recent computer IDs and this device's fingerprint.
    Show,
    /// Save the relay (and how to trust it) or the proxy.
    #[command(subcommand)]
    Set(SetCommand),
    /// Save the relay from the one line your relay operator gave you (tw-relay:…).
    Import {
        /// The line, starting with tw-relay:.
        line: String,
    },
    /// Remove a saved setting.
    Unset {
        /// Which one.
        #[arg(value_enum)]
        what: Unset,
    },
}

#[derive(Subcommand)]
enum SetCommand {
    /// The relay, host:port, and how to trust its certificate (the system's roots unless
    /// told otherwise).
    Relay {
        /// The relay, host:port.
        addr: RelayAddr,
        /// Pin the relay's self-signed certificate (sha256:HEX from the operator).
        #[arg(long)]
        relay_fingerprint: Option<CertFingerprint>,
        /// Trust a private CA for the relay's certificate (PEM file; a copy is kept).
        #[arg(long, conflicts_with = "relay_fingerprint")]
        relay_ca: Option<PathBuf>,
        /// Also save this proxy (as 'config set proxy').
        #[arg(long, value_name = "URL")]
        proxy: Option<String>,
    },
    /// The HTTP proxy, http://[user:password@]host:port, or 'none' to ignore HTTPS_PROXY and
    /// ALL_PROXY.
    Proxy {
        /// The proxy URL, or none.
        url: String,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Unset {
    /// The relay and its trust.
    Relay,
    /// The proxy (the environment's applies again).
    Proxy,
    /// The list of recent computer IDs.
    Recent,
}

/// Parses `url` as a proxy setting, without repeating it (it may hold a password).
fn checked_proxy(url: &str) -> anyhow::Result<String> {
    url.parse::<ProxySetting>()
        .map_err(|e| anyhow::anyhow!("--proxy: {e}"))?;
    Ok(url.trim().to_owned())
}

pub fn run(args: ConfigArgs) -> anyhow::Result<()> {
    let profile = crate::open_profile(args.config_dir)?;
    match args.command {
        ConfigCommand::Show => {
            let settings = profile.settings()?;
            let device = key_fingerprint(&profile.device_key()?.public_key());
            print!(
                "{}",
                describe(&settings, &profile.dir().display().to_string(), &device)
            );
        }
        ConfigCommand::Set(SetCommand::Relay {
            addr,
            relay_fingerprint,
            relay_ca,
            proxy,
        }) => {
            let proxy = proxy.as_deref().map(checked_proxy).transpose()?;
            let trust = match (relay_fingerprint, relay_ca) {
                (Some(fp), _) => RelayTrustSetting::Fingerprint(fp),
                (None, Some(ca)) => RelayTrustSetting::CaFile(ca),
                (None, None) => RelayTrustSetting::SystemRoots,
            };
            let mut settings = profile.set_relay(addr, trust)?;
            if proxy.is_some() {
                settings.proxy = proxy;
                profile.save_settings(&settings)?;
            }
            print!("saved. ");
            print!("{}", describe_relay(&settings));
            println!("now connect with: telework connect COMPUTER-ID");
        }
        ConfigCommand::Set(SetCommand::Proxy { url }) => {
            let mut settings = profile.settings()?;
            settings.proxy = Some(checked_proxy(&url)?);
            profile.save_settings(&settings)?;
            println!("saved. proxy: {}", proxy_for_display(&url));
        }
        ConfigCommand::Import { line } => {
            let line: RelayProfile = line.parse()?;
            let settings = profile.import(line)?;
            print!("saved. ");
            print!("{}", describe_relay(&settings));
            println!("now connect with: telework connect COMPUTER-ID");
        }
        ConfigCommand::Unset { what } => {
            let mut settings = profile.settings()?;
            match what {
                Unset::Relay => settings.relay = None,
                Unset::Proxy => settings.proxy = None,
                Unset::Recent => settings.recent.clear(),
            }
            profile.save_settings(&settings)?;
            println!("removed");
        }
    }
    Ok(())
}

fn describe_relay(settings: &Settings) -> String {
    match &settings.relay {
        None => "relay: not set (telework config import tw-relay:…)\n".to_owned(),
        Some(relay) => {
            let trust = match &relay.trust {
                SavedTrust::SystemRoots => {
                    "certificate checked against this system's roots".to_owned()
                }
                SavedTrust::Fingerprint(fp) => format!("certificate pinned to {fp}"),
                SavedTrust::Ca(path) => {
                    format!("certificate checked against the CA in {}", path.display())
                }
            };
            format!("relay: {} ({trust})\n", relay.addr)
        }
    }
}

fn describe(settings: &Settings, dir: &str, device: &str) -> String {
    let proxy = match &settings.proxy {
        Some(p) => proxy_for_display(p),
        None => "from the environment (HTTPS_PROXY, ALL_PROXY, NO_PROXY), if set".to_owned(),
    };
    let recent = if settings.recent.is_empty() {
        "none yet".to_owned()
    } else {
        settings
            .recent
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "profile: {dir}\n{}proxy: {proxy}\nrecent computer IDs: {recent}\nthis device: {device} \
         (read this to IT staff if they approve devices)\n",
        describe_relay(settings)
    )
}
