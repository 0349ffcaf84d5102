//! The window itself: the boxes and buttons, drawn each frame from [`Status`] and the typed
//! text, and what pressing each one does.

use std::sync::Arc;

use eframe::egui::{self, Color32, Key, RichText};
use telework_net::relay_profile::RelayProfile;
use telework_protocol::proof::key_fingerprint;
use telework_protocol::ComputerId;
use zeroize::{Zeroize, Zeroizing};

use super::job::Job;
use super::state::{Follow, Phase, Status, Tone};
use super::worker::{say, Connecting, Event};
use super::AppOptions;
use crate::launch::LaunchChoice;
use crate::local_peer;
use crate::profile::Profile;
use crate::settings::Settings;

/// The status dot's colours. Solid, so a screenshot shows the state without reading text.
pub const GOOD: Color32 = Color32::from_rgb(0x1e, 0x96, 0x46);
/// Something failed.
pub const BAD: Color32 = Color32::from_rgb(0xc8, 0x28, 0x28);
/// Something is in progress.
pub const BUSY: Color32 = Color32::from_rgb(0xe0, 0x96, 0x14);
/// Nothing going on.
pub const QUIET: Color32 = Color32::from_rgb(0x90, 0x90, 0x90);

/// The button that starts things.
const ACCENT: Color32 = Color32::from_rgb(0x1f, 0x5f, 0xbf);

/// Frames a focus request may wait for its box to appear.
const MAX_FOCUS_FRAMES: u8 = 3;

/// Where the cursor goes on the next frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Id,
    Password,
    Code,
    RelayLine,
    Disconnect,
    Wake,
}

/// The window's state between frames.
pub struct Window {
    profile: Profile,
    launch: LaunchChoice,
    settings: Settings,
    /// This device's key fingerprint, or why it cannot be read.
    device: String,
    id: String,
    password: Zeroizing<String>,
    code: Zeroizing<String>,
    relay_line: String,
    relay_error: Option<String>,
    /// The relay-line box is open over a saved relay (the operator sent a new line).
    changing_relay: bool,
    status: Status,
    /// The password of a login that found the office PC offline, for "Wake it and connect".
    wake_password: Option<Zeroizing<String>>,
    connecting: Option<Connecting>,
    focus: Option<Field>,
    /// Frames the pending focus has waited for its box to be drawn.
    focus_frames: u8,
    /// Lines for standard output, written once the window shows them (see [`Window::flush`]).
    lines: Vec<String>,
}

impl Window {
    /// The window for `options`, with the saved settings read once.
    pub fn new(cc: &eframe::CreationContext<'_>, options: AppOptions) -> Self {
        cc.egui_ctx.set_theme(egui::Theme::Light);
        // A little larger than egui's defaults: this is read by people, not developers.
        cc.egui_ctx.set_zoom_factor(1.15);
        let AppOptions { profile, launch } = options;
        let (settings, first_line) = match profile.settings() {
            Ok(settings) => (settings, String::new()),
            Err(e) => (
                Settings::default(),
                format!("cannot read the settings: {e}"),
            ),
        };
        let device = match profile.device_key() {
            Ok(key) => key_fingerprint(&key.public_key()),
            Err(e) => format!("cannot read this device's key: {e}"),
        };
        let id = settings
            .recent
            .first()
            .map(ToString::to_string)
            .unwrap_or_default();
        let focus = if settings.relay.is_none() {
            Field::RelayLine
        } else if id.is_empty() {
            Field::Id
        } else {
            Field::Password
        };
        let mut status = Status::new("");
        if !first_line.is_empty() {
            status.refused(first_line);
        }
        Self {
            profile,
            launch,
            settings,
            device,
            id,
            password: Zeroizing::default(),
            code: Zeroizing::default(),
            relay_line: String::new(),
            relay_error: None,
            changing_relay: false,
            status,
            wake_password: None,
            connecting: None,
            focus: Some(focus),
            focus_frames: 0,
            lines: vec!["the window is open".to_owned()],
        }
    }

