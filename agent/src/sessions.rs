//! Authenticated sessions: the resumption secret each one holds, and a way to end them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use telework_net::pump::SecureTunnel;
use telework_net::transport::Stream;
use telework_protocol::e2e::keys::ResumptionSecret;
use telework_protocol::e2e::messages::EndReason;
use telework_protocol::SessionId;
use tokio_util::sync::CancellationToken;

/// One authenticated session.
pub struct Session {
    /// Authenticates further tunnels of this session.
    pub secret: ResumptionSecret,
    /// What the session logged in under; checked again at every resume and every few
    /// seconds ([`crate::access`]).
    pub grant: Grant,
    /// Cancelled when the session ends; every tunnel of the session watches it.
    pub ended: CancellationToken,
    /// When desktop bytes last moved in any tunnel of the session.
    pub activity: Arc<crate::activity::Activity>,
    /// Why the agent ended it, when it did, to tell the client.
    end_reason: Mutex<Option<EndReason>>,
    /// A control tunnel the client re-attached after its connection broke, for the task that
    /// holds the session. One at a time: a newer one replaces an older one not yet taken.
    reattached: tokio::sync::watch::Sender<Option<Arc<ControlTunnel>>>,
}

/// A re-attached control tunnel, taken once by the task that holds the session.
pub type ControlTunnel = Mutex<Option<SecureTunnel<Stream>>>;

impl Session {
    /// Hands a re-attached control tunnel to the task holding the session.
    pub fn reattach(&self, tunnel: SecureTunnel<Stream>) {
        self.reattached
            .send_replace(Some(Arc::new(Mutex::new(Some(tunnel)))));
    }

    /// Watches for re-attached control tunnels.
    pub fn reattachments(&self) -> tokio::sync::watch::Receiver<Option<Arc<ControlTunnel>>> {
        self.reattached.subscribe()
    }

    /// Why the agent ended the session, if it did.
    pub fn end_reason(&self) -> Option<EndReason> {
        *self.end_reason.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a session logged in under: the device, the password record and the one-time-code
/// secret in force then (digests, so nothing secret is kept twice).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The device's public key, proven before the password step.
    pub device_key: Vec<u8>,
    /// SHA-256 of the password record.
    pub password: [u8; 32],
    /// SHA-256 of the one-time-code secret, if codes were required.
    pub totp: Option<[u8; 32]>,
}

/// The live sessions. A session's secret is forgotten the moment it ends, so resumption
/// fails closed afterwards.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<SessionId, Arc<Session>>>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Arc<Session>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a session; returns its id and handle.
    pub fn start(&self, secret: ResumptionSecret, grant: Grant) -> (SessionId, Arc<Session>) {
        let id = SessionId::random();
        let session = Arc::new(Session {
            secret,
            grant,
            ended: CancellationToken::new(),
            activity: crate::activity::Activity::new(),
            end_reason: Mutex::new(None),
            reattached: tokio::sync::watch::Sender::new(None),
        });
        self.lock().insert(id, session.clone());
        (id, session)
    }

    /// A live session.
    pub fn get(&self, id: &SessionId) -> Option<Arc<Session>> {
        self.lock().get(id).cloned()
    }

    /// Ends a session and its tunnels.
    pub fn end(&self, id: &SessionId) {
        if let Some(s) = self.lock().remove(id) {
            s.ended.cancel();
        }
    }

    /// Ends a session for `reason`, which its first tunnel tells the client.
    pub fn end_for(&self, id: &SessionId, reason: EndReason) {
        if let Some(s) = self.lock().remove(id) {
            *s.end_reason.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
            s.ended.cancel();
        }
    }

    /// Every live session.
    pub fn all(&self) -> Vec<(SessionId, Arc<Session>)> {
        self.lock().iter().map(|(id, s)| (*id, s.clone())).collect()
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroize::Zeroizing;

    #[test]
    fn ended_sessions_cannot_be_resumed() {
        let sessions = Sessions::default();
        let grant = Grant {
            device_key: vec![1; 32],
            password: [2; 32],
            totp: None,
        };
        let (id, s) = sessions.start(Zeroizing::new([1; 32]), grant.clone());
        assert!(sessions.get(&id).is_some());
        sessions.end(&id);
        assert!(s.ended.is_cancelled());
        assert!(sessions.get(&id).is_none());
        assert!(sessions.is_empty());
        assert_eq!(s.end_reason(), None);

        let (id, s) = sessions.start(Zeroizing::new([1; 32]), grant);
        sessions.end_for(&id, EndReason::DeviceRevoked);
        assert!(s.ended.is_cancelled());
        assert_eq!(s.end_reason(), Some(EndReason::DeviceRevoked));
    }
}
