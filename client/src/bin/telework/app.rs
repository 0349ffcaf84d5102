//! `telework app`: the desktop window, with the profile and the RDP-client choice from the
//! command line (the same flags as `connect`).

use std::path::PathBuf;

use telework_client::app::{self, AppOptions};
use telework_client::launch::LaunchChoice;

#[derive(clap::Args)]
pub struct AppArgs {
    /// Which RDP client to start once connected.
    #[arg(long, value_enum, default_value_t = LaunchChoice::Auto)]
    launch: LaunchChoice,
    /// Profile directory for settings, this device's key and pinned office-PC keys
    /// [default: the user's config dir].
    #[arg(long, env = "TELEWORK_CONFIG_DIR")]
    config_dir: Option<PathBuf>,
}

pub fn run(args: AppArgs) -> anyhow::Result<()> {
    let profile = crate::open_profile(args.config_dir)?;
    app::run(AppOptions {
        profile,
        launch: args.launch,
    })?;
    Ok(())
}
