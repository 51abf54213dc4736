//! Connected devices and the live push of new inbox entries to them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::db::Queued;

/// Per-connection buffer; a device that lags past it is re-read from the store.
pub const CHANNEL: usize = 1024;

type Conn = (u64, mpsc::Sender<Queued>, Arc<AtomicBool>);

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
    pub fn subscribe(&self, device_id: &str) -> (u64, mpsc::Receiver<Queued>, Arc<AtomicBool>) {
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
    pub fn publish(&self, entries: Vec<Queued>) {
        if entries.is_empty() {
            return;
        }
        let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        for e in entries {
            if let Some(v) = conns.get(&e.device_id) {
                for (_, tx, lagged) in v {
                    if tx.try_send(e.clone()).is_err() {
                        lagged.store(true, Ordering::Release);
                    }
                }
            }
        }
    }
}
