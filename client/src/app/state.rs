//! What the window shows, apart from how it is drawn: where the connection is, the status
//! line, and what each event from the connection changes. Kept free of the GUI toolkit so it
//! is tested without a display.

use std::sync::mpsc;

use crate::connection::Progress;

use super::worker::Event;

/// Where the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Nothing running: Connect is offered.
    Idle,
    /// Connecting or logging in.
    Working,
    /// The office PC waits for a one-time code.
    CodeWanted,
    /// The desktop is served.
    Connected,
}

/// How the status line reads at a glance: the colour of its dot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    /// Nothing going on.
    Quiet,
    /// Something is in progress.
    Busy,
    /// Connected.
    Good,
    /// Something failed.
    Bad,
}

/// What changes in the window after an event, beyond [`Status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    /// Nothing more.
    Nothing,
    /// The office PC refused the password: clear it and put the cursor there.
    RetypePassword,
    /// A code box opened: put the cursor there.
    TypeCode,
    /// The office PC is offline: offer to wake it.
    OfferWake,
    /// Connected: the recent IDs changed, and Disconnect is the next thing to press.
    Connected,
    /// The connection is over.
    Over,
}

/// The status line, its extra notes and the phase.
pub struct Status {
    /// Where the connection is.
    pub phase: Phase,
    /// The status line.
    pub line: String,
    /// Its colour.
    pub tone: Tone,
    /// Lines worth keeping under the status line for the rest of the session (a newly pinned
    /// key, which RDP client was started).
    pub notes: Vec<String>,
    /// Where the one-time code goes while one is wanted.
    pub code_reply: Option<mpsc::SyncSender<String>>,
}

impl Status {
    /// The status before anything was tried.
    pub fn new(line: impl Into<String>) -> Self {
        Self {
            phase: Phase::Idle,
            line: line.into(),
            tone: Tone::Quiet,
            notes: Vec::new(),
            code_reply: None,
        }
    }

    /// A connection was started.
    pub fn started(&mut self) {
        self.phase = Phase::Working;
        self.line = "starting …".into();
        self.tone = Tone::Busy;
        self.notes.clear();
        self.code_reply = None;
    }

    /// Shows a failure that happened before a connection could start.
    pub fn refused(&mut self, error: impl Into<String>) {
        self.phase = Phase::Idle;
        self.line = error.into();
        self.tone = Tone::Bad;
    }

    /// Takes in one event from the connection.
    pub fn apply(&mut self, event: Event) -> Follow {
        match event {
            Event::Step(step) => self.step(step),
            Event::CodeWanted(reply) => {
                self.phase = Phase::CodeWanted;
                self.line = "the office PC asks for the one-time code from your \
                             authenticator app"
                    .into();
                self.tone = Tone::Busy;
                self.code_reply = Some(reply);
                Follow::TypeCode
            }
            Event::Failed {
                error,
                wrong_password,
            } => {
                self.phase = Phase::Idle;
                self.line = error;
                self.tone = Tone::Bad;
                self.code_reply = None;
                if wrong_password {
                    Follow::RetypePassword
                } else {
                    Follow::Over
                }
            }
            Event::Offline { error, .. } => {
                self.phase = Phase::Idle;
                self.line = error;
                self.tone = Tone::Bad;
                self.code_reply = None;
                Follow::OfferWake
            }
            Event::Closed(text) => {
                self.phase = Phase::Idle;
                self.line = text;
                self.tone = Tone::Quiet;
                self.code_reply = None;
                Follow::Over
            }
        }
    }

    /// Sends the typed code to the waiting login.
    pub fn send_code(&mut self, code: &str) {
        if let Some(reply) = self.code_reply.take() {
            // The login may have given up waiting; its own error then follows.
            let _ = reply.try_send(code.trim().to_owned());
        }
        self.phase = Phase::Working;
        self.line = "checking the one-time code …".into();
    }

    fn step(&mut self, step: Progress) -> Follow {
        let text = step.to_string();
        match step {
            // Worth keeping in view once connected: what was pinned, which client started.
            Progress::Pinned { .. }
            | Progress::ClientStarted { .. }
            | Progress::ClientNotStarted(_) => {
                self.notes.push(text);
                Follow::Nothing
            }
            Progress::Connected { .. } => {
                self.phase = Phase::Connected;
                self.line = text;
                self.tone = Tone::Good;
                Follow::Connected
            }
            Progress::Connecting { .. } | Progress::LoggingIn { .. } | Progress::Wake { .. } => {
                self.line = text;
                self.tone = Tone::Busy;
                Follow::Nothing
            }
            Progress::ClientExited { .. } => {
                self.line = text;
                self.tone = Tone::Busy;
                Follow::Nothing
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connected() -> Event {
        Event::Step(Progress::Connected {
            id: "pc-1".parse().unwrap(),
            transport: "QUIC".into(),
            local: "127.0.0.1:5000".parse().unwrap(),
        })
    }

    #[test]
    fn a_wrong_password_asks_for_it_again() {
        let mut s = Status::new("");
        s.started();
        let follow = s.apply(Event::Failed {
            error: "wrong password, 4 tries left before the office PC locks out".into(),
            wrong_password: true,
        });
        assert_eq!(follow, Follow::RetypePassword);
        assert_eq!(s.phase, Phase::Idle);
        assert_eq!(s.tone, Tone::Bad);
        assert!(s.line.starts_with("wrong password"));
    }

    #[test]
    fn connected_then_closed() {
        let mut s = Status::new("");
        s.started();
        assert_eq!(s.apply(connected()), Follow::Connected);
        assert_eq!(s.phase, Phase::Connected);
        assert!(s.line.contains("127.0.0.1:5000"), "{}", s.line);
        s.apply(Event::Step(Progress::ClientNotStarted(
            "no RDP client".into(),
        )));
        assert!(
            s.line.contains("127.0.0.1:5000"),
            "the address stays in view"
        );
        assert_eq!(s.notes, ["no RDP client"]);
        assert_eq!(
            s.apply(Event::Closed("session closed".into())),
            Follow::Over
        );
        assert_eq!((s.phase, s.tone), (Phase::Idle, Tone::Quiet));
    }

    #[test]
    fn an_offline_pc_can_be_woken() {
        let mut s = Status::new("");
        s.started();
        let follow = s.apply(Event::Offline {
            error: "the office PC is offline".into(),
            password: zeroize::Zeroizing::new("pw".into()),
        });
        assert_eq!(follow, Follow::OfferWake);
        assert_eq!((s.phase, s.tone), (Phase::Idle, Tone::Bad));
        s.started();
        s.apply(Event::Step(Progress::Wake {
            id: "pc-1".parse().unwrap(),
            step: crate::wake::WakeProgress::Asked,
        }));
        assert_eq!(s.tone, Tone::Busy);
        assert!(
            s.line.contains("asked a PC in its office to wake it"),
            "{}",
            s.line
        );
    }

    #[test]
    fn the_code_goes_to_the_waiting_login() {
        let mut s = Status::new("");
        s.started();
        let (tx, rx) = mpsc::sync_channel(1);
        assert_eq!(s.apply(Event::CodeWanted(tx)), Follow::TypeCode);
        assert_eq!(s.phase, Phase::CodeWanted);
        s.send_code(" 123456 ");
        assert_eq!(rx.try_recv().unwrap(), "123456");
        assert_eq!(s.phase, Phase::Working);
    }
}
