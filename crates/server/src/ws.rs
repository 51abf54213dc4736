//! # GET /v1/ws
//! WebSocket push of a device's inbox. On connect the backlog is sent, then new
//! entries as they are committed, as binary frames (`sitrep_wire::frame`). The
//! device acknowledges with text frames `{"ack": SEQ}`.
//!
//! Memory per connection is bounded: one backlog page (`Config::page_bytes`,
//! or one larger entry), the hub's queue (`Config::ws_queue_bytes`) and the
//! socket's buffers. A connection that overflows its queue re-reads the store;
//! one that stops reading is closed. It must never drop an entry it has not
//! sent: the store, not this connection, is the record.

use std::sync::Arc;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures_util::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use sitrep_wire::frame;

use crate::AppState;
use crate::http::Auth;
use crate::hub::Event;

#[derive(Deserialize)]
struct AckFrame {
    ack: u64,
}

/// Most entries per backlog page (the byte bound, `Config::page_bytes`, is
/// the same as the inbox's).
const BACKLOG_PAGE: u64 = 1000;

#[utoipa::path(
    get,
    path = "/v1/ws",
    tag = "messages",
    responses((status = 101, description = "WebSocket: binary frames of inbox entries, text frames {\"ack\": SEQ} back. A browser, which cannot set headers, offers the subprotocols `sitrep` and `bearer.TOKEN`; the server answers `sitrep`."), (status = "4XX", description = "refused: see `error`", body = sitrep_wire::api::ApiError)),
    security(("bearer" = [])),
)]
pub(crate) async fn upgrade(
    State(st): State<Arc<AppState>>,
    Auth(dev): Auth,
    ws: WebSocketUpgrade,
) -> Response {
    ws.protocols(["sitrep"])
        .max_message_size(4096)
        .read_buffer_size(2 * 1024)
        .on_upgrade(move |socket| serve(socket, st, dev.device_id))
}

async fn serve(socket: WebSocket, st: Arc<AppState>, device_id: String) {
    let mut sub = st.hub.subscribe(&device_id);
    let (mut sink, mut stream) = socket.split();
    // Every write is bounded in time by the connection itself (see
    // `Config::write_timeout`): a client that stops reading gets an error
    // here and is dropped; it catches up from the store when it reconnects.
    let mut last_sent = 0u64;
    // Backlog after subscribing, so nothing committed in between is missed.
    let mut resync = true;
    loop {
        if resync || sub.take_lagged() {
            resync = false;
            loop {
                let st2 = st.clone();
                let d = device_id.clone();
                let (after, max) = (last_sent, st.config.page_bytes);
                let page =
                    tokio::task::spawn_blocking(move || st2.db.fetch(&d, after, BACKLOG_PAGE, max))
                        .await;
                // Without its backlog the connection would push past a gap.
                let Ok(Ok((entries, more))) = page else {
                    st.hub.unsubscribe(&device_id, sub.id);
                    return;
                };
                st.metrics.delivered("push", entries.len() as u64);
                for e in entries {
                    last_sent = e.seq;
                    let f = frame::encode(e.seq, e.kind, &e.payload);
                    if sink.feed(Message::Binary(f.into())).await.is_err() {
                        st.hub.unsubscribe(&device_id, sub.id);
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    st.hub.unsubscribe(&device_id, sub.id);
                    return;
                }
                if !more {
                    break;
                }
            }
        }
        tokio::select! {
            pushed = sub.recv() => {
                let first = match pushed {
                    Event::Push(p) => p,
                    Event::Lagged => continue,
                    Event::Closed => break,
                };
                // Write everything already buffered, then flush once.
                let mut next = Some(first);
                let mut ok = true;
                let mut pushed = 0u64;
                while let Some(e) = next.take() {
                    if e.seq > last_sent {
                        last_sent = e.seq;
                        pushed += 1;
                        if sink.feed(Message::Binary(e.frame)).await.is_err() {
                            ok = false;
                            break;
                        }
                    }
                    next = sub.try_recv();
                }
                st.metrics.delivered("push", pushed);
                if !ok || sink.flush().await.is_err() {
                    break;
                }
            }
            incoming = stream.next() => {
                match incoming {
                    Some(Ok(Message::Text(t))) => {
                        if let Ok(a) = serde_json::from_str::<AckFrame>(t.as_str()) {
                            st.acks.add(&device_id, a.ack);
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                }
            }
        }
    }
    st.hub.unsubscribe(&device_id, sub.id);
}
