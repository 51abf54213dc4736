//! # GET /v1/ws
//! WebSocket push of a device's inbox. On connect the backlog is sent, then new
//! entries as they are committed, as binary frames (`sitrep_wire::frame`). The
//! device acknowledges with text frames `{"ack": SEQ}`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures_util::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use sitrep_wire::frame;

use crate::AppState;
use crate::http::Auth;

#[derive(Deserialize)]
struct AckFrame {
    ack: u64,
}

pub(crate) async fn upgrade(
    State(st): State<Arc<AppState>>,
    Auth(dev): Auth,
    ws: WebSocketUpgrade,
) -> Response {
    ws.max_message_size(4096)
        .on_upgrade(move |socket| serve(socket, st, dev.device_id))
}

async fn serve(socket: WebSocket, st: Arc<AppState>, device_id: String) {
    let (conn_id, mut rx, lagged) = st.hub.subscribe(&device_id);
    let (mut sink, mut stream) = socket.split();
    let mut last_sent = 0u64;
    // Backlog after subscribing, so nothing committed in between is missed.
    let mut resync = true;
    loop {
        if resync || lagged.swap(false, Ordering::AcqRel) {
            resync = false;
            loop {
                let st2 = st.clone();
                let d = device_id.clone();
                let after = last_sent;
                let page = tokio::task::spawn_blocking(move || st2.db.fetch(&d, after, 1000)).await;
                let Ok(Ok((entries, more))) = page else {
                    break;
                };
                for e in entries {
                    last_sent = e.seq;
                    if sink
                        .send(Message::Binary(
                            frame::encode(e.seq, e.kind, &e.payload).into(),
                        ))
                        .await
                        .is_err()
                    {
                        st.hub.unsubscribe(&device_id, conn_id);
                        return;
                    }
                }
                if !more {
                    break;
                }
            }
        }
        tokio::select! {
            pushed = rx.recv() => {
                let Some(first) = pushed else { break };
                // Write everything already buffered, then flush once.
                let mut next = Some(first);
                let mut ok = true;
                while let Some(e) = next.take() {
                    if e.seq > last_sent {
                        last_sent = e.seq;
                        if sink.feed(Message::Binary(e.frame)).await.is_err() {
                            ok = false;
                            break;
                        }
                    }
                    next = rx.try_recv().ok();
                }
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
    st.hub.unsubscribe(&device_id, conn_id);
}
