//! HTTP CONNECT through a web proxy, without IO: the request to send and an incremental,
//! bounded parser for the proxy's answer.
//!
//! The dialler in `telework-net` writes [`connect_request`], feeds what it reads to a
//! [`ResponseParser`] until it returns a [`ConnectResponse`], and then speaks TLS to the relay
//! through the tunnel, starting with [`ConnectResponse::rest`] (bytes the proxy sent after its
//! header, which belong to the tunnel).
//!
//! ```
//! use telework_protocol::http_connect::{connect_request, ResponseParser};
//!
//! let request = connect_request("relay.example:443", None).unwrap();
//! assert!(request.starts_with(b"CONNECT relay.example:443 HTTP/1.1\r\n"));
//!
//! let mut parser = ResponseParser::new();
//! assert!(parser.feed(b"HTTP/1.1 200 Connection est").unwrap().is_none());
//! let answer = parser.feed(b"ablished\r\n\r\n\x16\x03").unwrap().unwrap();
//! assert_eq!(answer.status, 200);
//! assert_eq!(answer.rest, b"\x16\x03");
//! ```

use base64::Engine as _;

/// The most header bytes a proxy may send before its answer is refused: a CONNECT answer is a
/// status line and a few headers, and a proxy that sends more is not one we can talk to.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;

/// The most characters of a proxy's reason phrase kept for a person to read.
const MAX_REASON_CHARS: usize = 100;

/// The most `Proxy-Authenticate` schemes remembered (each is one header line).
const MAX_AUTH_SCHEMES: usize = 8;

/// Why a CONNECT request could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The target is not a plain `host:port` (spaces or control characters would let it
    /// smuggle headers into the request).
    #[error("the relay address cannot be sent to a proxy")]
    BadTarget,
    /// A user name with a colon cannot be sent with Basic authentication.
    #[error("a proxy user name cannot contain ':'")]
    ColonInUser,
}

/// Why a proxy's answer could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    /// The header did not end within [`MAX_HEADER_BYTES`].
    #[error("its answer's header is longer than {MAX_HEADER_BYTES} bytes")]
    TooLong,
    /// The first line is not `HTTP/1.x NNN reason`.
    #[error("its answer does not start with an HTTP/1 status line")]
    BadStatusLine,
    /// A header line has no colon.
    #[error("its answer has a malformed header line")]
    BadHeader,
    /// The parser was fed again after it returned the answer.
    #[error("its answer was already complete")]
    AlreadyComplete,
}

/// The proxy's answer to CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectResponse {
    /// The status code (2xx: the tunnel is open).
    pub status: u16,
    /// The reason phrase, with control characters replaced and cut to a readable length.
    pub reason: String,
    /// The schemes the proxy offered in `Proxy-Authenticate` (`Basic`, `Negotiate`, …).
    pub auth_schemes: Vec<String>,
    /// Bytes after the end of the header in the last input fed: the start of the tunnel.
    pub rest: Vec<u8>,
}

impl ConnectResponse {
    /// Whether the proxy opened the tunnel.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// Whether the proxy offered Basic authentication (or named no scheme at all).
    pub fn offers_basic(&self) -> bool {
        self.auth_schemes.is_empty()
            || self
                .auth_schemes
                .iter()
                .any(|s| s.eq_ignore_ascii_case("basic"))
    }
}

