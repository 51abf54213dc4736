//! # GET /v1/openapi.json
//! The OpenAPI 3.1 description of the whole HTTP API, generated from the
//! handlers' own `#[utoipa::path]` attributes and the body types' derives:
//! each module lists its routes next to its router (`http::Doc`,
//! `admin::Doc`, `scim::Doc`), and this one merges them.

use std::sync::OnceLock;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use utoipa::Modify;
use utoipa::OpenApi as _;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};

struct Schemes;

impl Modify for Schemes {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let c = api.components.get_or_insert_with(Default::default);
        let bearer = |desc: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(desc))
                    .build(),
            )
        };
        c.add_security_scheme("bearer", bearer("a device's token from /v1/enrol"));
        c.add_security_scheme(
            "admin",
            bearer(
                "an admin's device token (its user holds an admin grant); with the grant's TOTP code in X-Sitrep-Totp when the policy asks for two-step verification",
            ),
        );
        c.add_security_scheme(
            "totp",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-sitrep-totp"))),
        );
        c.add_security_scheme("scim", bearer("the token from `sitrep admin scim-token`"));
        c.add_security_scheme(
            "metrics",
            bearer("the scrape token of [metrics] token_file (loopback needs none)"),
        );
    }
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Sitrep",
        description = "The Sitrep server: an MLS (RFC 9420) delivery and authentication service for hospital staff. It stores and forwards ciphertext it cannot read. Every error outside /scim is JSON `{error, message}`; see docs/protocol.md for what the bodies mean.",
        license(name = "see the repository"),
    ),
    modifiers(&Schemes),
    tags(
        (name = "health"), (name = "enrolment"), (name = "keypackages"), (name = "groups"),
        (name = "messages"), (name = "devices"), (name = "directory"), (name = "records"), (name = "push"),
        (name = "admin"), (name = "scim"), (name = "operations"),
    )
)]
struct Base;

/// The whole description.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = Base::openapi();
    doc.merge(crate::http::Doc::openapi());
    doc.merge(crate::admin::Doc::openapi());
    doc.merge(crate::scim::Doc::openapi());
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}

pub(crate) async fn serve() -> Response {
    static JSON: OnceLock<String> = OnceLock::new();
    let body = JSON.get_or_init(|| document().to_json().unwrap_or_else(|_| "{}".into()));
    let mut r = body.clone().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
