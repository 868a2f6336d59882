//! API errors, rendered in OpenAI's error shape (`{"error": {"message", "type", "code"}}`) on
//! `/v1` and in Ollama's (`{"error": "…"}`) on `/api`.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::engine::EngineError;
use hellas_model::plan as planner;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    /// Extra fields merged into the error object (the planner's numbers, the model list).
    pub details: Option<Value>,
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, kind, message: message.into(), details: None, retry_after: None }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    pub fn with_details(mut self, details: Value) -> ApiError {
        self.details = Some(details);
        self
    }

    pub fn with_retry_after(mut self, after: Duration) -> ApiError {
        self.retry_after = Some(after);
        self
    }

    fn finish(&self, body: Value) -> Response {
        let mut response = (self.status, Json(body)).into_response();
        if let Some(after) = self.retry_after {
            let secs = after.as_secs().max(1).to_string();
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_str(&secs).unwrap());
        }
        response
    }

    pub fn into_openai(self) -> Response {
        let mut error = json!({ "message": self.message, "type": self.kind, "code": self.status.as_u16() });
        if let (Some(Value::Object(extra)), Some(obj)) = (&self.details, error.as_object_mut()) {
            obj.extend(extra.clone());
        }
        self.finish(json!({ "error": error }))
    }

    pub fn into_ollama(self) -> Response {
        self.finish(json!({ "error": self.message }))
    }

    /// Anthropic's shape, with its error types by status, for `/v1/messages`.
    pub fn into_anthropic(self) -> Response {
        let kind = match self.status.as_u16() {
            400 | 422 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            503 | 529 => "overloaded_error",
            _ => "api_error",
        };
        let mut error = json!({ "type": kind, "message": self.message });
        if let (Some(Value::Object(extra)), Some(obj)) = (&self.details, error.as_object_mut()) {
            obj.extend(extra.clone());
        }
        self.finish(json!({ "type": "error", "error": error }))
    }

    /// In the shape the clients of `path` read: Ollama's under `/api/`, Anthropic's under
    /// `/v1/messages`, OpenAI's elsewhere.
    pub fn for_path(self, path: &str) -> Response {
        if path.starts_with("/api/") {
            self.into_ollama()
        } else if path.starts_with("/v1/messages") {
            self.into_anthropic()
        } else {
            self.into_openai()
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.into_openai()
    }
}

impl From<EngineError> for ApiError {
    fn from(error: EngineError) -> ApiError {
        let message = error.to_string();
        match error {
            EngineError::UnknownModel { available, .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "model_not_found", message).with_details(json!({ "available": available }))
            }
            EngineError::TooLarge { plan } => ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "insufficient_memory", message)
                .with_details(json!({ "plan": *plan, "summary": planner::format_bytes(plan.total) })),
            EngineError::Busy { retry_after, .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", message).with_retry_after(retry_after)
            }
            EngineError::Failed { .. } => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "engine_unavailable", message)
                .with_retry_after(Duration::from_secs(1)),
            EngineError::Degraded { .. } => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "model_degraded", message)
                .with_retry_after(Duration::from_secs(5)),
            EngineError::Internal(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message),
        }
    }
}

/// Ollama routes return this so that every error leaves in Ollama's shape.
pub struct OllamaError(pub ApiError);

impl<E: Into<ApiError>> From<E> for OllamaError {
    fn from(error: E) -> OllamaError {
        OllamaError(error.into())
    }
}

impl IntoResponse for OllamaError {
    fn into_response(self) -> Response {
        self.0.into_ollama()
    }
}
