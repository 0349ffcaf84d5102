//! One connection as the window starts it: `telework connect ID --launch …` with the saved
//! settings, worked out before anything is dialled so that a bad setting is one plain line.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use telework_net::transport::TransportChoice;
use telework_protocol::ComputerId;
use zeroize::Zeroizing;

use crate::connection::DesktopOptions;
use crate::launch::LaunchChoice;
use crate::local_peer::LocalAccess;
use crate::profile::Profile;
use crate::resolve;
use crate::session::{LoginOptions, Target};

/// The desktop is offered on loopback only, on a port the system picks, as by default in
/// `telework connect`.
const LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// Everything one connection needs.
pub struct Job {
    /// Where to connect.
    pub target: Target,
    /// The connection password.
    pub password: Zeroizing<String>,
    /// The login's options; the worker fills in `progress` and `totp`.
    pub login: LoginOptions,
    /// How the desktop is offered.
    pub desktop: DesktopOptions,
    /// Wake the office PC first (Wake-on-LAN through a PC of its office) and wait for it.
    pub wake: bool,
}

impl Job {
    /// The connection to `id` with the relay, trust and proxy saved in `profile`.
    ///
    /// # Errors
    /// The sentence to show when the settings or this device's key cannot be read or used.
    pub fn new(
        profile: &Profile,
        launch: LaunchChoice,
        id: ComputerId,
        password: Zeroizing<String>,
        wake: bool,
    ) -> Result<Self, String> {
        let settings = profile
            .settings()
            .map_err(|e| format!("cannot read the settings: {e}"))?;
        let (relay, trust) =
            resolve::relay_and_trust(None, None, None, &settings).map_err(|e| e.to_string())?;
        let transport = TransportChoice::Auto;
        let proxy =
            resolve::proxy(None, &settings, &relay, transport).map_err(|e| e.to_string())?;
        let device = profile
            .device_key()
            .map_err(|e| format!("cannot read this device's key: {e}"))?;
        Ok(Self {
            target: Target {
                relay,
                trust,
                transport,
                id,
            },
            password,
            login: LoginOptions {
                proxy,
                device: Arc::new(device),
                device_name: resolve::device_name(),
                profile: Some(profile.clone()),
                ..LoginOptions::default()
            },
            desktop: DesktopOptions {
                listen: LISTEN,
                access: LocalAccess::SameUser,
                launch,
                keep_open: false,
            },
            wake,
        })
    }
}
