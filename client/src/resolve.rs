//! What a connection needs besides the computer ID and password, worked out the same way for
//! the command and the window: the relay and how to trust it, the proxy, and the name IT staff
//! see for this device.

use std::path::Path;

use telework_net::connect::RelayAddr;
use telework_net::proxy::{ProxyConfigError, ProxyEnv, ProxySetting, ProxyUrl};
use telework_net::tls::{RelayTrust, TlsConfigError};
use telework_net::transport::TransportChoice;
use telework_protocol::CertFingerprint;

use crate::settings::Settings;

/// Why the relay or proxy to connect through cannot be worked out. No variant repeats a
/// proxy's text, which may hold a password.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// No relay was given and none is saved.
    #[error(
        "no relay is set: run 'telework config import tw-relay:…' with the line from your IT \
         staff once, or pass --relay HOST:PORT"
    )]
    NoRelay,
    /// The relay's CA file (given or saved) cannot be used.
    #[error(transparent)]
    Trust(#[from] TlsConfigError),
    /// `--proxy` is not a proxy setting.
    #[error("--proxy: {0}")]
    ProxyFlag(telework_net::proxy::BadProxyUrl),
    /// The saved proxy is not a proxy setting.
    #[error("the saved proxy (telework config show): {0}")]
    SavedProxy(telework_net::proxy::BadProxyUrl),
    /// The proxy cannot be used this way (for example with `--transport quic`).
    #[error(transparent)]
    Proxy(#[from] ProxyConfigError),
}

/// The relay and how to trust it: the flags, else the saved relay. A saved pin applies only
/// to the saved relay, never to another one given with `--relay`.
///
/// # Errors
/// [`ResolveError::NoRelay`] when neither is there; [`ResolveError::Trust`] when a CA file
/// cannot be read.
pub fn relay_and_trust(
    relay: Option<&RelayAddr>,
    fingerprint: Option<&CertFingerprint>,
    ca: Option<&Path>,
    settings: &Settings,
) -> Result<(RelayAddr, RelayTrust), ResolveError> {
    let saved = settings
        .relay
        .as_ref()
        .filter(|saved| relay.is_none_or(|r| *r == saved.addr));
    let addr = match (relay, saved) {
        (Some(relay), _) => relay.clone(),
        (None, Some(saved)) => saved.addr.clone(),
        (None, None) => return Err(ResolveError::NoRelay),
    };
    let trust = match (fingerprint, ca, saved) {
        (Some(fp), _, _) => RelayTrust::Fingerprint(*fp),
        (None, Some(ca), _) => RelayTrust::ca_file(ca)?,
        (None, None, Some(saved)) => saved.trust()?,
        (None, None, None) => RelayTrust::SystemRoots,
    };
    Ok((addr, trust))
}

/// The proxy to go through: `flag` (`--proxy`), else the saved one, else the environment.
/// Checked before the password is asked for.
///
/// # Errors
/// If a proxy setting does not parse, or a proxy would be used with QUIC only.
pub fn proxy(
    flag: Option<&str>,
    settings: &Settings,
    relay: &RelayAddr,
    transport: TransportChoice,
) -> Result<Option<ProxyUrl>, ResolveError> {
    let flag = flag
        .map(str::parse::<ProxySetting>)
        .transpose()
        .map_err(ResolveError::ProxyFlag)?;
    let saved = settings
        .proxy
        .as_deref()
        .map(str::parse::<ProxySetting>)
        .transpose()
        .map_err(ResolveError::SavedProxy)?;
    let proxy = telework_net::proxy::choose(
        flag.as_ref(),
        saved.as_ref(),
        &ProxyEnv::from_process(),
        relay.host(),
    )?;
    match &proxy {
        Some(p) if transport == TransportChoice::Quic => {
            Err(ProxyConfigError::QuicThroughProxy(p.to_string()).into())
        }
        _ => Ok(proxy),
    }
}

/// This computer's name as IT staff see it among a PC's devices.
pub fn device_name() -> String {
    std::env::var("COMPUTERNAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "home-pc".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{SavedRelay, SavedTrust};

    fn saved(addr: &str) -> Settings {
        Settings {
            relay: Some(SavedRelay {
                addr: addr.parse().unwrap(),
                trust: SavedTrust::Fingerprint(CertFingerprint([7; 32])),
            }),
            ..Settings::default()
        }
    }

    #[test]
    fn the_saved_pin_applies_only_to_the_saved_relay() {
        let settings = saved("relay.example.com:443");
        let (addr, trust) = relay_and_trust(None, None, None, &settings).unwrap();
        assert_eq!(addr.to_string(), "relay.example.com:443");
        assert!(matches!(
            trust,
            RelayTrust::Fingerprint(CertFingerprint([7, ..]))
        ));
        let other: RelayAddr = "other.example.com:443".parse().unwrap();
        let (_, trust) = relay_and_trust(Some(&other), None, None, &settings).unwrap();
        assert!(matches!(trust, RelayTrust::SystemRoots));
    }

    #[test]
    fn no_relay_says_how_to_set_one() {
        let e = relay_and_trust(None, None, None, &Settings::default()).unwrap_err();
        assert!(e.to_string().contains("telework config import"), "{e}");
    }
}