    /// Takes in what the connection reported since the last frame.
    fn take_events(&mut self) {
        let Some(connecting) = &self.connecting else {
            return;
        };
        for mut event in connecting.events() {
            self.lines.push(event.line());
            if let Event::Offline { password, .. } = &mut event {
                self.wake_password = Some(std::mem::take(password));
            }
            let follow = self.status.apply(event);
            self.follow(follow);
        }
    }

    fn follow(&mut self, follow: Follow) {
        match follow {
            Follow::Nothing => {}
            Follow::TypeCode => self.focus = Some(Field::Code),
            Follow::Connected => {
                // The login put this ID first among the recent ones.
                if let Ok(settings) = self.profile.settings() {
                    self.settings = settings;
                }
                self.focus = Some(Field::Disconnect);
            }
            Follow::RetypePassword => {
                self.connecting = None;
                self.password.zeroize();
                self.focus = Some(Field::Password);
            }
            Follow::OfferWake => {
                self.connecting = None;
                // Waking is the likely next step: Return presses it.
                self.focus = Some(Field::Wake);
            }
            Follow::Over => {
                self.connecting = None;
                self.code.zeroize();
                // To connect again, the password is the one thing to type.
                self.focus = Some(Field::Password);
            }
        }
    }

    fn connect(&mut self, ctx: &egui::Context) {
        // A new password typed: an earlier offer to wake is over.
        self.wake_password = None;
        // The password leaves the box: it is not kept around while the session runs.
        let password = Zeroizing::new(std::mem::take(&mut *self.password));
        self.start(ctx, password, false);
    }

    /// Wakes the office PC found offline, then logs in with the password already given.
    fn wake(&mut self, ctx: &egui::Context) {
        if let Some(password) = self.wake_password.take() {
            self.start(ctx, password, true);
        }
    }

    fn start(&mut self, ctx: &egui::Context, password: Zeroizing<String>, wake: bool) {
        let id = match self.id.trim().parse::<ComputerId>() {
            Ok(id) => id,
            Err(e) => {
                self.say(format!("error: {e}"));
                self.status.refused(e.to_string());
                self.focus = Some(Field::Id);
                return;
            }
        };
        let job = match Job::new(&self.profile, self.launch, id, password, wake) {
            Ok(job) => job,
            Err(e) => {
                self.say(format!("error: {e}"));
                return self.status.refused(e);
            }
        };
        let ctx = ctx.clone();
        match Connecting::start(job, Arc::new(move || ctx.request_repaint())) {
            Ok(connecting) => {
                self.connecting = Some(connecting);
                self.status.started();
                if !local_peer::OWNER_CHECKED {
                    self.status.notes.push(
                        "on this operating system telework cannot check who connects to its \
                         local port: other users of this computer can use it while the session \
                         is open"
                            .into(),
                    );
                }
            }
            Err(e) => self
                .status
                .refused(format!("cannot start the connection: {e}")),
        }
    }

    fn disconnect(&mut self) {
        if let Some(connecting) = &self.connecting {
            connecting.stop();
            self.status.line = "disconnecting …".into();
        }
    }

    /// Saves the relay from the operator's `tw-relay:` line.
    fn import(&mut self) {
        let line: RelayProfile = match self.relay_line.parse() {
            Ok(line) => line,
            Err(e) => {
                self.say(format!("error: {e}"));
                self.relay_error = Some(e.to_string());
                self.focus = Some(Field::RelayLine);
                return;
            }
        };
        match self.profile.import(line) {
            Ok(settings) => {
                if let Some(relay) = &settings.relay {
                    self.say(format!("saved the relay {}", relay.addr));
                }
                self.settings = settings;
                self.relay_error = None;
                self.changing_relay = false;
                self.relay_line.clear();
                self.focus = Some(Field::Id);
            }
            Err(e) => {
                let error = format!("cannot save the relay: {e}");
                self.say(format!("error: {error}"));
                self.relay_error = Some(error);
            }
        }
    }

