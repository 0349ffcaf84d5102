//! Reaching the relay through an HTTP proxy with `CONNECT` (TLS/TCP only: a web proxy does
//! not carry QUIC's UDP).
//!
//! - [`url`]: the proxy's address, `http://[user:password@]host:port`, password masked.
//! - [`choose`]: `--proxy`, the settings file and `HTTPS_PROXY`/`ALL_PROXY`/`NO_PROXY`, in that
//!   order, with `none` to ignore the environment.
//! - [`tunnel`]: TCP to the proxy, `CONNECT`, and its answer read with a size cap and a
//!   deadline (the parser is `telework_protocol::http_connect`).
//! - [`error`]: what went wrong, in sentences that name the proxy.

pub mod choose;
pub mod error;
pub mod tunnel;
pub mod url;

pub use choose::{choose, ProxyConfigError, ProxyEnv, ProxySetting};
pub use error::ProxyError;
pub use url::{BadProxyUrl, ProxyUrl};
