//! Extractors for the guards every page repeats: whose session this is, and whether a form
//! carries the session's CSRF token. A handler that takes [`OwnerForm`] runs only for the
//! owner's session with a valid token; the rest get the login page or a 403.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Form;
use serde::de::DeserializeOwned;

use super::page::redirect;
use crate::owner::session::{self, Session};

/// A form that carries the CSRF token of the session it was served in.
pub(super) trait CsrfForm: DeserializeOwned + Send {
    fn csrf(&self) -> &str;
}

/// Implements [`CsrfForm`] for form structs with a `csrf` field.
macro_rules! csrf_forms {
    ($($form:ty),* $(,)?) => {
        $(impl $crate::web::extract::CsrfForm for $form {
            fn csrf(&self) -> &str {
                &self.csrf
            }
        })*
    };
}
pub(super) use csrf_forms;

/// The visitor's session, which `with_session` gives every request.
pub(super) struct Visitor(pub Session);

/// The owner's session; anyone else is sent to the login page.
pub(super) struct Owner(pub Session);

/// A form posted with its session's CSRF token, by anyone (the claim, the login).
pub(super) struct Posted<T>(pub Session, pub T);

/// A form posted by the owner with its session's CSRF token.
pub(super) struct OwnerForm<T>(pub Session, pub T);

fn session(parts: &Parts) -> Result<Session, Response> {
    parts.extensions.get::<Session>().cloned().ok_or_else(|| (StatusCode::INTERNAL_SERVER_ERROR, "no session: the session layer is missing").into_response())
}

pub(super) fn check_csrf(session: &Session, token: &str) -> Result<(), Response> {
    if session::same(&session.csrf, token) {
        Ok(())
    } else {
        Err((StatusCode::FORBIDDEN, "the form is out of date or was sent from elsewhere (CSRF token missing or wrong): reload the page and try again").into_response())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Visitor {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Response> {
        session(parts).map(Visitor)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Owner {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Response> {
        let session = session(parts)?;
        if session.owner {
            Ok(Owner(session))
        } else {
            Err(redirect("/login"))
        }
    }
}

/// Reads the session from the request's parts, then the form from its body.
async fn posted<T: CsrfForm, S: Send + Sync>(request: Request, state: &S, owner_only: bool) -> Result<(Session, T), Response> {
    let (mut parts, body) = request.into_parts();
    let session = match owner_only {
        true => Owner::from_request_parts(&mut parts, state).await?.0,
        false => session(&parts)?,
    };
    let Form(form) = Form::<T>::from_request(Request::from_parts(parts, body), state).await.map_err(IntoResponse::into_response)?;
    check_csrf(&session, form.csrf())?;
    Ok((session, form))
}

impl<T: CsrfForm, S: Send + Sync> FromRequest<S> for Posted<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Response> {
        posted(request, state, false).await.map(|(session, form)| Posted(session, form))
    }
}

impl<T: CsrfForm, S: Send + Sync> FromRequest<S> for OwnerForm<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Response> {
        posted(request, state, true).await.map(|(session, form)| OwnerForm(session, form))
    }
}
