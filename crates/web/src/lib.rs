//! The Sitrep client engine for the browser.
//!
//! `sitrep-core` behind wasm-bindgen, for the web app's Web Worker. The
//! worker is the driver: it keeps the sealed records in IndexedDB, performs
//! the requests an engine task asks for with `fetch`, and feeds the answers
//! back. Everything that decides (the protocol, the policies, the PID guard,
//! the app lock) is the core's; this crate only translates.
//!
//! **Writes before requests.** Every call that changes the profile queues
//! what the store must write ([`Engine::take_writes`]: sealed records only,
//! never plaintext). The worker writes them to IndexedDB and waits for the
//! transaction to complete before it performs the request that
//! [`Engine::poll`] handed out, so a closed tab or a crash cannot lose a
//! ciphertext, reuse a ratchet generation or forget a change whose answer
//! was lost.
//!
//! **The wrong-passcode count** is read before unlocking and written by the
//! worker, raised by one, before the passcode is tried (so closing the tab
//! during the key derivation does not give a free try); the core then
//! writes the real count.
//!
//! Structured answers are JSON text: one format for every view, checked by
//! the native tests of this crate.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use serde_json::{Value, json};
use sitrep_core::engine::{Action, Create, Method, Outbox, Reply, Setup, Sync, Task, TopUp};
use sitrep_core::persist::{Changes, Sealed};
use sitrep_core::store::{DEFAULT_MAX_FAILURES, ProfileStore};
use sitrep_core::vault::RecordId;
use sitrep_core::{Ciphersuite, Error, Event, PendingEnrolment, Session, UnlockError};
use sitrep_wire::api;
use sitrep_wire::invite::Invite;
use sitrep_wire::policy::SignedPolicy;
use wasm_bindgen::prelude::*;

/// One thing the worker must write, in order, in one IndexedDB transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Delete every record.
    Clear,
    /// Insert or replace a record.
    Put(RecordId, Vec<u8>),
    /// Delete a record.
    Delete(RecordId),
    /// The wrong-passcode count and its limit.
    Failures(u32, u32),
}

#[derive(Default)]
struct Inner {
    records: Option<BTreeMap<RecordId, Vec<u8>>>,
    failures: (u32, u32),
    out: Vec<Write>,
}

/// The records as the worker loaded them from IndexedDB, and what is to be
/// written back. A handle: the engine and its session share one.
#[derive(Clone, Default)]
pub struct WebStore(Rc<RefCell<Inner>>);

impl WebStore {
    fn inner(&self) -> std::cell::RefMut<'_, Inner> {
        self.0.borrow_mut()
    }

    /// What is to be written, oldest first; taken once.
    pub fn take(&self) -> Vec<Write> {
        std::mem::take(&mut self.inner().out)
    }
}

impl ProfileStore for WebStore {
    fn load(&self) -> Result<Option<Vec<Sealed>>, Error> {
        Ok(self
            .0
            .borrow()
            .records
            .as_ref()
            .filter(|m| !m.is_empty())
            .map(|m| m.iter().map(|(k, v)| (*k, v.clone())).collect()))
    }

    fn write(&self, ch: &Changes) -> Result<(), Error> {
        if ch.is_empty() {
            return Ok(());
        }
        let mut i = self.inner();
        let i = &mut *i;
        let m = i.records.get_or_insert_with(BTreeMap::new);
        if ch.clear {
            m.clear();
            i.out.push(Write::Clear);
        }
        for id in &ch.delete {
            m.remove(id);
            i.out.push(Write::Delete(*id));
        }
        for (id, b) in &ch.put {
            m.insert(*id, b.clone());
            i.out.push(Write::Put(*id, b.clone()));
        }
        Ok(())
    }

    fn destroy(&self) -> Result<(), Error> {
        let mut i = self.inner();
        i.records = None;
        i.out.push(Write::Clear);
        Ok(())
    }

    fn unlock_failures(&self) -> Result<(u32, u32), Error> {
        let (n, l) = self.0.borrow().failures;
        Ok((n, if l == 0 { DEFAULT_MAX_FAILURES } else { l }))
    }

    fn set_unlock_failures(&self, failures: u32, limit: u32) -> Result<(), Error> {
        let mut i = self.inner();
        i.failures = (failures, limit);
        i.out.push(Write::Failures(failures, limit));
        Ok(())
    }
}

/// The task running: any, or a raise (whose result the screen shows).
enum Running {
    Any(Box<dyn Task>),
    Raise(Box<sitrep_core::engine::incident::Raise>),
}

impl Running {
    fn task(&mut self) -> &mut dyn Task {
        match self {
            Running::Any(t) => t.as_mut(),
            Running::Raise(t) => t.as_mut(),
        }
    }

    fn result(&self) -> Value {
        match self {
            Running::Raise(t) => {
                let r = t.raised();
                json!({"called": r.called, "unreachable": r.unreachable, "skipped": r.skipped})
            }
            Running::Any(_) => Value::Null,
        }
    }
}

/// An enrolment between its request and the server's answer.
struct Enrolling {
    pending: PendingEnrolment,
    invite: Invite,
    policy: Option<Vec<u8>>,
}

/// One device profile in the browser: the app lock around the core's
/// client, the engine task running, and the store's pending writes.
#[wasm_bindgen]
pub struct Engine {
    store: WebStore,
    session: Session<WebStore>,
    task: Option<Running>,
    failure: Option<Value>,
    enrolling: Option<Enrolling>,
    audited: Option<Audited>,
}

/// A records search or export between its audit request and the answer:
/// nothing is searched or exported until the server recorded it.
struct Audited {
    action: &'static str,
    query: String,
    hash: String,
    q: sitrep_core::RecordsQuery,
}

impl Default for Engine {
    fn default() -> Self {
        Self::new()
    }
}

