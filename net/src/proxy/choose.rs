//! Which proxy, if any, to dial the relay through: the `--proxy` flag, then the agent's
//! settings file, then the environment (`HTTPS_PROXY`, `ALL_PROXY`, `NO_PROXY`), as other
//! command-line tools read them. `--proxy none` (or `proxy = "none"` in the settings) means
//! "no proxy, whatever the environment says".

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use super::url::{BadProxyUrl, ProxyUrl};

/// The variables naming a proxy, in the order they are read: the first one set wins.
pub const PROXY_VARS: [&str; 4] = ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"];

/// The variables listing hosts to reach without a proxy.
pub const NO_PROXY_VARS: [&str; 2] = ["NO_PROXY", "no_proxy"];

/// What a flag or a settings file says about the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxySetting {
    /// `none`: connect directly and ignore the environment.
    Direct,
    /// Go through this proxy.
    Via(ProxyUrl),
}

impl FromStr for ProxySetting {
    type Err = BadProxyUrl;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().eq_ignore_ascii_case("none") {
            Ok(Self::Direct)
        } else {
            s.parse().map(Self::Via)
        }
    }
}

/// The proxy variables of an environment, read once (tests pass their own).
#[derive(Clone, Default)]
pub struct ProxyEnv {
    /// The first proxy variable set, and its value.
    proxy: Option<(&'static str, String)>,
    /// `NO_PROXY`'s value.
    no_proxy: Option<String>,
}

impl ProxyEnv {
    /// The variables of this process.
    pub fn from_process() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// The variables `lookup` gives (empty values count as unset).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let set = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        Self {
            proxy: PROXY_VARS
                .iter()
                .find_map(|&name| set(name).map(|v| (name, v))),
            no_proxy: NO_PROXY_VARS.iter().find_map(|&name| set(name)),
        }
    }
}

/// Only which variable is set: its value may hold a password.
impl fmt::Debug for ProxyEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyEnv")
            .field("proxy", &self.proxy.as_ref().map(|(name, _)| *name))
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}

/// A proxy configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyConfigError {
    /// A proxy variable holds something that is not a proxy address.
    #[error("the proxy in {var} is not usable: {error}")]
    Env {
        /// The variable.
        var: &'static str,
        /// What is wrong (the value is not repeated: it may hold a password).
        error: BadProxyUrl,
    },
    /// The settings file's proxy is not a proxy address.
    #[error("the proxy in the settings file is not usable: {0}")]
    Settings(BadProxyUrl),
    /// QUIC only, but a proxy carries TCP only.
    #[error(
        "--transport quic cannot go through the proxy at {0}, which carries TCP only: use \
         --transport auto or tcp, or --proxy none"
    )]
    QuicThroughProxy(String),
}

/// The proxy to reach `relay_host` through: `flag` if given, else `saved` (the settings
/// file), else the environment unless `NO_PROXY` lists the host. `NO_PROXY` applies only to
/// a proxy from the environment: a proxy someone named on purpose is always used.
///
/// # Errors
/// [`ProxyConfigError::Env`] when the environment's proxy is not a proxy address.
pub fn choose(
    flag: Option<&ProxySetting>,
    saved: Option<&ProxySetting>,
    env: &ProxyEnv,
    relay_host: &str,
) -> Result<Option<ProxyUrl>, ProxyConfigError> {
    match flag.or(saved) {
        Some(ProxySetting::Direct) => return Ok(None),
        Some(ProxySetting::Via(url)) => return Ok(Some(url.clone())),
        None => {}
    }
    let Some((var, value)) = &env.proxy else {
        return Ok(None);
    };
    if env
        .no_proxy
        .as_deref()
        .is_some_and(|list| no_proxy_matches(list, relay_host))
    {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|error| ProxyConfigError::Env { var, error })
}

/// Whether a `NO_PROXY` list (comma-separated) names `host`: `*` names every host, an IP
/// address names itself, and a name (with or without a leading dot) names itself and every
/// host under it. Case does not matter; ports in entries are ignored.
pub fn no_proxy_matches(list: &str, host: &str) -> bool {
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let host_ip = host.parse::<IpAddr>().ok();
    list.split(',').map(str::trim).any(|entry| {
        if entry == "*" {
            return true;
        }
        let entry = strip_port(entry).to_ascii_lowercase();
        if let Ok(ip) = entry.parse::<IpAddr>() {
            return host_ip == Some(ip);
        }
        let entry = entry.trim_start_matches("*.").trim_start_matches('.');
        !entry.is_empty()
            && host_ip.is_none()
            && (host == entry
                || host
                    .strip_suffix(entry)
                    .is_some_and(|prefix| prefix.ends_with('.')))
    })
}

