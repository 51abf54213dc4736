//! Connected devices and the live push of new inbox entries to them.
//!
//! Each connection's queue is bounded in frames and in bytes. An entry that
//! does not fit is not queued: the connection is marked lagged and re-reads
//! from the store, which holds everything until it is acknowledged. The hub
//! must never wait on a connection: it publishes under the store lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, mpsc};

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

/// Most frames queued per connection (the byte bound usually comes first).
pub const CHANNEL: usize = 1024;

/// What the hub and a connection share.
#[derive(Default)]
struct Shared {
    /// An entry was not queued: re-read from the store.
    lagged: AtomicBool,
    /// Frame bytes queued and not yet taken by the connection.
    queued: AtomicUsize,
    /// Wakes the connection when it lags with nothing queued to wake it.
    wake: Notify,
}

type Conn = (u64, mpsc::Sender<Push>, Arc<Shared>);

/// Connections by device id.
pub struct Hub {
    conns: Mutex<HashMap<String, Vec<Conn>>>,
    /// Where recipients with no connection are sent for a Web Push.
    offline: std::sync::OnceLock<crate::push::Sink>,
    next: std::sync::atomic::AtomicU64,
    max_queued: usize,
}

/// One connection's end of the hub.
pub struct Subscription {
    /// Id for [`Hub::unsubscribe`].
    pub id: u64,
    rx: mpsc::Receiver<Push>,
    shared: Arc<Shared>,
}

/// What a connection waits for.
pub enum Event {
    /// A frame to send.
    Push(Push),
    /// Entries were skipped: see [`Subscription::take_lagged`].
    Lagged,
    /// The hub dropped the connection.
    Closed,
}

impl Subscription {
    /// The next pushed frame, or word that the connection lagged (which may
    /// come spuriously: check [`Self::take_lagged`]).
    pub async fn recv(&mut self) -> Event {
        tokio::select! {
            p = self.rx.recv() => match p {
                Some(p) => {
                    self.shared.queued.fetch_sub(p.frame.len(), Ordering::AcqRel);
                    Event::Push(p)
                }
                None => Event::Closed,
            },
            () = self.shared.wake.notified() => Event::Lagged,
        }
    }

    /// A frame already queued, if any.
    pub fn try_recv(&mut self) -> Option<Push> {
        let p = self.rx.try_recv().ok()?;
        self.shared
            .queued
            .fetch_sub(p.frame.len(), Ordering::AcqRel);
        Some(p)
    }

    /// True (once) if entries were skipped since the last call: re-read the
    /// store after the last entry sent. Nothing is queued from the moment the
    /// flag is raised until this call, so every skipped entry is in the store
    /// read that follows, and none queued before it is lost.
    pub fn take_lagged(&self) -> bool {
        self.shared.lagged.swap(false, Ordering::AcqRel)
    }

    /// Frame bytes queued for this connection now.
    #[cfg(test)]
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued.load(Ordering::Acquire)
    }
}

impl Hub {
    /// A hub whose connections each queue at most `max_queued` bytes.
    pub fn new(max_queued: usize) -> Self {
        Self {
            conns: Mutex::new(HashMap::new()),
            offline: std::sync::OnceLock::new(),
            next: std::sync::atomic::AtomicU64::new(0),
            max_queued,
        }
    }

    /// Register a connection for a device.
    pub fn subscribe(&self, device_id: &str) -> Subscription {
        let (tx, rx) = mpsc::channel(CHANNEL);
        let shared = Arc::new(Shared::default());
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(device_id.to_string())
            .or_default()
            .push((id, tx, shared.clone()));
        Subscription { id, rx, shared }
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

    /// Devices connected, and connections open (a device may hold several).
    pub fn counts(&self) -> (usize, usize) {
        let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        (conns.len(), conns.values().map(Vec::len).sum())
    }

    /// Send recipients with no live connection to `sink` (Web Push).
    pub fn set_offline(&self, sink: crate::push::Sink) {
        let _ = self.offline.set(sink);
    }

    /// Push entries that were just committed to the store; recipients with
    /// no connection get a wake-up through their push service.
    pub fn publish(&self, deliveries: Vec<Delivery>) {
        self.publish_marked(deliveries, false)
    }

    /// [`Hub::publish`] of a message its sender marked urgent (a priority
    /// alert): offline browsers get an "Urgent alert" push.
    pub fn publish_marked(&self, deliveries: Vec<Delivery>, urgent: bool) {
        let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let offline = self.offline.get();
        if conns.is_empty() && offline.is_none() {
            return;
        }
        for d in deliveries {
            let mut frame = None;
            for r in &d.recipients {
                let Some(v) = conns.get(r) else {
                    if let Some(o) = offline.filter(|_| crate::push::wakes(d.kind)) {
                        o.wake(r, urgent);
                    }
                    continue;
                };
                let frame = frame
                    .get_or_insert_with(|| Bytes::from(frame::encode(d.seq, d.kind, &d.payload)));
                for (_, tx, shared) in v {
                    self.offer(tx, shared, d.seq, frame);
                }
            }
        }
    }

    fn offer(&self, tx: &mpsc::Sender<Push>, shared: &Shared, seq: u64, frame: &Bytes) {
        // Once lagged, queue nothing until the connection has re-read the
        // store: a later entry queued past a skipped one would move its
        // last-sent mark beyond the gap.
        if shared.lagged.load(Ordering::Acquire) {
            return;
        }
        let len = frame.len();
        let before = shared.queued.fetch_add(len, Ordering::AcqRel);
        let fits = before.saturating_add(len) <= self.max_queued;
        if !fits
            || tx
                .try_send(Push {
                    seq,
                    frame: frame.clone(),
                })
                .is_err()
        {
            shared.queued.fetch_sub(len, Ordering::AcqRel);
            shared.lagged.store(true, Ordering::Release);
            shared.wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sitrep_wire::api::EntryKind;

    fn delivery(seq: u64, to: &str, len: usize) -> Delivery {
        Delivery {
            recipients: vec![to.to_string()],
            seq,
            kind: EntryKind::Application,
            payload: Arc::from(vec![7u8; len]),
        }
    }

    #[test]
    fn a_full_queue_lags_and_queues_nothing_after_the_gap() {
        let hub = Hub::new(10_000);
        let mut sub = hub.subscribe("d");
        hub.publish(vec![delivery(1, "d", 4_000), delivery(2, "d", 4_000)]);
        assert!(!sub.take_lagged());
        // Over the byte bound: skipped, and so is everything after it until
        // the connection re-reads, even what would fit again.
        hub.publish(vec![delivery(3, "d", 4_000)]);
        assert!(sub.try_recv().is_some_and(|p| p.seq == 1));
        hub.publish(vec![delivery(4, "d", 100)]);
        assert!(sub.try_recv().is_some_and(|p| p.seq == 2));
        assert!(sub.try_recv().is_none());
        assert_eq!(sub.queued_bytes(), 0);
        assert!(sub.take_lagged());
        hub.publish(vec![delivery(5, "d", 100)]);
        assert!(sub.try_recv().is_some_and(|p| p.seq == 5));
    }

    #[test]
    fn an_entry_larger_than_the_queue_is_left_to_the_store() {
        let hub = Hub::new(1_000);
        let sub = hub.subscribe("d");
        hub.publish(vec![delivery(1, "d", 5_000)]);
        assert_eq!(sub.queued_bytes(), 0);
        assert!(sub.take_lagged());
    }
}
