//! SCIM 2.0 provisioning (`/scim/v2/Users`) against the real server, sent
//! the way Entra ID sends it (strings for booleans, attributes Sitrep does
//! not keep, `Replace` in capitals), and the way an attacker would (no
//! token, a device's token, an old token, junk bodies). Deactivating a user
//! who is mid-conversation revokes her device there and then.

mod common;

use common::*;
use serde_json::{Value, json};
use sitrep_core::DEFAULT_CIPHERSUITE;

const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const PATCH: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const ERROR: &str = "urn:ietf:params:scim:api:messages:2.0:Error";

struct Scim {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Scim {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_as(Some(&self.token), method, path, body.map(|b| b.to_string()))
            .await
    }

    async fn call_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut r = self.http.request(m, format!("{}{path}", self.base));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.header("content-type", "application/scim+json").body(b);
        }
        let resp = r.send().await.expect("request");
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().expect("ascii").to_string());
        let text = resp.text().await.expect("body");
        if text.is_empty() {
            return (status, Value::Null);
        }
        if path.starts_with("/scim/") {
            assert_eq!(ct.as_deref(), Some("application/scim+json"), "{text}");
        }
        (status, serde_json::from_str(&text).expect("JSON"))
    }
}

fn assert_error(v: &Value, status: u16, scim_type: Option<&str>) {
    assert_eq!(v["schemas"], json!([ERROR]), "{v}");
    assert_eq!(v["status"], json!(status.to_string()), "{v}");
    if let Some(t) = scim_type {
        assert_eq!(v["scimType"], json!(t), "{v}");
    }
}

