//! The client's one connection to the relay: dialled on first use, dialled again when it has
//! broken, and moved to QUIC when a background re-probe finds that UDP works again.

use std::sync::{Arc, Mutex, Weak};

use telework_net::connect::{ConnectError, RelayAddr};
use telework_net::transport::dial::Dialer;
use telework_net::transport::{Connection, TransportChoice, TransportKind};
use telework_protocol::messages::{ClientToRelay, NodeAddr, PROTOCOL_VERSION};
use telework_protocol::proof::{device_proof_message, MachineKey};
use telework_protocol::{ComputerId, ErrorCode};
use tracing::{debug, info};

/// How long a broken session waits for its connection's close reason.
const CLOSE_REASON_WAIT: std::time::Duration = std::time::Duration::from_millis(300);

/// A shared handle on the session's connection to the relay (cheap to clone).
#[derive(Clone)]
pub struct Link {
    inner: Arc<Inner>,
}

struct Inner {
    /// Dials the relay's address, the way in to any node.
    dialer: Dialer,
    /// Dials the node of the relay's cluster that holds the office PC, once a relay has said
    /// which; cleared when that node cannot be reached.
    node: Mutex<Option<Dialer>>,
    /// Shown to the relay on every stream (see [`Link::connect_request`]).
    device: Arc<MachineKey>,
    /// The device proof for the current connection, signed once per connection.
    proof: Mutex<Option<(Connection, Vec<u8>)>>,
    /// Held while dialling, so that concurrent tunnels share one new connection.
    current: tokio::sync::Mutex<Option<Connection>>,
    /// How the current connection's transport is named to a person.
    transport: Mutex<String>,
}

impl Link {
    /// A link that dials with `dialer` when first used and names `device` to the relay.
    pub fn new(dialer: Dialer, device: Arc<MachineKey>) -> Self {
        Self {
            inner: Arc::new(Inner {
                dialer,
                node: Mutex::new(None),
                device,
                proof: Mutex::new(None),
                current: tokio::sync::Mutex::new(None),
                transport: Mutex::new(String::new()),
            }),
        }
    }

    /// The live connection, dialling a new one if there is none or it has closed.
    ///
    /// # Errors
    /// [`ConnectError`] when the relay cannot be reached.
    pub async fn connection(&self) -> Result<Connection, ConnectError> {
        let mut current = self.inner.current.lock().await;
        if let Some(c) = current.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let node = self
            .inner
            .node
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let dialed = match node {
            Some(node) => match node.dial().await {
                Ok(dialed) => dialed,
                Err(e) => {
                    info!(%e, "the relay node holding the office PC cannot be reached; asking the relay again");
                    *self.inner.node.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    self.inner.dialer.dial().await?
                }
            },
            None => self.inner.dialer.dial().await?,
        };
        let connection = dialed.connection.clone();
        *self.transport_slot() = dialed.describe();
        *current = Some(connection.clone());
        drop(current);
        if connection.kind() == TransportKind::Tcp
            && self.inner.dialer.choice() == TransportChoice::Auto
        {
            tokio::spawn(reprobe(Arc::downgrade(&self.inner), connection.clone()));
        }
        Ok(connection)
    }

    /// Goes to the node `to` of the relay's cluster for new tunnels (a relay said the office
    /// PC is online there). Tunnels open on the current connection carry on.
    ///
    /// # Errors
    /// The address the relay gave is not `host:port`.
    pub async fn redirect(&self, to: &NodeAddr) -> Result<(), ConnectError> {
        let addr: RelayAddr = to.address.parse().map_err(|_| ConnectError::BadRedirect {
            address: to.address.clone(),
        })?;
        info!(node = %to.node, address = %to.address, "the office PC is online at another relay node");
        *self.inner.node.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(self.inner.dialer.to(addr));
        *self.inner.current.lock().await = None;
        Ok(())
    }

    /// Closes the current connection if it is `broken`, so that the next use dials again
    /// (a connection whose network went away may not know it yet).
    pub async fn drop_broken(&self, broken: &Connection) {
        let mut current = self.inner.current.lock().await;
        if current.as_ref().is_some_and(|c| c.same_as(broken)) {
            broken.close(telework_protocol::ErrorCode::Replaced);
            *current = None;
        }
    }

    /// The request that opens a stream on `connection` to the office PC `id`, with this
    /// device's proof bound to that connection (the relay names sessions by device).
    pub fn connect_request(&self, connection: &Connection, id: &ComputerId) -> ClientToRelay {
        let mut cached = self.inner.proof.lock().unwrap_or_else(|e| e.into_inner());
        let proof = match cached.as_ref() {
            Some((c, proof)) if c.same_as(connection) => proof.clone(),
            _ => {
                let proof = self
                    .inner
                    .device
                    .sign(&device_proof_message(connection.channel_binding()));
                *cached = Some((connection.clone(), proof.clone()));
                proof
            }
        };
        ClientToRelay::ConnectAs {
            version: PROTOCOL_VERSION,
            id: id.clone(),
            device_key: self.inner.device.public_key(),
            device_proof: proof,
        }
    }

    /// Why the relay closed the link's connection, if it did so on purpose: an operator
    /// ending the session or disabling the office PC. Waits a moment for a closing
    /// connection to finish closing, so that the reason has arrived.
    pub async fn closed_by_relay(&self) -> Option<ErrorCode> {
        let connection = self.inner.current.lock().await.clone()?;
        let _ = tokio::time::timeout(CLOSE_REASON_WAIT, connection.closed()).await;
        connection
            .peer_close_reason()
            .filter(|code| matches!(code, ErrorCode::EndedByOperator | ErrorCode::Disabled))
    }

    /// The current connection, if one is up (no dialling).
    pub async fn current(&self) -> Option<Connection> {
        self.inner
            .current
            .lock()
            .await
            .as_ref()
            .filter(|c| !c.is_closed())
            .cloned()
    }

    /// The transport of the current connection, as a person reads it (`QUIC`, `TLS/TCP`, or
    /// `TLS/TCP (UDP to the relay seems blocked)`); empty before the first dial.
    pub fn transport(&self) -> String {
        self.transport_slot().clone()
    }

    fn transport_slot(&self) -> std::sync::MutexGuard<'_, String> {
        self.inner
            .transport
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

/// While `on_tcp` is the link's connection, tries QUIC now and then; when it works,
/// new tunnels use it (open ones stay on TLS/TCP until they end).
async fn reprobe(link: Weak<Inner>, on_tcp: Connection) {
    loop {
        let Some(every) = link.upgrade().map(|i| i.dialer.quic_reprobe()) else {
            return;
        };
        tokio::time::sleep(every).await;
        let Some(inner) = link.upgrade() else { return };
        if on_tcp.is_closed() {
            return;
        }
        let dialer = inner
            .node
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| inner.dialer.clone());
        match dialer.dial_quic().await {
            Ok(quic) => {
                let mut current = inner.current.lock().await;
                if current
                    .as_ref()
                    .is_some_and(|c| !c.is_closed() && c.kind() == TransportKind::Tcp)
                {
                    info!("QUIC works again; new connections to the office PC use it");
                    *current = Some(quic);
                    *inner.transport.lock().unwrap_or_else(|e| e.into_inner()) =
                        TransportKind::Quic.to_string();
                }
                return;
            }
            Err(e) => debug!(%e, "QUIC still does not work"),
        }
    }
}
