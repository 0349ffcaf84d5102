//! A web proxy's address as people write it: `http://[user:password@]host[:port]`, with the
//! password kept out of every `Display` and `Debug`.

use std::fmt;
use std::str::FromStr;

use percent_encoding::percent_decode_str;
use zeroize::Zeroizing;

/// The port of a proxy address that names none (the `http` scheme's own).
pub const DEFAULT_PROXY_PORT: u16 = 80;

/// An HTTP proxy: where it is and, for Basic authentication, who we are.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    host: String,
    port: u16,
    credentials: Option<Credentials>,
}

/// A user name and password for the proxy (percent-decoded).
#[derive(Clone, PartialEq, Eq)]
struct Credentials {
    user: String,
    password: Zeroizing<String>,
}

/// Why text is not a usable proxy address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadProxyUrl {
    /// Not `http://[user:password@]host:port`.
    #[error(
        "a proxy address looks like http://host:port or http://user:password@host:port, for \
         example http://proxy.example:3128 (or 'none' for no proxy)"
    )]
    Malformed,
    /// A scheme other than `http`.
    #[error(
        "only http:// proxies are supported ({0}:// is not); the connection through the proxy \
         is still TLS to the relay"
    )]
    Scheme(String),
}

impl FromStr for ProxyUrl {
    type Err = BadProxyUrl;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let rest = match s.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) => {
                let scheme: String = scheme.chars().take(16).collect();
                return Err(BadProxyUrl::Scheme(scheme.to_ascii_lowercase()));
            }
            None => s,
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, rest),
        };
        let credentials = userinfo.map(credentials).transpose()?;
        let (host, port) = host_port(hostport)?;
        Ok(Self {
            host,
            port,
            credentials,
        })
    }
}

fn credentials(userinfo: &str) -> Result<Credentials, BadProxyUrl> {
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let decode = |part: &str| {
        percent_decode_str(part)
            .decode_utf8()
            .map(|text| text.into_owned())
            .map_err(|_| BadProxyUrl::Malformed)
    };
    let user = decode(user)?;
    // A colon in the user name cannot be told apart from the password's colon in Basic.
    if user.is_empty() || user.contains(':') {
        return Err(BadProxyUrl::Malformed);
    }
    Ok(Credentials {
        user,
        password: Zeroizing::new(decode(password)?),
    })
}

fn host_port(hostport: &str) -> Result<(String, u16), BadProxyUrl> {
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or(BadProxyUrl::Malformed)?;
        host.parse::<std::net::Ipv6Addr>()
            .map_err(|_| BadProxyUrl::Malformed)?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or(BadProxyUrl::Malformed)?),
        };
        (host, port)
    } else {
        match hostport.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (hostport, None),
        }
    };
    let name_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':');
    if host.is_empty() || !host.chars().all(name_ok) {
        return Err(BadProxyUrl::Malformed);
    }
    let port = match port {
        None => DEFAULT_PROXY_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(port) if port != 0 => port,
            _ => return Err(BadProxyUrl::Malformed),
        },
    };
    Ok((host.to_owned(), port))
}

impl ProxyUrl {
    /// The host name or address, without brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user name and password for Basic authentication, if any were given.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|c| (c.user.as_str(), c.password.as_str()))
    }
}

/// `host:port` only: what a person may read in messages and logs (never the password).
impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyUrl")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.credentials.as_ref().map(|c| c.user.as_str()))
            .field("password", &self.credentials.as_ref().map(|_| "MASKED"))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_people_write() {
        let p: ProxyUrl = "http://proxy.example:3128".parse().unwrap();
        assert_eq!(
            (p.host(), p.port(), p.credentials()),
            ("proxy.example", 3128, None)
        );
        let p: ProxyUrl = "proxy.example:8080/".parse().unwrap();
        assert_eq!((p.host(), p.port()), ("proxy.example", 8080));
        let p: ProxyUrl = "HTTP://10.0.0.1".parse().unwrap();
        assert_eq!((p.host(), p.port()), ("10.0.0.1", DEFAULT_PROXY_PORT));
        let p: ProxyUrl = "http://[::1]:3128".parse().unwrap();
        assert_eq!((p.host(), p.to_string().as_str()), ("::1", "[::1]:3128"));
    }

    #[test]
    fn credentials_are_percent_decoded() {
        let p: ProxyUrl = "http://tanaka%40corp:p%3Ass%20w%40rd@proxy:3128"
            .parse()
            .unwrap();
        assert_eq!(p.credentials(), Some(("tanaka@corp", "p:ss w@rd")));
        // The last '@' separates the host, so an unencoded '@' in the password still works.
        let p: ProxyUrl = "http://u:p@ss@proxy:3128".parse().unwrap();
        assert_eq!(p.credentials(), Some(("u", "p@ss")));
        let p: ProxyUrl = "http://u@proxy:3128".parse().unwrap();
        assert_eq!(p.credentials(), Some(("u", "")));
    }

    #[test]
    fn the_password_never_shows() {
        let p: ProxyUrl = "http://user:hunter2@proxy:3128".parse().unwrap();
        assert_eq!(p.to_string(), "proxy:3128");
        let debug = format!("{p:?}");
        assert!(debug.contains("MASKED") && debug.contains("user"));
        assert!(!debug.contains("hunter2"));
    }

    #[test]
    fn bad_addresses_are_refused_precisely() {
        for bad in [
            "",
            "http://",
            "http://:3128",
            "http://proxy:0",
            "http://proxy:99999",
            "http://proxy:3128/path",
            "http://pro xy:3128",
            "http://:pw@proxy:3128",
            "http://a%3Ab:pw@proxy:3128",
            "http://u:%ff@proxy:3128",
            "http://[nonsense]:3128",
        ] {
            assert_eq!(
                bad.parse::<ProxyUrl>(),
                Err(BadProxyUrl::Malformed),
                "{bad}"
            );
        }
        assert_eq!(
            "https://proxy:3128".parse::<ProxyUrl>(),
            Err(BadProxyUrl::Scheme("https".into()))
        );
        assert_eq!(
            "socks5://proxy:1080".parse::<ProxyUrl>(),
            Err(BadProxyUrl::Scheme("socks5".into()))
        );
    }
}