/// What Entra ID posts for a new user (its default attribute mapping, with
/// `mailNickname` mapped to `userName`).
fn entra_user(user: &str, name: &str) -> Value {
    json!({
        "schemas": [USER, "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"],
        "externalId": format!("{user}-object-id"),
        "userName": user,
        "active": true,
        "displayName": name,
        "title": "ED consultant",
        "emails": [{"primary": true, "type": "work", "value": format!("{user}@trust.example.nhs.uk")}],
        "name": {"formatted": name, "familyName": "X", "givenName": "Y"},
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "ED"},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scim_provisions_and_deprovisions_staff() {
    // Loopback is the trusted proxy here, so X-Forwarded-For names the
    // client and each named address has its own bucket.
    let server = TestServer::start_with(|c| {
        c.trusted_proxies = vec!["127.0.0.1".parse().expect("ip")];
    })
    .await;
    let dir = server.dir.path().to_path_buf();
    let token = sitrep_server::scim::new_token(&dir, "admin:test").expect("token");
    let scim = Scim {
        base: server.url.clone(),
        token,
        http: reqwest::Client::new(),
    };

    // No token, a junk token, a device's token: 401, in SCIM's error form.
    let (_bdir, bob) = device(&server.url, &server.invite("bob"), DEFAULT_CIPHERSUITE).await;
    for t in [None, Some("nope"), Some(bob.client.token())] {
        let (s, v) = scim.call_as(t, "GET", "/scim/v2/Users", None).await;
        assert_eq!(s, 401, "{t:?}");
        assert_error(&v, 401, None);
    }

    // Create, as Entra does.
    let (s, alice) = scim
        .call(
            "POST",
            "/scim/v2/Users",
            Some(entra_user("alice", "Dr Alice Adams")),
        )
        .await;
    assert_eq!(s, 201, "{alice}");
    let id = alice["id"].as_str().expect("id").to_string();
    assert_eq!(id.len(), 32);
    assert_eq!(alice["userName"], "alice");
    assert_eq!(alice["displayName"], "Dr Alice Adams");
    assert_eq!(alice["title"], "ED consultant");
    assert_eq!(alice["active"], true);
    assert_eq!(alice["externalId"], "alice-object-id");
    assert_eq!(alice["meta"]["resourceType"], "User");
    assert_eq!(alice["meta"]["location"], format!("/scim/v2/Users/{id}"));
    // The same userName again.
    let (s, v) = scim
        .call(
            "POST",
            "/scim/v2/Users",
            Some(entra_user("alice", "Someone Else")),
        )
        .await;
    assert_eq!(s, 409);
    assert_error(&v, 409, Some("uniqueness"));
    // A UPN is not a Sitrep user id; neither is nothing.
    for bad in [
        json!({"userName": "alice@trust.nhs.uk"}),
        json!({"displayName": "x"}),
    ] {
        let (s, v) = scim.call("POST", "/scim/v2/Users", Some(bad)).await;
        assert_eq!(s, 400);
        assert_error(&v, 400, Some("invalidValue"));
    }

    // Find by filter, as Entra does before creating; read by id.
    let (s, l) = scim
        .call(
            "GET",
            "/scim/v2/Users?filter=userName%20eq%20%22alice%22",
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(l["totalResults"], 1);
    assert_eq!(l["Resources"][0]["id"], json!(id));
    let (_, l) = scim
        .call(
            "GET",
            "/scim/v2/Users?filter=userName%20eq%20%22nobody%22",
            None,
        )
        .await;
    assert_eq!(l["totalResults"], 0);
    let (_, l) = scim
        .call(
            "GET",
            "/scim/v2/Users?filter=externalId%20eq%20%22alice-object-id%22",
            None,
        )
        .await;
    assert_eq!(l["totalResults"], 1);
    let (s, v) = scim
        .call("GET", "/scim/v2/Users?filter=emails%20co%20%22x%22", None)
        .await;
    assert_eq!(s, 400);
    assert_error(&v, 400, Some("invalidFilter"));
    let (s, v) = scim
        .call("GET", &format!("/scim/v2/Users/{id}"), None)
        .await;
    assert_eq!((s, v["userName"].clone()), (200, json!("alice")));
    for missing in ["0123456789abcdef0123456789abcdef", "..%2F..%2Fetc", "x"] {
        let (s, _) = scim
            .call("GET", &format!("/scim/v2/Users/{missing}"), None)
            .await;
        assert_eq!(s, 404, "{missing}");
    }
    // Junk: not JSON, too big, a PatchOp with nothing in it, an unknown op.
    let (s, v) = scim
        .call_as(
            Some(&scim.token),
            "POST",
            "/scim/v2/Users",
            Some("{not json".into()),
        )
        .await;
    assert_eq!(s, 400);
    assert_error(&v, 400, Some("invalidSyntax"));
    let big = json!({"userName": "big", "displayName": "x".repeat(100_000)}).to_string();
    let (s, _) = scim
        .call_as(Some(&scim.token), "POST", "/scim/v2/Users", Some(big))
        .await;
    assert_eq!(s, 413);
    let path = format!("/scim/v2/Users/{id}");
    let (s, _) = scim
        .call(
            "PATCH",
            &path,
            Some(json!({"schemas": [PATCH], "Operations": []})),
        )
        .await;
    assert_eq!(s, 400);
    let (s, _) = scim
        .call(
            "PATCH",
            &path,
            Some(json!({"schemas": [PATCH], "Operations": [{"op": "move", "path": "title"}]})),
        )
        .await;
    assert_eq!(s, 400);
    // userName is the Sitrep id: it does not change.
    let (s, v) = scim
        .call(
            "PATCH",
            &path,
            Some(json!({"schemas": [PATCH], "Operations": [{"op": "Replace", "path": "userName", "value": "mallory"}]})),
        )
        .await;
    assert_eq!(s, 400);
    assert_error(&v, 400, Some("mutability"));

    // Alice enrols (her code from an admin) and is in a conversation with Bob.
    let code = sitrep_server::create_invite(&dir, "alice", "Dr Alice Adams", "ED consultant", 3600)
        .expect("invite");
    let (_adir, mut alice_dev) = device(&server.url, &code, DEFAULT_CIPHERSUITE).await;
    let open_code = sitrep_server::create_invite(&dir, "alice", "Dr Alice Adams", "ED", 3600)
        .expect("a second code, not used");
    let mut bob = bob;
    sitrep_cli::chat_create(&mut alice_dev, "majax-scim", &["bob".into()], "warn")
        .await
        .expect("create");
    sitrep_cli::sync(&mut bob).await.expect("bob joins");
    sitrep_cli::send(&mut alice_dev, "majax-scim", "before")
        .await
        .expect("send");

    // Entra deactivates her: "False" as a string, "Replace" in capitals.
    let (s, v) = scim
        .call(
            "PATCH",
            &path,
            Some(json!({"schemas": [PATCH], "Operations": [
                {"op": "Replace", "path": "active", "value": "False"},
                {"op": "Add", "path": "emails[type eq \"work\"].value", "value": "a@b.c"},
            ]})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["active"], false);
    // Her device is revoked at once, her open code cancelled, and no new
    // code can be made for her.
    let err = sitrep_cli::sync(&mut alice_dev).await.expect_err("revoked");
    assert!(sitrep_cli::is_wiped(&err), "{err:#}");
    let devices = sitrep_server::list_devices(&dir, Some("alice")).expect("devices");
    assert!(devices.iter().all(|d| d.revoked_at.is_some()));
    let r = sitrep_cli::enrol(
        TempDir::new("late").path(),
        &server.url,
        &open_code,
        PASSCODE,
        DEFAULT_CIPHERSUITE,
    )
    .await;
    assert!(r.is_err(), "a cancelled code still enrolled");
    let e = sitrep_server::create_invite(&dir, "alice", "A", "ED", 3600).expect_err("refused");
    assert!(e.to_string().contains("deactivated"), "{e}");
    // Bob's next sync removes her device from the conversation.
    sitrep_cli::sync(&mut bob).await.expect("bob syncs");
    sitrep_cli::send(&mut bob, "majax-scim", "after she left")
        .await
        .expect("bob sends");
    let audit = sitrep_server::audit_entries(&dir).expect("audit");
    assert!(
        audit
            .iter()
            .any(|e| e.actor == "scim" && e.action == "scim.deactivate"),
        "{audit:?}"
    );
    assert!(
        audit
            .iter()
            .any(|e| e.actor == "scim" && e.action == "user.disable")
    );

    // Reactivated (an object without a path, as Okta sends): a new code works.
    let (s, v) = scim
        .call(
            "PATCH",
            &path,
            Some(json!({"schemas": [PATCH], "Operations": [{"op": "replace", "value": {"active": true, "title": "Registrar"}}]})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["active"].clone(), v["title"].clone()),
        (json!(true), json!("Registrar"))
    );
    sitrep_server::create_invite(&dir, "alice", "A", "Registrar", 3600).expect("invite again");

    // PUT replaces the whole resource.
    let mut put = entra_user("alice", "Dr A Adams");
    put["title"] = json!("Consultant");
    let (s, v) = scim.call("PUT", &path, Some(put)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["displayName"], "Dr A Adams");

    // DELETE: disabled, then gone from SCIM.
    let (s, _) = scim.call("DELETE", &path, None).await;
    assert_eq!(s, 204);
    let (s, v) = scim.call("GET", &path, None).await;
    assert_eq!(s, 404);
    assert_error(&v, 404, None);
    let (s, _) = scim.call("DELETE", &path, None).await;
    assert_eq!(s, 404);
    // Deleted is still deactivated: no code until SCIM creates her again.
    let e = sitrep_server::create_invite(&dir, "alice", "A", "ED", 3600).expect_err("refused");
    assert!(e.to_string().contains("deactivated"), "{e}");
    let (s, _) = scim
        .call(
            "POST",
            "/scim/v2/Users",
            Some(entra_user("alice", "Dr Alice Adams")),
        )
        .await;
    assert_eq!(s, 201);
    sitrep_server::create_invite(&dir, "alice", "A", "ED", 3600).expect("invite after re-create");
    // A path naming the core schema deactivates too.
    let (_, l) = scim
        .call(
            "GET",
            "/scim/v2/Users?filter=userName%20eq%20%22alice%22",
            None,
        )
        .await;
    let again = format!(
        "/scim/v2/Users/{}",
        l["Resources"][0]["id"].as_str().expect("id")
    );
    let (s, v) = scim
        .call(
            "PATCH",
            &again,
            Some(json!({"schemas": [PATCH], "Operations": [
                {"op": "replace", "path": "urn:ietf:params:scim:schemas:core:2.0:User:active", "value": false}
            ]})),
        )
        .await;
    assert_eq!((s, v["active"].clone()), (200, json!(false)), "{v}");

    // Someone floods bad tokens from one address: that address is refused,
    // the identity system's own address is not.
    let mut limited = false;
    for _ in 0..400 {
        let r = scim
            .http
            .get(format!("{}/scim/v2/Users", scim.base))
            .header("x-forwarded-for", "203.0.113.66")
            .bearer_auth("guess")
            .send()
            .await
            .expect("flood");
        if r.status() == 429 {
            limited = true;
            break;
        }
    }
    assert!(limited, "the flooding address was never limited");
    let r = scim
        .http
        .get(format!("{}/scim/v2/ServiceProviderConfig", scim.base))
        .header("x-forwarded-for", "198.51.100.7")
        .bearer_auth(&scim.token)
        .send()
        .await
        .expect("entra");
    assert_eq!(r.status(), 200);

    // A new token: the old one stops working.
    let old = scim.token.clone();
    let new = sitrep_server::scim::new_token(&dir, "admin:test").expect("rotate");
    let (s, _) = scim
        .call_as(Some(&old), "GET", "/scim/v2/Users", None)
        .await;
    assert_eq!(s, 401);
    let (s, v) = scim
        .call_as(Some(&new), "GET", "/scim/v2/ServiceProviderConfig", None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["patch"]["supported"], true);
    server.stop().await;
}
