//! Errors in OpenAI's JSON shape: `{"error": {"message", "type", "param", "code"}}`, with the
//! HTTP status that goes with each.

use crate::generation::GenError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::time::Duration;

/// An error response of the API.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type` (`invalid_request_error`, `server_error`, …).
    pub kind: &'static str,
    /// The request field at fault, when one is.
    pub param: Option<&'static str>,
    /// A machine-readable code (`context_length_exceeded`, `model_not_found`, …).
    pub code: Option<&'static str>,
    /// Seconds for a `Retry-After` header (429 only).
    pub retry_after_s: Option<u64>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after_s: None,
        }
    }

    /// 400: a malformed request or a bad field value.
    pub fn invalid(message: impl Into<String>, param: Option<&'static str>) -> ApiError {
        ApiError {
            param,
            ..ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        }
    }

    /// 400: the prompt plus `max_tokens` do not fit the model's context.
    pub fn context_length(message: impl Into<String>) -> ApiError {
        ApiError {
            code: Some("context_length_exceeded"),
            ..ApiError::invalid(message, None)
        }
    }

    /// 401: a missing or wrong API key.
    pub fn unauthorized() -> ApiError {
        ApiError {
            code: Some("invalid_api_key"),
            ..ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "Incorrect or missing API key; send `Authorization: Bearer <key>`.",
            )
        }
    }

    /// 404: no such model.
    pub fn model_not_found(model: &str) -> ApiError {
        ApiError {
            param: Some("model"),
            code: Some("model_not_found"),
            ..ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("The model `{model}` does not exist."),
            )
        }
    }

    /// 404: no such path; 405: no such method on a path.
    pub fn no_route(status: StatusCode) -> ApiError {
        ApiError {
            code: Some("unknown_url"),
            ..ApiError::new(
                status,
                "invalid_request_error",
                "Unknown request URL or method.",
            )
        }
    }

    /// 413: the body or the prompt is over its limit.
    pub fn too_large(message: impl Into<String>, param: Option<&'static str>) -> ApiError {
        ApiError {
            param,
            code: Some("request_too_large"),
            ..ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                message,
            )
        }
    }

    /// 500: the generation failed.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// The JSON body, also sent as an SSE event when a stream fails.
    pub fn to_json(&self) -> String {
        let envelope = Envelope {
            error: Body {
                message: &self.message,
                kind: self.kind,
                param: self.param,
                code: self.code,
            },
        };
        // Serializing plain strings and options cannot fail.
        serde_json::to_string(&envelope).unwrap_or_default()
    }
}

impl From<GenError> for ApiError {
    fn from(err: GenError) -> ApiError {
        let message = err.to_string();
        match err {
            GenError::UnknownModel { model } => ApiError::model_not_found(&model),
            GenError::ContextTooLong { .. } => ApiError::context_length(message),
            GenError::Overloaded { retry_after, .. } => ApiError {
                code: Some("rate_limit_exceeded"),
                retry_after_s: Some(retry_after_secs(retry_after)),
                ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message)
            },
            GenError::Unavailable { .. } => ApiError {
                code: Some("service_unavailable"),
                ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
            },
        }
    }
}

/// Whole seconds, rounded up, at least 1.
fn retry_after_secs(after: Duration) -> u64 {
    let whole = after.as_secs() + u64::from(after.subsec_nanos() > 0);
    whole.max(1)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.to_json(),
        )
            .into_response();
        if let Some(secs) = self.retry_after_s {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gen_errors_map_to_statuses() {
        let overloaded = ApiError::from(GenError::Overloaded {
            slo: "interactive".into(),
            ttft_ms: 500.0,
            predicted_ms: 900.0,
            retry_after: Duration::from_millis(1500),
        });
        assert_eq!(overloaded.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(overloaded.retry_after_s, Some(2));
        let statuses = [
            (GenError::UnknownModel { model: "m".into() }, 404),
            (GenError::Unavailable { model: "m".into() }, 503),
            (
                GenError::ContextTooLong {
                    prompt: 10,
                    max_tokens: 10,
                    limit: 16,
                },
                400,
            ),
        ];
        for (err, status) in statuses {
            assert_eq!(ApiError::from(err).status.as_u16(), status);
        }
    }

    #[test]
    fn the_body_has_openai_shape() {
        let json: serde_json::Value =
            serde_json::from_str(&ApiError::model_not_found("x").to_json()).unwrap();
        assert_eq!(json["error"]["type"], "invalid_request_error");
        assert_eq!(json["error"]["param"], "model");
        assert_eq!(json["error"]["code"], "model_not_found");
        assert!(json["error"]["message"].as_str().unwrap().contains("`x`"));
    }
}
