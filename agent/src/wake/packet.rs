//! MAC addresses and the Wake-on-LAN magic packet. Pure: no sockets here.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Bytes of a magic packet: 6 × `0xFF`, then the MAC 16 times.
pub const MAGIC_PACKET_LEN: usize = 6 + 16 * 6;

/// A 48-bit Ethernet (MAC) address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

/// Why a MAC address was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacError {
    /// Not six groups of two hex digits.
    #[error(
        "{0:?} is not a MAC address: write six pairs of hex digits separated by ':' or '-', \
         as in AA:BB:CC:DD:EE:FF"
    )]
    Malformed(String),
    /// The broadcast or a multicast address: a network card has neither as its own.
    #[error("{0} is a broadcast or multicast address, not a network card's own address")]
    NotUnicast(Mac),
    /// All zeros.
    #[error("00:00:00:00:00:00 is not a network card's address")]
    Zero,
}

impl FromStr for Mac {
    type Err = MacError;

    /// Accepts `AA:BB:CC:DD:EE:FF` and `aa-bb-cc-dd-ee-ff` (either case, one separator
    /// throughout).
    ///
    /// ```
    /// use telework_agent::wake::packet::Mac;
    /// let mac: Mac = "aa-bb-cc-dd-ee-0f".parse().unwrap();
    /// assert_eq!(mac.to_string(), "AA:BB:CC:DD:EE:0F");
    /// assert!("AA:BB:CC:DD:EE".parse::<Mac>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, MacError> {
        let bad = || MacError::Malformed(s.chars().take(40).collect());
        let sep = if s.contains(':') { ':' } else { '-' };
        let mut out = [0u8; 6];
        let mut groups = s.split(sep);
        for byte in &mut out {
            let group = groups.next().ok_or_else(bad)?;
            if group.len() != 2 || !group.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *byte = u8::from_str_radix(group, 16).map_err(|_| bad())?;
        }
        if groups.next().is_some() {
            return Err(bad());
        }
        let mac = Mac(out);
        if out == [0; 6] {
            return Err(MacError::Zero);
        }
        // The group bit (lowest bit of the first byte) marks multicast and broadcast.
        if out[0] & 1 == 1 {
            return Err(MacError::NotUnicast(mac));
        }
        Ok(mac)
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02X}:{b:02X}:{c:02X}:{d:02X}:{e:02X}:{g:02X}")
    }
}

impl Serialize for Mac {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The magic packet that wakes the card `mac`: 6 bytes of `0xFF`, then `mac` 16 times.
///
/// ```
/// use telework_agent::wake::packet::{magic_packet, Mac};
/// let p = magic_packet(Mac([1, 2, 3, 4, 5, 6]));
/// assert_eq!(p.len(), 102);
/// assert_eq!(&p[..8], &[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2]);
/// ```
pub fn magic_packet(mac: Mac) -> [u8; MAGIC_PACKET_LEN] {
    let mut p = [0xFF; MAGIC_PACKET_LEN];
    for chunk in p[6..].chunks_exact_mut(6) {
        chunk.copy_from_slice(&mac.0);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packet_is_the_known_layout() {
        let mac = Mac([0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0xFF]);
        let p = magic_packet(mac);
        assert_eq!(p.len(), 102);
        assert_eq!(p[..6], [0xFF; 6]);
        for i in 0..16 {
            let at = 6 + i * 6;
            assert_eq!(p[at..at + 6], mac.0, "repeat {i}");
        }
        // The same bytes, spelled out the way `wakeonlan` and `etherwake` build them.
        let mut expected = vec![0xFF; 6];
        for _ in 0..16 {
            expected.extend_from_slice(&[0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0xFF]);
        }
        assert_eq!(p.to_vec(), expected);
    }

    #[test]
    fn both_spellings_and_either_case_parse() {
        let want = Mac([0xA0, 0xBB, 0xCC, 0xDD, 0xEE, 0xFF]);
        for s in [
            "A0:BB:CC:DD:EE:FF",
            "a0:bb:cc:dd:ee:ff",
            "a0-bb-cc-dd-ee-ff",
            "A0-bB-Cc-DD-ee-FF",
        ] {
            assert_eq!(s.parse::<Mac>(), Ok(want), "{s}");
        }
        assert_eq!(want.to_string(), "A0:BB:CC:DD:EE:FF");
    }

    #[test]
    fn bad_input_gets_a_clear_error() {
        for s in [
            "",
            "AA:BB:CC:DD:EE",
            "AA:BB:CC:DD:EE:FF:00",
            "AA:BB:CC:DD:EE:GG",
            "AA-BB:CC:DD:EE:FF",
            "AABBCCDDEEFF",
            "A:BB:CC:DD:EE:FFF",
            "+A:BB:CC:DD:EE:FF",
            "AA::CC:DD:EE:FF",
        ] {
            let e = s.parse::<Mac>().unwrap_err();
            assert!(
                matches!(e, MacError::Malformed(_)) && e.to_string().contains("AA:BB:CC:DD:EE:FF"),
                "{s}: {e}"
            );
        }
        assert_eq!("00:00:00:00:00:00".parse::<Mac>(), Err(MacError::Zero));
        let e = "FF:FF:FF:FF:FF:FF".parse::<Mac>().unwrap_err();
        assert!(e.to_string().contains("broadcast"), "{e}");
        assert!(matches!(
            "01:00:5E:00:00:01".parse::<Mac>(),
            Err(MacError::NotUnicast(_))
        ));
        // A huge input is not echoed back whole.
        let long = "x".repeat(10_000);
        assert!(long.parse::<Mac>().unwrap_err().to_string().len() < 200);
    }
}