/// `host:port` → `host`, `[v6]:port` → `v6`; a bare IPv6 address stays whole.
fn strip_port(entry: &str) -> &str {
    if let Some(v6) = entry.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    match entry.split_once(':') {
        Some((host, port)) if !port.contains(':') => host,
        _ => entry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> ProxyEnv {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ProxyEnv::from_lookup(|name| map.get(name).cloned())
    }

    fn setting(s: &str) -> ProxySetting {
        s.parse().unwrap()
    }

    fn chosen(r: Result<Option<ProxyUrl>, ProxyConfigError>) -> Option<String> {
        r.unwrap().map(|p| p.to_string())
    }

    #[test]
    fn flag_beats_settings_beats_environment() {
        let e = env(&[("HTTPS_PROXY", "http://from-env:1")]);
        let flag = setting("http://from-flag:2");
        let saved = setting("http://from-settings:3");
        assert_eq!(
            chosen(choose(Some(&flag), Some(&saved), &e, "relay")),
            Some("from-flag:2".into())
        );
        assert_eq!(
            chosen(choose(None, Some(&saved), &e, "relay")),
            Some("from-settings:3".into())
        );
        assert_eq!(
            chosen(choose(None, None, &e, "relay")),
            Some("from-env:1".into())
        );
        assert_eq!(chosen(choose(None, None, &env(&[]), "relay")), None);
    }

    #[test]
    fn none_ignores_the_environment() {
        let e = env(&[("HTTPS_PROXY", "http://from-env:1")]);
        let none = setting("none");
        assert_eq!(chosen(choose(Some(&none), None, &e, "relay")), None);
        assert_eq!(chosen(choose(None, Some(&none), &e, "relay")), None);
        // A flag overrides a saved "none".
        let flag = setting("http://p:2");
        assert_eq!(
            chosen(choose(Some(&flag), Some(&none), &e, "relay")),
            Some("p:2".into())
        );
    }

    #[test]
    fn variables_in_order() {
        let e = env(&[
            ("https_proxy", "http://lower:1"),
            ("ALL_PROXY", "http://all:2"),
        ]);
        assert_eq!(
            chosen(choose(None, None, &e, "relay")),
            Some("lower:1".into())
        );
        let e = env(&[("all_proxy", "http://all:2"), ("HTTPS_PROXY", "")]);
        assert_eq!(
            chosen(choose(None, None, &e, "relay")),
            Some("all:2".into())
        );
        // HTTP_PROXY is for plain http:// URLs; the relay is always TLS.
        assert_eq!(
            chosen(choose(
                None,
                None,
                &env(&[("HTTP_PROXY", "http://h:1")]),
                "relay"
            )),
            None
        );
    }

    #[test]
    fn no_proxy_applies_to_the_environment_only() {
        let e = env(&[("HTTPS_PROXY", "http://p:1"), ("no_proxy", "relay.example")]);
        assert_eq!(chosen(choose(None, None, &e, "relay.example")), None);
        assert_eq!(
            chosen(choose(None, None, &e, "other.example")),
            Some("p:1".into())
        );
        let flag = setting("http://p:1");
        assert_eq!(
            chosen(choose(Some(&flag), None, &e, "relay.example")),
            Some("p:1".into())
        );
    }

    #[test]
    fn no_proxy_matching() {
        let list = "localhost, .corp.example,Example.ORG, 10.1.2.3, [::1]:443, host:8443";
        for host in [
            "localhost",
            "a.corp.example",
            "corp.example",
            "example.org",
            "relay.example.org.",
            "10.1.2.3",
            "::1",
            "[::1]",
            "host",
        ] {
            assert!(no_proxy_matches(list, host), "{host}");
        }
        for host in [
            "notcorp.example",
            "example.com",
            "10.1.2.4",
            "::2",
            "xlocalhost",
        ] {
            assert!(!no_proxy_matches(list, host), "{host}");
        }
        assert!(no_proxy_matches("*", "anything"));
        assert!(no_proxy_matches("*.corp.example", "relay.corp.example"));
        assert!(!no_proxy_matches("", "relay"));
        assert!(!no_proxy_matches(" , .", "relay"));
        // A name never matches an address and the other way round.
        assert!(!no_proxy_matches("1", "10.0.0.1"));
    }

    #[test]
    fn a_bad_variable_is_named_without_its_value() {
        let e = env(&[("HTTPS_PROXY", "socks5://user:secret@p:1")]);
        let err = choose(None, None, &e, "relay").unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("the proxy in HTTPS_PROXY is not usable"),
            "{text}"
        );
        assert!(!text.contains("secret"));
        assert!(!format!("{e:?}").contains("secret"));
    }
}