fn err(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

#[wasm_bindgen]
impl Engine {
    /// An engine with no records yet: call [`Engine::load`] for each record
    /// in IndexedDB and [`Engine::set_failures`], then unlock or enrol.
    #[wasm_bindgen(constructor)]
    pub fn new() -> Engine {
        let store = WebStore::default();
        Engine {
            session: Session::new(store.clone()),
            store,
            task: None,
            failure: None,
            enrolling: None,
            audited: None,
        }
    }

    /// One sealed record as IndexedDB holds it.
    pub fn load(&mut self, id: &[u8], sealed: Vec<u8>) -> Result<(), JsError> {
        let id: RecordId = id
            .try_into()
            .map_err(|_| err("a record id of the wrong length"))?;
        self.store
            .inner()
            .records
            .get_or_insert_with(BTreeMap::new)
            .insert(id, sealed);
        Ok(())
    }

    /// The wrong-passcode count and limit as IndexedDB holds them.
    pub fn set_failures(&mut self, failures: u32, limit: u32) {
        self.store.inner().failures = (failures, limit);
    }

    /// `[failures, limit]` (the limit the last policy set).
    pub fn failures(&self) -> Vec<u32> {
        let (n, l) = self
            .store
            .unlock_failures()
            .unwrap_or((0, DEFAULT_MAX_FAILURES));
        vec![n, l]
    }

    /// Whether a profile exists on this browser.
    pub fn has_profile(&self) -> bool {
        self.store.load().ok().flatten().is_some()
    }

    /// What to write to IndexedDB, in order, in one transaction, before the
    /// next request: an array of `{op: "clear"}`, `{op: "put", id, data}`,
    /// `{op: "delete", id}`, `{op: "failures", failures, limit}`.
    pub fn take_writes(&mut self) -> js_sys::Array {
        let out = js_sys::Array::new();
        for w in self.store.take() {
            let o = js_sys::Object::new();
            let set = |k: &str, v: &JsValue| {
                let _ = js_sys::Reflect::set(&o, &JsValue::from_str(k), v);
            };
            match w {
                Write::Clear => set("op", &"clear".into()),
                Write::Put(id, data) => {
                    set("op", &"put".into());
                    set("id", &js_sys::Uint8Array::from(&id[..]).into());
                    set("data", &js_sys::Uint8Array::from(&data[..]).into());
                }
                Write::Delete(id) => {
                    set("op", &"delete".into());
                    set("id", &js_sys::Uint8Array::from(&id[..]).into());
                }
                Write::Failures(n, l) => {
                    set("op", &"failures".into());
                    set("failures", &n.into());
                    set("limit", &l.into());
                }
            }
            out.push(&o);
        }
        out
    }

    /// Step one of enrolment: the code as typed and the server's
    /// `/healthz` fingerprint. Refuses a server that is not the
    /// organisation the code was issued by, before the code is sent.
    /// Returns the fingerprint, grouped for reading aloud.
    pub fn enrol_check(&self, code: &str, fingerprint: &str) -> Result<String, JsError> {
        let invite = Invite::parse(code).map_err(err)?;
        if !invite.matches_fingerprint(fingerprint) {
            return Err(err(format!(
                "this server is not the organisation your code is from (its key fingerprint is {fingerprint}); nothing was sent to it"
            )));
        }
        Ok(group_fingerprint(fingerprint))
    }

    /// The passcode length the organisation asks for, from `/v1/policy`'s
    /// answer (unverified: the key is not known before enrolment; it is
    /// checked after).
    pub fn min_passcode(policy_answer: &str) -> u32 {
        signed_policy(policy_answer)
            .as_deref()
            .and_then(SignedPolicy::peek_unverified)
            .map_or(6, |p| u32::from(p.min_passcode_len))
    }

    /// Step two: the body to `POST /v1/enrol` (a fresh signature key in
    /// the organisation's suite, proof of holding it, the code's secret).
    pub fn enrol_request(&mut self, code: &str, policy_answer: &str) -> Result<String, JsError> {
        let invite = Invite::parse(code).map_err(err)?;
        let policy = signed_policy(policy_answer);
        let cs = policy
            .as_deref()
            .and_then(SignedPolicy::peek_unverified)
            .and_then(|p| Ciphersuite::try_from(p.ciphersuite).ok())
            .unwrap_or(sitrep_core::DEFAULT_CIPHERSUITE);
        let pending = PendingEnrolment::new(cs).map_err(err)?;
        let body = serde_json::to_string(&pending.enrol_request(&invite.secret).map_err(err)?)
            .map_err(err)?;
        self.enrolling = Some(Enrolling {
            pending,
            invite,
            policy,
        });
        Ok(body)
    }

    /// Step three: the server's answer; seals the new profile under the
    /// passcode (Argon2id at the policy's cost) and returns
    /// `{totp_uri, user_id, display_name, org}` (`totp_uri`: for the QR
    /// code of the authenticator app). Then run the `topup` task.
    pub fn enrol_finish(
        &mut self,
        server: &str,
        answer: &str,
        passcode: &str,
        now_ms: f64,
    ) -> Result<String, JsError> {
        let e = self
            .enrolling
            .take()
            .ok_or_else(|| err("no enrolment under way"))?;
        let resp: api::EnrolResponse = serde_json::from_str(answer).map_err(err)?;
        if !e.invite.matches_key(&resp.org_public_key) {
            return Err(err(
                "the server enrolled this device under a key that is not its invitation's organisation's; refused",
            ));
        }
        let mut client = e.pending.finish(server, resp).map_err(err)?;
        if let Some(sp) = &e.policy {
            client.apply_policy(sp).map_err(err)?;
        }
        let uri = client.setup_totp().map_err(err)?;
        let out = json!({
            "totp_uri": uri,
            "user_id": client.user_id(),
            "display_name": client.display_name(),
            "org": client.org_name(),
        });
        self.session =
            Session::create(self.store.clone(), client, passcode, now_ms as u64).map_err(err)?;
        Ok(out.to_string())
    }

    /// Unlock with the passcode (and the TOTP code where the policy asks
    /// for one). `{ok: true}` or `{ok: false, reason: "wrong" | "two_step"
    /// | "wiped" | "none", remaining, message}`.
    pub fn unlock(&mut self, passcode: &str, code: Option<String>, now_ms: f64) -> String {
        let r = self
            .session
            .unlock_with_code(passcode, code.as_deref(), now_ms as u64);
        let v = match r {
            Ok(()) => json!({"ok": true}),
            Err(e) => {
                let (reason, remaining) = match &e {
                    UnlockError::WrongPasscode { remaining } => ("wrong", *remaining),
                    UnlockError::TwoStepRequired { remaining } => ("two_step", *remaining),
                    UnlockError::Wiped => ("wiped", 0),
                    UnlockError::NoProfile => ("none", 0),
                    _ => ("error", 0),
                };
                json!({"ok": false, "reason": reason, "remaining": remaining, "message": e.to_string()})
            }
        };
        v.to_string()
    }

    /// Lock now (the key is zeroised and the client dropped).
    pub fn lock(&mut self) {
        self.task = None;
        self.session.lock();
    }

    /// Whether the profile is locked at `now_ms` (locking it when idle
    /// past the policy's time). Asking is not activity.
    pub fn locked(&mut self, now_ms: f64) -> bool {
        let locked = self.session.is_locked(now_ms as u64);
        if locked {
            self.task = None;
        }
        locked
    }

    /// The user did something at `now_ms`: the idle timer starts again.
    /// `false` if the profile was locked (or just locked by idle time).
    pub fn touch(&mut self, now_ms: f64) -> bool {
        self.session.client(now_ms as u64).is_ok()
    }

    /// Who this device is and what the organisation's policy says, as JSON:
    /// `{user_id, display_name, device_id, org, fingerprint, server,
    /// policy: {lock_after_idle_secs, previews, two_step_required,
    /// min_passcode_len}}`.
    pub fn me(&mut self, now_ms: f64) -> Result<String, JsError> {
        let c = self.session.background(now_ms as u64).map_err(err)?;
        let p = c.policy();
        Ok(json!({
            "user_id": c.user_id(),
            "display_name": c.display_name(),
            "device_id": c.device_id(),
            "org": c.org_name(),
            "fingerprint": group_fingerprint(&c.org_fingerprint()),
            "server": c.server(),
            "policy": {
                "lock_after_idle_secs": p.lock_after_idle_secs,
                "previews": format!("{:?}", p.previews).to_lowercase(),
                "two_step_required": p.two_step_required,
                "min_passcode_len": p.min_passcode_len,
            },
        })
        .to_string())
    }

    /// The device's bearer token, for the worker's requests (it never
    /// leaves the worker).
    pub fn token(&mut self, now_ms: f64) -> Result<String, JsError> {
        let c = self.session.background(now_ms as u64).map_err(err)?;
        Ok(c.token().to_string())
    }

    /// Start an engine task, replacing any that was running (its sealed
    /// state makes that safe: a change whose answer was lost is settled by
    /// the next sync). `kind`: `sync` (everything), `catch_up` (what a push
    /// calls for), `outbox`, `topup`, `create` (`args`: `{name, members,
    /// pid_policy}`).
    pub fn start(&mut self, kind: &str, args: &str, now_ms: f64) -> Result<(), JsError> {
        let c = self.session.background(now_ms as u64).map_err(err)?;
        let task: Running = match kind {
            "sync" => Running::Any(Box::new(Sync::new())),
            "catch_up" => Running::Any(Box::new(Sync::catch_up())),
            "outbox" => Running::Any(Box::new(Outbox::new())),
            "topup" => Running::Any(Box::new(TopUp::new())),
            "raise" => {
                #[derive(serde::Deserialize)]
                struct A {
                    id: String,
                    level: sitrep_wire::incident::Level,
                    #[serde(default)]
                    methane: Option<sitrep_wire::incident::Methane>,
                    #[serde(default)]
                    note: String,
                }
                let a: A = serde_json::from_str(args).map_err(err)?;
                Running::Raise(Box::new(sitrep_core::engine::incident::Raise::new(
                    a.id.trim(),
                    a.level,
                    a.methane,
                    &a.note,
                )))
            }
            "create" => {
                #[derive(serde::Deserialize)]
                struct A {
                    name: String,
                    members: Vec<String>,
                    #[serde(default = "warn")]
                    pid_policy: String,
                }
                fn warn() -> String {
                    "warn".into()
                }
                let a: A = serde_json::from_str(args).map_err(err)?;
                let name = a.name.trim();
                if name.is_empty() {
                    return Err(err("a conversation needs a name"));
                }
                if c.conversation(name).is_ok_and(|c| c.active) {
                    return Err(err(format!(
                        "you already have a conversation named {name:?}: choose another name"
                    )));
                }
                let setup = Setup {
                    pid_policy: a.pid_policy,
                    ..Setup::default()
                };
                Running::Any(Box::new(Create::new(c, name, &a.members, setup)))
            }
            _ => return Err(err(format!("no such task: {kind}"))),
        };
        self.task = Some(task);
        self.failure = None;
        Ok(())
    }

    /// The running task's next step, as JSON:
    /// - `{t: "request", method, path, body, durable}`: first write
    ///   [`Engine::take_writes`] (and wait for IndexedDB to complete), then
    ///   perform it and call [`Engine::feed`] or [`Engine::feed_lost`];
    /// - `{t: "wait", until}`: poll again then (a backoff);
    /// - `{t: "done", events, result}`: finished; write what is left
    ///   (`result`: a raise's `{called, unreachable, skipped}`);
    /// - `{t: "failed", op, kind, message, retryable}`: stopped (`kind`
    ///   `wiped`: this device's data is destroyed);
    /// - `{t: "idle"}`: no task.
    pub fn poll(&mut self, now_ms: f64) -> String {
        if let Some(f) = self.failure.take() {
            return f.to_string();
        }
        let Some(task) = self.task.as_mut() else {
            return json!({"t": "idle"}).to_string();
        };
        let Ok(c) = self.session.background(now_ms as u64) else {
            self.task = None;
            return json!({"t": "failed", "op": "syncing", "kind": "locked", "message": "locked", "retryable": true}).to_string();
        };
        let action = task.task().poll(c, now_ms as u64);
        let v = match action {
            Ok(Action::Request(r)) => {
                if let Err(e) = self.session.save() {
                    self.task = None;
                    return failed_local(&e);
                }
                json!({
                    "t": "request",
                    "method": match r.method { Method::Get => "GET", _ => "POST" },
                    "path": r.path,
                    "body": String::from_utf8_lossy(&r.body),
                    "durable": r.durable,
                })
            }
            Ok(Action::Wait { until_ms }) => json!({"t": "wait", "until": until_ms}),
            Ok(Action::Done(events)) => {
                let result = task.result();
                // What a notification may say, by the organisation's policy
                // (the text itself only where it allows previews).
                let note = c.notification(&events, None).map(|n| {
                    json!({"new_messages": n.new_messages, "conversations": n.conversations, "preview": n.preview})
                });
                self.task = None;
                let _ = self.session.save();
                json!({"t": "done", "events": events.iter().map(event_json).collect::<Vec<_>>(), "result": result, "notification": note})
            }
            Ok(_) => {
                self.task = None;
                json!({"t": "failed", "op": "syncing", "kind": "local", "message": "an engine action this app does not know", "retryable": false})
            }
            Err(f) => {
                self.task = None;
                self.failed(&f)
            }
        };
        v.to_string()
    }

    /// The server's answer to the request the last poll handed out.
    pub fn feed(&mut self, status: u16, body: &[u8], now_ms: f64) {
        self.reply(Reply::Answered { status, body }, now_ms);
    }

    /// No answer to the last request (network down, cut, timed out).
    pub fn feed_lost(&mut self, now_ms: f64) {
        self.reply(Reply::Lost, now_ms);
    }
}

/// What the screens show. All JSON; the UI renders, the engine decides.
#[wasm_bindgen]
impl Engine {
    /// The conversations, most recent activity first: `[{name, active,
    /// unread, pid_policy, posters, last: {sender_name, body, sent_at} |
    /// null}]`.
    pub fn conversations(&mut self, now_ms: f64) -> Result<String, JsError> {
        let c = self.session.background(now_ms as u64).map_err(err)?;
        let me = c.user_id().to_string();
        let mut list: Vec<(u64, Value)> = c
            .conversations()
            .map(|conv| {
                let last = conv.history.iter().rev().find(|h| h.kind != "system");
                let last_body = last.map(shown_body);
                let at = conv.history.last().map_or(0, |h| h.received_at);
                (
                    at,
                    json!({
                        "name": conv.name,
                        "active": conv.active,
                        "unread": sitrep_core::unread_in(conv, &me),
                        "pid_policy": conv.pid_policy,
                        "posters": conv.posters,
                        "last": last.map(|h| json!({
                            "sender_name": h.sender_name,
                            "body": last_body,
                            "sent_at": h.sent_at,
                        })),
                    }),
                )
            })
            .collect();
        list.sort_by_key(|e| std::cmp::Reverse(e.0));
        Ok(Value::Array(list.into_iter().map(|(_, v)| v).collect()).to_string())
    }

    /// One conversation: `{name, active, pid_policy, members: [{user_id,
    /// display_name, role}], entries: [{id, sender, sender_name, mine,
    /// sent_at, kind, body, seq, state}]}`; `state` of the user's own
    /// messages: `queued` (in the outbox) or `sent` (stored by the server).
    ///
    /// With `receipts` (the answer to [`Engine::receipts_path`]), each of
    /// the user's own messages also has `tally: {recipients, delivered,
    /// read}` (counted by person), `seen_by` (names) and a state of
    /// `delivered` (on every recipient's device) or `read` (shown to
    /// everyone).
    pub fn conversation(
        &mut self,
        name: &str,
        receipts: Option<String>,
        now_ms: f64,
    ) -> Result<String, JsError> {
        let c = self.session.background(now_ms as u64).map_err(err)?;
        let me = c.user_id().to_string();
        let conv = c.conversation(name).map_err(err)?.clone();
        let member_list = c.members(name).unwrap_or_default();
        let names: BTreeMap<&str, &str> = member_list
            .iter()
            .map(|m| (m.user_id.as_str(), m.display_name.as_str()))
            .collect();
        let members: Vec<Value> = member_list
            .iter()
            .map(|m| json!({"user_id": m.user_id, "display_name": m.display_name, "role": m.role}))
            .collect();
        let receipts: Option<api::Receipts> = receipts.and_then(|r| serde_json::from_str(&r).ok());
        let mut entries: Vec<Value> = conv
            .history
            .iter()
            .map(|h| {
                let mut v = json!({
                    "id": h.id,
                    "sender": h.sender,
                    "sender_name": h.sender_name,
                    "mine": h.sender == me,
                    "sent_at": h.sent_at,
                    "kind": h.kind,
                    "body": shown_body(h),
                    "seq": h.seq,
                    "state": if h.sender == me { "sent" } else { "received" },
                });
                if let (Some(r), true) = (&receipts, h.sender == me && h.seq > 0) {
                    let t = r.tally(h.seq, &me);
                    let mut seen: Vec<&str> = r
                        .devices
                        .iter()
                        .filter(|d| {
                            d.user_id != me
                                && d.from_seq < h.seq
                                && d.to_seq.is_none_or(|t| t >= h.seq)
                                && d.read_through >= h.seq
                        })
                        .map(|d| names.get(d.user_id.as_str()).copied().unwrap_or(&d.user_id))
                        .collect();
                    seen.sort_unstable();
                    seen.dedup();
                    v["tally"] = json!({"recipients": t.recipients, "delivered": t.delivered, "read": t.read});
                    v["seen_by"] = json!(seen);
                    if t.recipients > 0 && t.read == t.recipients {
                        v["state"] = json!("read");
                    } else if t.recipients > 0 && t.delivered == t.recipients {
                        v["state"] = json!("delivered");
                    }
                }
                v
            })
            .collect();
        for w in c.waiting().into_iter().filter(|w| w.conversation == name) {
            entries.push(json!({
                "id": w.id,
                "sender": me,
                "sender_name": c.display_name(),
                "mine": true,
                "sent_at": w.written_at,
                "kind": "text",
                "body": w.body,
                "seq": 0,
                "state": "queued",
            }));
        }
        Ok(json!({
            "name": conv.name,
            "active": conv.active,
            "pid_policy": conv.pid_policy,
            "posters": conv.posters,
            "members": members,
            "entries": entries,
        })
        .to_string())
    }

    /// `GET` this for [`Engine::conversation`]'s delivery and read state.
    pub fn receipts_path(&mut self, name: &str, now_ms: f64) -> Result<String, JsError> {
        let c = self.session.background(now_ms as u64).map_err(err)?;
        Ok(format!(
            "/v1/groups/{}/receipts",
            c.group_hex(name).map_err(err)?
        ))
    }

    /// After the conversation was shown: `{path, body}` to `POST` (the read
    /// marker: the last message shown), or nothing when no message has a
    /// place in the server's log.
    pub fn read_marker(&mut self, name: &str, now_ms: f64) -> Result<Option<String>, JsError> {
        let c = self.session.background(now_ms as u64).map_err(err)?;
        let conv = c.conversation(name).map_err(err)?;
        if !conv.active {
            return Ok(None);
        }
        let Some(seq) = conv.history.iter().map(|h| h.seq).max().filter(|s| *s > 0) else {
            return Ok(None);
        };
        let path = format!("/v1/groups/{}/read", c.group_hex(name).map_err(err)?);
        let body = serde_json::to_string(&api::ReadRequest { seq }).map_err(err)?;
        Ok(Some(json!({"path": path, "body": body}).to_string()))
    }

    /// The user has seen the conversation: its unread count goes to 0.
    pub fn mark_shown(&mut self, name: &str, now_ms: f64) -> Result<(), JsError> {
        let c = self.session.client(now_ms as u64).map_err(err)?;
        c.mark_shown(name).map_err(err)?;
        self.session.save().map_err(err)
    }

    /// The PID guard on a message about to be sent, under the
    /// conversation's policy: `{policy, outcome: "send" | "warn" | "block"
    /// | "rewrite", text, segments: [{text, kind}]}`. `segments` is the
    /// message cut at each finding (`kind` null outside findings), for
    /// highlighting; `text` is what would be sent.
    pub fn pid_scan(&mut self, name: &str, body: &str, now_ms: f64) -> Result<String, JsError> {
        let c = self.session.background(now_ms as u64).map_err(err)?;
        let conv = c.conversation(name).map_err(err)?;
        let policy: sitrep_pid::PidPolicy = conv.pid_policy.parse().unwrap_or_default();
        Ok(pid_json(&conv.pid_policy, policy, body).to_string())
    }

    /// Write a message into the sealed outbox (the PID guard applied;
    /// `confirmed`: the sender saw the warnings); returns its id. Then
    /// write, and run `sync`, which encrypts and posts it.
    pub fn queue(
        &mut self,
        name: &str,
        body: &str,
        confirmed: bool,
        now_ms: f64,
    ) -> Result<String, JsError> {
        let c = self.session.client(now_ms as u64).map_err(err)?;
        let id = c
            .queue_text(name, body, now_ms as u64, confirmed)
            .map_err(|e| match e {
                Error::PidBlocked(_) => {
                    err("the PID guard blocks this message in this conversation")
                }
                Error::PidNeedsConfirmation(_) => {
                    err("the PID guard found patient identifiers: confirm to send")
                }
                e => err(e),
            })?;
        self.session.save().map_err(err)?;
        Ok(id)
    }
}

/// Major-incident mode.
#[wasm_bindgen]
impl Engine {
    /// What the banner, the call-in and the alerts show: `{can_declare,
    /// incidents: [{id, level, methane, conversation, timeline, my_reply,
    /// tally}], alerts: [{id, conversation, priority, text, from,
    /// sent_at, breakthrough, escalations}]}`. `tally` (the coordinator's
    /// live call-in count) is there for those who may declare.
    pub fn incidents(&mut self, now_ms: f64) -> Result<String, JsError> {
        let now = now_ms as u64;
        let c = self.session.background(now).map_err(err)?;
        let me = c.user_id().to_string();
        let dir = c.directory();
        let can_declare = dir.can_declare(&me);
        let conv_of = |c: &sitrep_core::Client, hex: &str| {
            c.conversations()
                .find(|x| sitrep_core::records::group_hex_of(x) == hex)
                .map(|x| x.name.clone())
        };
        let mut incidents = Vec::new();
        for i in c.incidents() {
            let tally = if can_declare || dir.commanders().contains(&me) {
                c.callin_tally(&i.id)
                    .ok()
                    .map(|t| serde_json::to_value(t).unwrap_or_default())
            } else {
                None
            };
            incidents.push(json!({
                "id": i.id,
                "level": i.level,
                "methane": i.methane,
                "conversation": conv_of(c, &i.group),
                "timeline": i.timeline,
                "my_reply": i.callin.get(&me).map(|(a, role, at, _)| json!({"availability": a, "role": role, "at": at})),
                "tally": tally,
            }));
        }
        let alerts: Vec<Value> = c
            .alerts_for_me(now)
            .into_iter()
            .map(|(id, a)| {
                json!({
                    "id": id,
                    "conversation": conv_of(c, &a.group),
                    "priority": a.alert.priority,
                    "text": a.alert.text,
                    "from": a.sender,
                    "sent_at": a.sent_at,
                    "breakthrough": a.alert.breakthrough,
                    "escalations": a.escalations.len(),
                })
            })
            .collect();
        // Alerts this user sent: who read and acknowledged them, and how
        // far they escalated.
        let sent: Vec<Value> = c
            .alert_states()
            .filter(|(_, a)| a.sender == me)
            .map(|(id, a)| {
                json!({
                    "id": id,
                    "text": a.alert.text,
                    "to": a.recipients,
                    "read_by": a.read_by,
                    "acked": a.acked,
                    "escalations": a.escalations.iter().map(|(step, at, _)| json!({"step": step, "at": at})).collect::<Vec<_>>(),
                })
            })
            .collect();
        Ok(json!({"can_declare": can_declare, "incidents": incidents, "alerts": alerts, "sent": sent}).to_string())
    }

    /// Reply to an incident's call-in, in one tap: `availability` is
    /// `now`, `unavailable`, or minutes until arrival. Into the outbox;
    /// then run `outbox` (or `sync`).
    pub fn callin(&mut self, id: &str, availability: &str, now_ms: f64) -> Result<String, JsError> {
        use sitrep_wire::incident::Availability;
        let now = now_ms as u64;
        let availability = match availability {
            "now" => Availability::Now,
            "unavailable" => Availability::Unavailable,
            m => Availability::In(m.parse().map_err(|_| err("minutes, now or unavailable"))?),
        };
        let c = self.session.client(now).map_err(err)?;
        let out = c.callin_reply(id, availability, None, now).map_err(err)?;
        self.session.save().map_err(err)?;
        Ok(out.request.client_id)
    }

    /// Send a priority alert in conversation `name` to `to` (`user:ID`,
    /// `role:ID`, `team:ID`, or an id: a role if the directory has it);
    /// `priority` `routine`, `urgent` or `emergency`; it escalates after
    /// `ack_within_secs` without an acknowledgement. Into the outbox; then
    /// run `outbox` (or `sync`).
    pub fn send_alert(
        &mut self,
        name: &str,
        to: &str,
        priority: &str,
        text: &str,
        ack_within_secs: u32,
        now_ms: f64,
    ) -> Result<String, JsError> {
        use sitrep_wire::incident::{Alert, Priority, Structured};
        let now = now_ms as u64;
        let priority = match priority {
            "routine" => Priority::Routine,
            "urgent" => Priority::Urgent,
            "emergency" => Priority::Emergency,
            _ => return Err(err("routine, urgent or emergency")),
        };
        let c = self.session.client(now).map_err(err)?;
        let target = c.parse_target(to);
        let item = Structured::Alert(Alert::new(priority, target, text, ack_within_secs));
        let out = c.send_structured(name, &item, now).map_err(err)?;
        self.session.save().map_err(err)?;
        Ok(out.request.client_id)
    }

    /// Acknowledge an alert (it stops escalating on every device). Into
    /// the outbox; then run `outbox` (or `sync`).
    pub fn ack_alert(&mut self, alert: &str, now_ms: f64) -> Result<(), JsError> {
        let now = now_ms as u64;
        let c = self.session.client(now).map_err(err)?;
        c.ack_alert(alert, now).map_err(err)?;
        self.session.save().map_err(err)
    }
}

/// The decision log and the casualty board of a conversation.
#[wasm_bindgen]
impl Engine {
    /// The decision log as an export (`sitrep-decision-log-v1`, signed,
    /// in log order; the same JSON `sitrep incident decisions verify`
    /// checks), for showing and for download.
    pub fn decisions(&mut self, name: &str, now_ms: f64) -> Result<String, JsError> {
        let c = self.session.background(now_ms as u64).map_err(err)?;
        let log = c.export_decisions(name, now_ms as u64).map_err(err)?;
        serde_json::to_string(&log).map_err(err)
    }

    /// Log a decision (`DECISION`) or an action (`ACTION`), signed and
    /// chained to the log's heads; into the outbox, then run `outbox`.
    pub fn decide(
        &mut self,
        name: &str,
        kind: &str,
        text: &str,
        now_ms: f64,
    ) -> Result<(), JsError> {
        use sitrep_wire::incident::DecisionKind;
        let now = now_ms as u64;
        let kind = match kind {
            "DECISION" => DecisionKind::Decision,
            "ACTION" => DecisionKind::Action,
            _ => return Err(err("DECISION or ACTION")),
        };
        let c = self.session.client(now).map_err(err)?;
        let item = c.decision(name, kind, text, now).map_err(err)?;
        c.send_structured(name, &item, now).map_err(err)?;
        self.session.save().map_err(err)
    }

    /// The casualty board: `[{mi, triage, location, note, at, by}]`, by MI
    /// number (no names: the PID guard's rule for the board).
    pub fn casualties(&mut self, name: &str, now_ms: f64) -> Result<String, JsError> {
        let c = self.session.background(now_ms as u64).map_err(err)?;
        let rows: Vec<Value> = c
            .casualties(name)
            .map_err(err)?
            .into_iter()
            .map(|(k, at, by)| {
                json!({"mi": k.mi, "triage": k.triage, "location": k.location, "note": k.note, "at": at, "by": by})
            })
            .collect();
        Ok(Value::Array(rows).to_string())
    }

    /// Add or update a casualty (`{mi, triage, location, note}`); into the
    /// outbox, then run `outbox`.
    pub fn casualty(&mut self, name: &str, entry: &str, now_ms: f64) -> Result<(), JsError> {
        use sitrep_wire::incident::{Casualty, Structured};
        let now = now_ms as u64;
        let k: Casualty = serde_json::from_str(entry).map_err(err)?;
        let c = self.session.client(now).map_err(err)?;
        c.send_structured(name, &Structured::Casualty(k), now)
            .map_err(err)?;
        self.session.save().map_err(err)
    }
}

/// The records account: search and export, each recorded in the
/// organisation's audit log first.
#[wasm_bindgen]
impl Engine {
    /// Whether this device is the organisation's records account.
    pub fn is_records(&mut self, now_ms: f64) -> Result<bool, JsError> {
        let c = self.session.background(now_ms as u64).map_err(err)?;
        Ok(c.is_records_account())
    }

    /// Step one of a search (`kind` `search`) or a disclosure export
    /// (`export`, by identifier): `{path, body}` to `POST` to the audit
    /// log. `query`: `{identifier, text, from_ms, to_ms, participant}`.
    pub fn records_begin(
        &mut self,
        kind: &str,
        query: &str,
        now_ms: f64,
    ) -> Result<String, JsError> {
        #[derive(serde::Deserialize)]
        struct Q {
            identifier: Option<String>,
            text: Option<String>,
            from_ms: Option<u64>,
            to_ms: Option<u64>,
            participant: Option<String>,
        }
        let q: Q = serde_json::from_str(query).map_err(err)?;
        let blank = |s: Option<String>| s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        let q = sitrep_core::RecordsQuery {
            identifier: blank(q.identifier),
            text: blank(q.text),
            from_ms: q.from_ms,
            to_ms: q.to_ms,
            participant: blank(q.participant),
        };
        let action = match kind {
            "search" => "records.search",
            "export" if q.identifier.is_some() => "records.export",
            "export" => return Err(err("an export is for one identifier")),
            _ => return Err(err("search or export")),
        };
        let c = self.session.client(now_ms as u64).map_err(err)?;
        if !c.is_records_account() {
            return Err(err(sitrep_core::Error::NotRecords));
        }
        let query = json!({
            "identifier": q.identifier, "text": q.text, "from_ms": q.from_ms,
            "to_ms": q.to_ms, "participant": q.participant,
        })
        .to_string();
        let hash = c.audit_hash(&query);
        let body = serde_json::to_string(&api::AuditRequest {
            action: action.into(),
            query_hmac: Some(hash.clone()),
            ..Default::default()
        })
        .map_err(err)?;
        self.audited = Some(Audited {
            action,
            query,
            hash,
            q,
        });
        Ok(json!({"path": "/v1/audit", "body": body}).to_string())
    }

    /// Step two, with the audit log's answer (`{seq}`): the search's
    /// matches (`[{conversation, group, id, sender, body, sent_at, ...}]`)
    /// or the export's files (`[{name, text}]`); journalled on the device.
    pub fn records_finish(&mut self, answer: &str, now_ms: f64) -> Result<String, JsError> {
        let now = now_ms as u64;
        let a = self
            .audited
            .take()
            .ok_or_else(|| err("no records action waiting for the audit log"))?;
        let entry: api::AuditResponse = serde_json::from_str(answer)
            .map_err(|_| err("the audit log did not record this action, so it was not done"))?;
        let c = self.session.client(now).map_err(err)?;
        let out = if a.action == "records.search" {
            serde_json::to_string(&c.records_search(&a.q).map_err(err)?).map_err(err)?
        } else {
            let id = a.q.identifier.as_deref().unwrap_or_default();
            let files = c.records_export(id, entry.seq, now).map_err(err)?;
            Value::Array(
                files
                    .into_iter()
                    .map(|f| json!({"name": f.name, "text": String::from_utf8_lossy(&f.bytes)}))
                    .collect(),
            )
            .to_string()
        };
        c.journal(sitrep_core::JournalEntry {
            at: now,
            action: a.action.into(),
            query: a.query,
            query_hash: a.hash,
            audit_seq: entry.seq,
        });
        self.session.save().map_err(err)?;
        Ok(out)
    }
}

/// What a history line says to a person: the text, or for a structured
/// item (incident level, call-in, alert, ...) its one-line summary.
fn shown_body(h: &sitrep_core::HistoryEntry) -> String {
    match h.kind.as_str() {
        "text" | "system" => h.body.clone(),
        k => sitrep_core::incident::summary(k, &h.body),
    }
}

fn pid_json(name: &str, policy: sitrep_pid::PidPolicy, body: &str) -> Value {
    use sitrep_pid::PolicyOutcome as O;
    let (outcome, text, findings) = match sitrep_pid::apply_policy(policy, body) {
        O::Send(t) => ("send", t, Vec::new()),
        O::NeedsConfirmation(f) => ("warn", body.to_string(), f),
        O::Blocked(f) => ("block", String::new(), f),
        O::Rewritten(t, f) => ("rewrite", t, f),
    };
    let mut findings = findings;
    findings.sort_by_key(|f| f.start);
    let mut segments = Vec::new();
    let mut at = 0;
    for f in &findings {
        if f.start < at
            || f.end > body.len()
            || !body.is_char_boundary(f.start)
            || !body.is_char_boundary(f.end)
        {
            continue;
        }
        if f.start > at {
            segments.push(json!({"text": &body[at..f.start], "kind": null}));
        }
        segments.push(json!({"text": &body[f.start..f.end], "kind": f.kind.to_string()}));
        at = f.end;
    }
    if at < body.len() {
        segments.push(json!({"text": &body[at..], "kind": null}));
    }
    json!({"policy": name, "outcome": outcome, "text": text, "segments": segments})
}

impl Engine {
    fn reply(&mut self, reply: Reply<'_>, now_ms: f64) {
        let Some(task) = self.task.as_mut() else {
            return;
        };
        let Ok(c) = self.session.background(now_ms as u64) else {
            self.task = None;
            return;
        };
        if let Err(f) = task.task().feed(c, reply, now_ms as u64) {
            self.task = None;
            let v = self.failed(&f);
            self.failure = Some(v);
        }
    }

    fn failed(&mut self, f: &sitrep_core::engine::Failure) -> Value {
        use sitrep_core::engine::FailureKind as K;
        let kind = match &f.kind {
            K::Unreachable { .. } => "unreachable",
            K::Unconfirmed => "unconfirmed",
            K::Contended => "contended",
            K::Refused { .. } => "refused",
            K::Untrusted { .. } => "untrusted",
            K::Wiped => "wiped",
            _ => "local",
        };
        if f.wiped() {
            let _ = self.session.wipe();
        } else {
            let _ = self.session.save();
        }
        json!({"t": "failed", "op": f.op, "kind": kind, "message": f.to_string(), "retryable": f.retryable()})
    }
}

fn failed_local(e: &Error) -> String {
    json!({"t": "failed", "op": "saving", "kind": "local", "message": e.to_string(), "retryable": false}).to_string()
}

fn event_json(e: &Event) -> Value {
    match e {
        Event::Joined { conversation } => json!({"t": "joined", "conversation": conversation}),
        Event::Message {
            conversation,
            entry,
        } => json!({
            "t": "message",
            "conversation": conversation,
            "id": entry.id,
            "kind": entry.kind,
            "sender": entry.sender,
        }),
        Event::Membership {
            conversation,
            summary,
        } => json!({"t": "membership", "conversation": conversation, "summary": summary}),
        Event::Removed { conversation } => json!({"t": "removed", "conversation": conversation}),
        Event::Refused { reason } => json!({"t": "refused", "reason": reason}),
        _ => json!({"t": "other"}),
    }
}

fn signed_policy(answer: &str) -> Option<Vec<u8>> {
    #[derive(serde::Deserialize)]
    struct P {
        #[serde(with = "sitrep_wire::b64::opt", default)]
        policy: Option<Vec<u8>>,
    }
    serde_json::from_str::<P>(answer).ok()?.policy
}

fn group_fingerprint(f: &str) -> String {
    let hex: Vec<char> = f.chars().filter(|c| !c.is_whitespace()).collect();
    hex.chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(put: &[(u8, &[u8])], delete: &[u8], clear: bool) -> Changes {
        Changes {
            put: put.iter().map(|(i, b)| ([*i; 16], b.to_vec())).collect(),
            delete: delete.iter().map(|i| [*i; 16]).collect(),
            clear,
            erase: false,
        }
    }

    #[test]
    fn the_store_hands_out_each_write_once_in_order() {
        let s = WebStore::default();
        assert!(s.load().expect("load").is_none());
        s.write(&changes(&[(1, b"a"), (2, b"b")], &[], true))
            .expect("w");
        s.write(&changes(&[(3, b"c")], &[1], false)).expect("w");
        s.write(&Changes::default()).expect("nothing");
        assert_eq!(
            s.take(),
            vec![
                Write::Clear,
                Write::Put([1; 16], b"a".to_vec()),
                Write::Put([2; 16], b"b".to_vec()),
                Write::Delete([1; 16]),
                Write::Put([3; 16], b"c".to_vec()),
            ]
        );
        assert!(s.take().is_empty(), "taken once");
        let ids: Vec<_> = s
            .load()
            .expect("load")
            .expect("some")
            .into_iter()
            .map(|(id, _)| id[0])
            .collect();
        assert_eq!(ids, vec![2, 3]);
        s.set_unlock_failures(3, 10).expect("f");
        s.destroy().expect("d");
        assert_eq!(s.take(), vec![Write::Failures(3, 10), Write::Clear]);
        assert!(s.load().expect("load").is_none());
        assert_eq!(s.unlock_failures().expect("f"), (3, 10));
    }

    #[test]
    fn an_unset_limit_is_the_default() {
        let s = WebStore::default();
        assert_eq!(s.unlock_failures().expect("f"), (0, DEFAULT_MAX_FAILURES));
    }

    #[test]
    fn the_pid_guard_cuts_the_message_at_each_finding() {
        let body = "Pt NHS 943 476 5919 in bay 3";
        let warn = pid_json("warn", sitrep_pid::PidPolicy::Warn, body);
        assert_eq!(warn["outcome"], "warn");
        let segs = warn["segments"].as_array().expect("segments");
        let joined: String = segs
            .iter()
            .map(|s| s["text"].as_str().expect("text"))
            .collect();
        assert_eq!(joined, body, "the segments are the whole message");
        assert!(
            segs.iter()
                .any(|s| s["text"] == "943 476 5919" && !s["kind"].is_null()),
            "{segs:?}"
        );
        let block = pid_json("block", sitrep_pid::PidPolicy::Block, body);
        assert_eq!(block["outcome"], "block");
        assert_eq!(block["text"], "", "nothing to send");
        let pseudo = pid_json("pseudonymise", sitrep_pid::PidPolicy::Pseudonymise, body);
        assert_eq!(pseudo["outcome"], "rewrite");
        assert!(!pseudo["text"].as_str().expect("t").contains("5919"));
        let clean = pid_json("warn", sitrep_pid::PidPolicy::Warn, "Bay 3 free");
        assert_eq!(clean["outcome"], "send");
    }
}