/// The bytes of `CONNECT authority HTTP/1.1` with its `Host` header and, when `credentials`
/// (user, password) are given, `Proxy-Authorization: Basic`.
///
/// # Errors
/// [`RequestError`] when `authority` has spaces or control characters, or the user name a
/// colon.
pub fn connect_request(
    authority: &str,
    credentials: Option<(&str, &str)>,
) -> Result<Vec<u8>, RequestError> {
    if authority.is_empty()
        || authority
            .bytes()
            .any(|b| b.is_ascii_control() || b == b' ' || b >= 0x80)
    {
        return Err(RequestError::BadTarget);
    }
    let mut out = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some((user, password)) = credentials {
        if user.contains(':') {
            return Err(RequestError::ColonInUser);
        }
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        out.push_str("Proxy-Authorization: Basic ");
        out.push_str(&token);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    Ok(out.into_bytes())
}

/// Reads a proxy's answer from pieces of any size; holds at most [`MAX_HEADER_BYTES`].
#[derive(Debug, Default)]
pub struct ResponseParser {
    /// Header bytes so far.
    header: Vec<u8>,
    /// Where the current line starts in `header`.
    line_start: usize,
    /// The parsed status line, once its line ended.
    status: Option<(u16, String)>,
    auth_schemes: Vec<String>,
    done: bool,
}

impl ResponseParser {
    /// A parser waiting for the first byte.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the next bytes read from the proxy. `Ok(None)` means the header has not ended
    /// yet; `Ok(Some(answer))` carries the bytes of `input` after the header in
    /// [`ConnectResponse::rest`].
    ///
    /// # Errors
    /// [`ResponseError`] for a header that is too long or not HTTP/1, or when fed again after
    /// the answer was returned.
    pub fn feed(&mut self, input: &[u8]) -> Result<Option<ConnectResponse>, ResponseError> {
        if self.done {
            return Err(ResponseError::AlreadyComplete);
        }
        for (i, &byte) in input.iter().enumerate() {
            if self.header.len() >= MAX_HEADER_BYTES {
                return Err(ResponseError::TooLong);
            }
            self.header.push(byte);
            if byte != b'\n' {
                continue;
            }
            let end = self.header.len() - 1;
            let line = &self.header[self.line_start..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                let (status, reason) = self.status.take().ok_or(ResponseError::BadStatusLine)?;
                self.done = true;
                return Ok(Some(ConnectResponse {
                    status,
                    reason,
                    auth_schemes: std::mem::take(&mut self.auth_schemes),
                    rest: input[i + 1..].to_vec(),
                }));
            }
            if self.status.is_none() {
                self.status = Some(status_line(line)?);
            } else {
                header_line(line, &mut self.auth_schemes)?;
            }
            self.line_start = self.header.len();
        }
        Ok(None)
    }
}

/// `HTTP/1.x NNN reason` (the reason may be empty or missing).
fn status_line(line: &[u8]) -> Result<(u16, String), ResponseError> {
    let rest = line
        .strip_prefix(b"HTTP/1.")
        .ok_or(ResponseError::BadStatusLine)?;
    let [minor, b' ', d1, d2, d3, tail @ ..] = rest else {
        return Err(ResponseError::BadStatusLine);
    };
    if !minor.is_ascii_digit() || ![d1, d2, d3].iter().all(|d| d.is_ascii_digit()) {
        return Err(ResponseError::BadStatusLine);
    }
    let status = u16::from(d1 - b'0') * 100 + u16::from(d2 - b'0') * 10 + u16::from(d3 - b'0');
    if !(100..=599).contains(&status) {
        return Err(ResponseError::BadStatusLine);
    }
    let reason = match tail {
        [] => &[][..],
        [b' ', reason @ ..] => reason,
        _ => return Err(ResponseError::BadStatusLine),
    };
    Ok((status, readable(reason)))
}

/// Checks a header line and remembers `Proxy-Authenticate` schemes.
fn header_line(line: &[u8], auth_schemes: &mut Vec<String>) -> Result<(), ResponseError> {
    // A folded continuation line (obsolete, but allowed from a proxy) has no name.
    if line.starts_with(b" ") || line.starts_with(b"\t") {
        return Ok(());
    }
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(ResponseError::BadHeader)?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if name.is_empty() || name.iter().any(|b| !b.is_ascii_graphic()) {
        return Err(ResponseError::BadHeader);
    }
    if name.eq_ignore_ascii_case(b"proxy-authenticate") && auth_schemes.len() < MAX_AUTH_SCHEMES {
        let scheme = value
            .split(|b| b.is_ascii_whitespace() || *b == b',')
            .find(|s| !s.is_empty())
            .unwrap_or_default();
        if !scheme.is_empty() {
            auth_schemes.push(readable(scheme));
        }
    }
    Ok(())
}

/// Text a person may read: printable ASCII kept, anything else shown as `?`, cut short.
fn readable(bytes: &[u8]) -> String {
    bytes
        .iter()
        .take(MAX_REASON_CHARS)
        .map(|&b| {
            if b == b' ' || b.is_ascii_graphic() {
                char::from(b)
            } else {
                '?'
            }
        })
        .collect::<String>()
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(bytes: &[u8]) -> Result<Option<ConnectResponse>, ResponseError> {
        ResponseParser::new().feed(bytes)
    }

    #[test]
    fn request_without_and_with_credentials() {
        assert_eq!(
            connect_request("relay.example:443", None).unwrap(),
            b"CONNECT relay.example:443 HTTP/1.1\r\nHost: relay.example:443\r\n\r\n"
        );
        // RFC 7617's example: Aladdin / open sesame.
        assert_eq!(
            connect_request("[::1]:443", Some(("Aladdin", "open sesame"))).unwrap(),
            b"CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n\
              Proxy-Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n\r\n"
        );
    }

    #[test]
    fn request_refuses_smuggled_headers_and_colon_users() {
        assert_eq!(
            connect_request("a:1\r\nX-Evil: 1", None),
            Err(RequestError::BadTarget)
        );
        assert_eq!(connect_request("a b:1", None), Err(RequestError::BadTarget));
        assert_eq!(connect_request("", None), Err(RequestError::BadTarget));
        assert_eq!(
            connect_request("a:1", Some(("u:v", "p"))),
            Err(RequestError::ColonInUser)
        );
    }

    #[test]
    fn typical_answers() {
        let ok = parse_all(
            b"HTTP/1.0 200 Connection established\r\nProxy-agent: tinyproxy/1.11.1\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert!(ok.is_success());
        assert_eq!(ok.reason, "Connection established");
        assert!(ok.rest.is_empty());

        let auth = parse_all(
            b"HTTP/1.1 407 Proxy Authentication Required\r\n\
              Proxy-Authenticate: Negotiate\r\nproxy-authenticate: Basic realm=\"x\"\r\n\
              Content-Length: 0\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(auth.status, 407);
        assert_eq!(auth.auth_schemes, ["Negotiate", "Basic"]);
        assert!(auth.offers_basic());

        let bare = parse_all(b"HTTP/1.1 403\r\n\r\n").unwrap().unwrap();
        assert_eq!((bare.status, bare.reason.as_str()), (403, ""));
        // Bare LF line ends are accepted from a proxy.
        let lf = parse_all(b"HTTP/1.1 502 Bad Gateway\nVia: x\n\n")
            .unwrap()
            .unwrap();
        assert_eq!(lf.status, 502);
    }

    #[test]
    fn byte_by_byte_equals_all_at_once_and_keeps_the_rest() {
        let input = b"HTTP/1.1 200 OK\r\nVia: 1.1 proxy\r\n\r\n\x16\x03\x03rest";
        let whole = parse_all(input).unwrap().unwrap();
        assert_eq!(whole.rest, b"\x16\x03\x03rest");
        let mut parser = ResponseParser::new();
        let mut answer = None;
        let mut rest = Vec::new();
        for (i, b) in input.iter().enumerate() {
            if let Some(a) = parser.feed(std::slice::from_ref(b)).unwrap() {
                answer = Some(a);
                rest.extend_from_slice(&input[i + 1..]);
                break;
            }
        }
        let answer = answer.unwrap();
        assert_eq!((answer.status, answer.reason), (200, "OK".to_owned()));
        assert!(answer.rest.is_empty());
        assert_eq!(rest, whole.rest);
        assert_eq!(parser.feed(b"x"), Err(ResponseError::AlreadyComplete));
    }

    #[test]
    fn bad_answers_are_precise_errors() {
        assert_eq!(
            parse_all(b"SSH-2.0-OpenSSH\r\n"),
            Err(ResponseError::BadStatusLine)
        );
        assert_eq!(
            parse_all(b"HTTP/2 200\r\n"),
            Err(ResponseError::BadStatusLine)
        );
        assert_eq!(
            parse_all(b"HTTP/1.1 20 OK\r\n"),
            Err(ResponseError::BadStatusLine)
        );
        assert_eq!(
            parse_all(b"HTTP/1.1 999 OK\r\n"),
            Err(ResponseError::BadStatusLine)
        );
        assert_eq!(
            parse_all(b"HTTP/1.1 200OK\r\n"),
            Err(ResponseError::BadStatusLine)
        );
        assert_eq!(parse_all(b"\r\n"), Err(ResponseError::BadStatusLine));
        assert_eq!(
            parse_all(b"HTTP/1.1 200 OK\r\nno colon here\r\n"),
            Err(ResponseError::BadHeader)
        );
        // Incomplete is not an error.
        assert_eq!(parse_all(b"HTTP/1.1 200 OK\r\nVia: x"), Ok(None));
    }

    #[test]
    fn header_is_capped() {
        let mut parser = ResponseParser::new();
        assert_eq!(parser.feed(b"HTTP/1.1 200 OK\r\n"), Ok(None));
        let filler = b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
        let mut result = Ok(None);
        for _ in 0..(MAX_HEADER_BYTES / filler.len() + 2) {
            result = parser.feed(filler);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(ResponseError::TooLong));
        // A header of exactly the cap is accepted.
        let mut exact = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        exact.resize(MAX_HEADER_BYTES - 4, b'a');
        exact.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse_all(&exact).unwrap().unwrap().status, 200);
    }

    #[test]
    fn reasons_are_made_readable() {
        let r = parse_all(b"HTTP/1.1 502 Bad\x1b[31m Gateway\xff\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.reason, "Bad?[31m Gateway?");
        let long = [b'a'; 500];
        let mut input = b"HTTP/1.1 500 ".to_vec();
        input.extend_from_slice(&long);
        input.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse_all(&input).unwrap().unwrap().reason.len(), 100);
    }
}
