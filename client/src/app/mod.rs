//! `telework app`: the desktop window for employees who do not use a terminal. Type the
//! computer ID and password, press Connect, and the desktop opens.
//!
//! The window is only a face on the library's connection ([`crate::connection`]), the same
//! one `telework connect` runs: the steps and errors it shows are that connection's
//! [`Progress`](crate::connection::Progress) lines and [`ClientError`](crate::ClientError)
//! sentences.
//!
//! Built with egui through eframe (OpenGL by glow): immediate mode, pure Rust, one window
//! with a few boxes needs no more, and it renders under Xvfb with Mesa's software OpenGL, so
//! the window is tested in CI with real keystrokes.
//!
//! # Layout
//! - [`view`]: the boxes and buttons, and what pressing each does.
//! - [`job`]: one connection's settings, as `telework connect` works them out.
//! - [`state`]: the status line and what each connection event changes (no GUI code).
//! - [`worker`]: the connection on a tokio runtime in its own thread, reporting [`worker::Event`]s.

pub mod job;
pub mod state;
pub mod view;
pub mod worker;

use eframe::egui;

use crate::launch::LaunchChoice;
use crate::profile::Profile;

/// What `telework app` was started with.
pub struct AppOptions {
    /// The profile: saved relay, recent IDs, this device's key, pinned office PCs.
    pub profile: Profile,
    /// Which RDP client to start once connected.
    pub launch: LaunchChoice,
}

/// Why the window could not be shown.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// No X display to open the window on (this build talks X11; Wayland desktops provide
    /// one through XWayland).
    #[error(
        "cannot open the window: no desktop display here (DISPLAY is not set); on a computer \
         without a desktop, use 'telework connect'"
    )]
    NoDisplay,
    /// No usable OpenGL, or the window system refused.
    #[error(
        "cannot open the window: {0} (on a computer without a desktop, use 'telework connect')"
    )]
    Window(String),
}

/// The window's title, also how tests find it.
pub const TITLE: &str = "telework";

/// Shows the window until it is closed; a session still open then is ended.
///
/// # Errors
/// [`AppError::NoDisplay`] or [`AppError::Window`] if no window can be opened.
pub fn run(options: AppOptions) -> Result<(), AppError> {
    // Said plainly here rather than as winit's error, which names its own source file.
    if cfg!(all(unix, not(target_os = "macos"))) && std::env::var_os("DISPLAY").is_none() {
        return Err(AppError::NoDisplay);
    }
    let native = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title(TITLE)
            .with_app_id("telework")
            .with_inner_size([480.0, 480.0])
            .with_min_inner_size([400.0, 380.0]),
        ..eframe::NativeOptions::default()
    };
    eframe::run_native(
        TITLE,
        native,
        Box::new(move |cc| Ok(Box::new(view::Window::new(cc, options)))),
    )
    .map_err(|e| AppError::Window(e.to_string()))
}