    /// Queues `line` for standard output.
    fn say(&mut self, line: impl Into<String>) {
        self.lines.push(line.into());
    }

    /// Writes the queued lines on standard output once the frame that shows them has also put
    /// the cursor where the next thing is typed: whoever reads a line (a log, a script, the
    /// tests) may type at once and no keystroke goes astray. A box that is not drawn within a
    /// few frames gives up its focus, so lines are never held back for long.
    fn flush(&mut self, ctx: &egui::Context) {
        if self.focus.is_some() && self.focus_frames < MAX_FOCUS_FRAMES {
            self.focus_frames += 1;
            ctx.request_repaint();
            return;
        }
        self.focus = None;
        self.focus_frames = 0;
        for line in self.lines.drain(..) {
            say(&line);
        }
    }

    fn take_focus(&mut self, field: Field, response: &egui::Response) {
        if self.focus == Some(field) {
            response.request_focus();
            self.focus = None;
        }
    }

    fn relay_box(&mut self, ui: &mut egui::Ui) {
        ui.label("Paste the line your IT staff gave you (it starts with tw-relay:):");
        let response = ui.add(
            egui::TextEdit::singleline(&mut self.relay_line)
                .hint_text("tw-relay:…")
                .desired_width(f32::INFINITY),
        );
        self.take_focus(Field::RelayLine, &response);
        let mut save = response.lost_focus() && ui.input(|i| i.key_pressed(Key::Enter));
        ui.horizontal(|ui| {
            save |= ui.button("Save").clicked();
            if self.changing_relay && ui.button("Keep the saved relay").clicked() {
                self.changing_relay = false;
                self.relay_error = None;
            }
        });
        if save {
            self.import();
        }
        if let Some(error) = &self.relay_error {
            ui.colored_label(BAD, error);
        }
    }

    fn login_boxes(&mut self, ui: &mut egui::Ui, ctx: &egui::Context) {
        let idle = self.status.phase == Phase::Idle;
        let mut connect = false;
        egui::Grid::new("login")
            .num_columns(2)
            .spacing([12.0, 10.0])
            .show(ui, |ui| {
                ui.label("Computer ID");
                ui.horizontal(|ui| {
                    let response = ui.add_enabled(
                        idle,
                        egui::TextEdit::singleline(&mut self.id)
                            .hint_text("for example pc-tanaka-01")
                            .desired_width(190.0),
                    );
                    self.take_focus(Field::Id, &response);
                    if response.lost_focus() && ui.input(|i| i.key_pressed(Key::Enter)) {
                        self.focus = Some(Field::Password);
                    }
                    self.recent_ids(ui, idle);
                });
                ui.end_row();

                ui.label("Password");
                let response = ui.add_enabled(
                    idle,
                    egui::TextEdit::singleline(&mut *self.password)
                        .password(true)
                        .desired_width(190.0),
                );
                self.take_focus(Field::Password, &response);
                if response.lost_focus() && ui.input(|i| i.key_pressed(Key::Enter)) {
                    connect = true;
                }
                ui.end_row();

                if self.status.phase == Phase::CodeWanted {
                    ui.label("One-time code");
                    ui.horizontal(|ui| {
                        let response = ui.add(
                            egui::TextEdit::singleline(&mut *self.code)
                                .hint_text("from your authenticator app")
                                .desired_width(190.0),
                        );
                        self.take_focus(Field::Code, &response);
                        let entered =
                            response.lost_focus() && ui.input(|i| i.key_pressed(Key::Enter));
                        if ui.button("Send code").clicked() || entered {
                            let code = std::mem::take(&mut *self.code);
                            self.status.send_code(&code);
                        }
                    });
                    ui.end_row();
                }
            });
        ui.add_space(10.0);
        ui.horizontal(|ui| {
            let ready = idle && !self.id.trim().is_empty() && !self.password.is_empty();
            let wide = egui::vec2(110.0, 28.0);
            let connect_button = egui::Button::new(RichText::new("Connect").color(Color32::WHITE))
                .fill(ACCENT)
                .min_size(wide);
            if ui.add_enabled(ready, connect_button).clicked() {
                connect = true;
            }
            let response = ui.add_enabled(!idle, egui::Button::new("Disconnect").min_size(wide));
            self.take_focus(Field::Disconnect, &response);
            if response.clicked() {
                self.disconnect();
            }
        });
        if connect && idle && !self.password.is_empty() {
            self.connect(ctx);
        }
    }

