//! One error type for every handler, mapped to JSON in one `IntoResponse`.
//! Client mistakes are not logged as errors; internals never reach the client.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sitrep_wire::api::ApiError;

/// An API error: status, stable code, human message.
#[derive(Debug)]
pub struct ApiErr {
    status: StatusCode,
    body: ApiError,
}

impl ApiErr {
    fn new(status: StatusCode, code: &str, message: &str) -> Self {
        Self {
            status,
            body: ApiError {
                error: code.into(),
                message: message.into(),
                current_epoch: None,
            },
        }
    }
    /// 400.
    pub fn bad_request(code: &str, message: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    /// 401.
    pub fn unauthorised() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorised",
            "missing, unknown or revoked device token",
        )
    }
    /// 401 for a revoked device: the body tells it to destroy its local data.
    pub fn device_wiped() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "device_wiped",
            "this device was revoked by the organisation: destroy local keys and history",
        )
    }
    /// 403.
    pub fn forbidden(code: &str, message: &str) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }
    /// 404.
    pub fn not_found(code: &str, message: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }
    /// 409 for anything but epochs.
    pub fn conflict(code: &str, message: &str) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }
    /// 409 with the group's current epoch.
    pub fn epoch_conflict(current: u64) -> Self {
        let mut e = Self::new(
            StatusCode::CONFLICT,
            "epoch_conflict",
            "another commit won this epoch; process it and retry",
        );
        e.body.current_epoch = Some(current);
        e
    }
    /// 413.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            &format!("request body larger than {limit} bytes"),
        )
    }
    /// 413 for a body over the server's limit.
    pub fn body_too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "request body larger than the server accepts",
        )
    }
    /// 408 for a body that did not arrive in time.
    pub fn body_timeout() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            "the request body did not arrive in time",
        )
    }
    /// 429.
    pub fn rate_limited() -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests; slow down",
        )
    }
    /// 429 with its own code.
    pub fn too_many(code: &str, message: &str) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, code, message)
    }
    /// 503: not ready to serve (the store is not answering).
    pub fn unavailable(code: &str, message: &str) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }
    /// 500, with nothing internal in it.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server could not complete the request",
        )
    }
}

impl IntoResponse for ApiErr {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body)).into_response();
        // Refused before its body was read: the rest of that body is still on
        // the connection, so the client must not reuse it for the next request.
        if matches!(
            self.status,
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT
        ) {
            r.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        r
    }
}
