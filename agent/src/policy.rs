//! Access policy IT staff set on the office PC (`policy.toml` in the data dir).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The agent's access policy. Every field is optional in the file; missing means "off".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Only devices approved with `telework-agent devices approve` may connect.
    #[serde(default)]
    pub require_approved_devices: bool,
    /// End a session after this many seconds without desktop traffic.
    pub idle_timeout_secs: Option<u64>,
    /// End a session after this many seconds, whatever happens (then the password is asked
    /// again); [`DEFAULT_MAX_SESSION`] when not set.
    pub max_session_secs: Option<u64>,
}

/// How long a session lasts at most unless IT staff set another length: a stolen laptop with
/// an open session does not keep the desktop for ever.
pub const DEFAULT_MAX_SESSION: Duration = Duration::from_secs(24 * 3600);

impl Policy {
    /// The idle timeout, if any.
    pub fn idle_timeout(&self) -> Option<Duration> {
        self.idle_timeout_secs
            .filter(|s| *s > 0)
            .map(Duration::from_secs)
    }

    /// The maximum session length: the one set, or [`DEFAULT_MAX_SESSION`].
    pub fn max_session(&self) -> Duration {
        self.max_session_secs
            .filter(|s| *s > 0)
            .map_or(DEFAULT_MAX_SESSION, Duration::from_secs)
    }

    /// The policy in force, one setting a line, defaults named as such (`policy show`).
    pub fn describe(&self) -> String {
        let idle = self
            .idle_timeout()
            .map_or_else(|| "off".to_owned(), human_duration);
        let max = match self.max_session_secs.filter(|s| *s > 0) {
            Some(_) => human_duration(self.max_session()),
            None => format!("{} (default)", human_duration(DEFAULT_MAX_SESSION)),
        };
        format!(
            "require approved devices: {}\nidle timeout: {idle}\nmaximum session: {max}\n",
            if self.require_approved_devices {
                "yes"
            } else {
                "no"
            }
        )
    }
}

/// `90s`, `30m`, `8h`: the largest unit that divides it.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s >= 60 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// Parses durations like `90s`, `30m`, `8h` or a bare number of seconds.
///
/// # Errors
/// A sentence saying what is accepted.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 30m or 8h"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(format!("{text:?} is not a duration like 90s, 30m or 8h")),
    };
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("8h").unwrap(), Duration::from_secs(28_800));
        assert!(parse_duration("8d").is_err());
        assert!(parse_duration("h").is_err());
    }

    #[test]
    fn sessions_are_limited_by_default_and_show_says_so() {
        let p = Policy::default();
        assert_eq!(p.max_session(), DEFAULT_MAX_SESSION);
        assert!(p.describe().contains("maximum session: 24h (default)"));
        let p = Policy {
            max_session_secs: Some(36_000),
            idle_timeout_secs: Some(1800),
            ..Policy::default()
        };
        assert_eq!(p.max_session(), Duration::from_secs(36_000));
        assert!(p.describe().contains("maximum session: 10h\n"));
        assert!(p.describe().contains("idle timeout: 30m\n"));
    }

    #[test]
    fn empty_file_is_all_off_and_unknown_keys_fail() {
        let p: Policy = toml::from_str("").unwrap();
        assert_eq!(p, Policy::default());
        assert!(p.idle_timeout().is_none());
        assert!(toml::from_str::<Policy>("require_devices = true").is_err());
    }
}