    fn recent_ids(&mut self, ui: &mut egui::Ui, idle: bool) {
        if self.settings.recent.is_empty() {
            return;
        }
        ui.add_enabled_ui(idle, |ui| {
            egui::ComboBox::from_id_salt("recent")
                .selected_text("Recent")
                .width(90.0)
                .show_ui(ui, |ui| {
                    for id in &self.settings.recent {
                        if ui.selectable_label(false, id.as_str()).clicked() {
                            self.id = id.to_string();
                            self.focus = Some(Field::Password);
                        }
                    }
                });
        });
    }

    fn status_line(&self, ui: &mut egui::Ui) {
        let colour = match self.status.tone {
            Tone::Quiet => QUIET,
            Tone::Busy => BUSY,
            Tone::Good => GOOD,
            Tone::Bad => BAD,
        };
        ui.horizontal_top(|ui| {
            let (rect, _) = ui.allocate_exact_size(egui::vec2(16.0, 18.0), egui::Sense::hover());
            ui.painter().circle_filled(rect.center(), 6.0, colour);
            let line = if self.status.line.is_empty() {
                "not connected"
            } else {
                &self.status.line
            };
            ui.add(egui::Label::new(RichText::new(line).strong()).wrap());
        });
        for note in &self.status.notes {
            ui.add(egui::Label::new(RichText::new(note).weak()).wrap());
        }
    }
}

impl eframe::App for Window {
    fn update(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        self.take_events();
        egui::TopBottomPanel::bottom("device")
            .frame(egui::Frame::side_top_panel(&ctx.style()).inner_margin(10.0))
            .show(ctx, |ui| {
                ui.label(RichText::new("This device (read it to IT staff if they ask):").weak());
                ui.add(egui::Label::new(RichText::new(&self.device).monospace()).wrap());
            });
        egui::CentralPanel::default()
            .frame(egui::Frame::central_panel(&ctx.style()).inner_margin(16.0))
            .show(ctx, |ui| {
                ui.heading("Connect to your office PC");
                ui.add_space(10.0);
                match self.settings.relay.as_ref().map(|r| r.addr.to_string()) {
                    Some(relay) if !self.changing_relay => {
                        ui.horizontal(|ui| {
                            ui.label(RichText::new(format!("Relay: {relay}")).weak());
                            let idle = self.status.phase == Phase::Idle;
                            if ui
                                .add_enabled(idle, egui::Button::new("Change").small())
                                .clicked()
                            {
                                self.changing_relay = true;
                                self.focus = Some(Field::RelayLine);
                            }
                        });
                        ui.add_space(6.0);
                        self.login_boxes(ui, ctx);
                    }
                    _ => self.relay_box(ui),
                }
                ui.add_space(12.0);
                ui.separator();
                ui.add_space(6.0);
                self.status_line(ui);
                if self.wake_password.is_some() && self.status.phase == Phase::Idle {
                    ui.add_space(6.0);
                    let response = ui.button("Wake it and connect");
                    self.take_focus(Field::Wake, &response);
                    if response.clicked() {
                        self.wake(ctx);
                    }
                }
            });
        self.flush(ctx);
    }

    fn on_exit(&mut self, _gl: Option<&eframe::glow::Context>) {
        if let Some(connecting) = self.connecting.take() {
            connecting.finish();
        }
    }
}
