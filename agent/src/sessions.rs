//! Authenticated sessions: the resumption secret each one holds, and a way to end them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use telework_protocol::e2e::keys::ResumptionSecret;
use telework_protocol::SessionId;
use tokio_util::sync::CancellationToken;

/// One authenticated session.
pub struct Session {
    /// Authenticates further tunnels of this session.
    pub secret: ResumptionSecret,
    /// Cancelled when the session ends; every tunnel of the session watches it.
    pub ended: CancellationToken,
    /// When desktop bytes last moved in any tunnel of the session.
    pub activity: Arc<crate::activity::Activity>,
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
    pub fn start(&self, secret: ResumptionSecret) -> (SessionId, Arc<Session>) {
        let id = SessionId::random();
        let session = Arc::new(Session {
            secret,
            ended: CancellationToken::new(),
            activity: crate::activity::Activity::new(),
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
        let (id, s) = sessions.start(Zeroizing::new([1; 32]));
        assert!(sessions.get(&id).is_some());
        sessions.end(&id);
        assert!(s.ended.is_cancelled());
        assert!(sessions.get(&id).is_none());
        assert!(sessions.is_empty());
    }
}
