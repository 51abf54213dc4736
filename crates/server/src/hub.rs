//! Connected devices and the live push of new inbox entries to them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use axum::body::Bytes;
use sitrep_wire::frame;

use crate::db::Delivery;

/// A frame for one connection: encoded once, shared by every recipient.
pub struct Push {
    /// Sequence number of the entry.
    pub seq: u64,
    /// The binary WebSocket frame.
    pub frame: Bytes,
}

/// Per-connection buffer; a device that lags past it is re-read from the store.
pub const CHANNEL: usize = 1024;

type Conn = (u64, mpsc::Sender<Push>, Arc<AtomicBool>);

/// Connections by device id.
#[derive(Default)]
pub struct Hub {
    conns: Mutex<HashMap<String, Vec<Conn>>>,
    next: std::sync::atomic::AtomicU64,
}

impl Hub {
    /// Register a connection for a device.
    /// The flag is raised when an entry could not be buffered: the connection
    /// must re-read from the store.
    pub fn subscribe(&self, device_id: &str) -> (u64, mpsc::Receiver<Push>, Arc<AtomicBool>) {
        let (tx, rx) = mpsc::channel(CHANNEL);
        let lagged = Arc::new(AtomicBool::new(false));
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(device_id.to_string())
            .or_default()
            .push((id, tx, lagged.clone()));
        (id, rx, lagged)
    }

    /// Forget a connection.
    pub fn unsubscribe(&self, device_id: &str, id: u64) {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = conns.get_mut(device_id) {
            v.retain(|(i, _, _)| *i != id);
            if v.is_empty() {
                conns.remove(device_id);
            }
        }
    }

    /// Push entries that were just committed to the store.
    pub fn publish(&self, deliveries: Vec<Delivery>) {
        let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if conns.is_empty() {
            return;
        }
        for d in deliveries {
            let frame = Bytes::from(frame::encode(d.seq, d.kind, &d.payload));
            for r in &d.recipients {
                if let Some(v) = conns.get(r) {
                    for (_, tx, lagged) in v {
                        if tx
                            .try_send(Push {
                                seq: d.seq,
                                frame: frame.clone(),
                            })
                            .is_err()
                        {
                            lagged.store(true, Ordering::Release);
                        }
                    }
                }
            }
        }
    }
}
