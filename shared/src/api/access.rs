//! Who may call what: each route declares its access next to its path, a
//! guard in front of the handler authenticates the key and checks its
//! role before the handler runs, and the table is what tests walk.

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;

use super::problem::Problem;
use crate::app::{App, AppError, Principal, RateAnswer};
use crate::domain::Role;

/// What a route asks of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No key (health; inbound hooks, which check their own signature).
    Public,
    /// A key with this role or above, not limited to workflows.
    Role(Role),
    /// A key with this role or above, also one limited to workflows (the
    /// handler then hides other workflows' runs as not found).
    RunsOf(Role),
}

/// One route as the router serves it.
#[derive(Clone, Debug)]
pub struct RouteSpec {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
}

/// The router being built, with its table.
pub(super) struct Routes {
    router: Router<Arc<App>>,
    pub(super) specs: Vec<RouteSpec>,
}

impl Routes {
    pub(super) fn new() -> Self {
        Routes {
            router: Router::new(),
            specs: Vec::new(),
        }
    }

    /// Adds `handler` (a method router for `method` alone) at `path`.
    pub(super) fn add(
        mut self,
        method: Method,
        path: &'static str,
        access: Access,
        handler: MethodRouter<Arc<App>>,
    ) -> Self {
        let handler = match audit_action(&method, path) {
            Some(action) if access != Access::Public => {
                handler.route_layer(axum::middleware::from_fn(
                    move |req: Request, next: Next| super::audit::record(action.clone(), req, next),
                ))
            }
            _ => handler,
        };
        // The guard is outside the audit layer: the change is recorded with
        // the caller it found.
        let handler = match access {
            Access::Public => handler,
            _ => handler.route_layer(axum::middleware::from_fn(
                move |req: Request, next: Next| guard(access, req, next),
            )),
        };
        let handler = if method == Method::GET {
            handler
        } else {
            handler.route_layer(axum::middleware::from_fn(to_the_end))
        };
        self.router = self.router.route(path, handler);
        self.specs.push(RouteSpec {
            method,
            path,
            access,
        });
        self
    }

    pub(super) fn finish(self) -> (Router<Arc<App>>, Vec<RouteSpec>) {
        (self.router, self.specs)
    }
}

/// What a change through this route is recorded as in the audit log
/// (`key.created`, `schedule.updated`, `key.rotate`, …): every route that
/// changes something but starting runs and sending events (runs have their
/// own record). None for reads.
pub fn audit_action(method: &Method, path: &str) -> Option<String> {
    const VERBS: [&str; 5] = ["rotate", "rotate-secret", "replay", "cancel", "complete"];
    if *method == Method::GET
        || (*method == Method::POST && (path.ends_with("/runs") || path == "/v1/events"))
    {
        return None;
    }
    let segs: Vec<&str> = path.trim_start_matches("/v1/").split('/').collect();
    let is_param = |s: &str| s.starts_with('{');
    let noun = |s: &str| match s {
        "settings" => "settings".to_owned(),
        "deliveries" => "delivery".to_owned(),
        other => other.trim_end_matches('s').to_owned(),
    };
    let last = *segs.last()?;
    let before = segs.len().checked_sub(2).map(|i| segs[i]);
    Some(match before {
        // `/things/{id}/verb`
        Some(b) if VERBS.contains(&last) && is_param(b) && segs.len() >= 3 => {
            format!("{}.{last}", noun(segs[segs.len() - 3]))
        }
        // `/things/{id}`
        Some(b) if is_param(last) => {
            let verb = if *method == Method::DELETE {
                "deleted"
            } else {
                "updated"
            };
            format!("{}.{verb}", noun(b))
        }
        // `/things`
        _ => {
            let verb = if *method == Method::POST {
                "created"
            } else {
                "updated"
            };
            format!("{}.{verb}", noun(last))
        }
    })
}

/// A change runs to the end in a task of its own, with what follows it
/// (its audit entry, closing a cancelled run's steps, waking a run): a
/// client that hangs up half way drops only its answer.
async fn to_the_end(req: Request, next: Next) -> Response {
    match tokio::spawn(next.run(req)).await {
        Ok(res) => res,
        Err(_) => {
            Problem::from(AppError::Internal("a request's handler failed".into())).into_response()
        }
    }
}

/// The caller's key, from `Authorization: Bearer <key>`.
/// (The scheme's name is case-insensitive, RFC 9110.)
fn bearer(req: &Request) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
}

/// Authenticates the caller and checks it may use the route: 401 without
/// a valid key, 403 for a role below the route's or a key limited to
/// workflows on a route not about runs. The principal goes to the handler.
async fn guard(access: Access, mut req: Request, next: Next) -> Response {
    // The application rides on every request (`api::router`).
    let Some(app) = req.extensions().get::<Arc<App>>().cloned() else {
        return Problem::from(AppError::Internal("the router has no application".into()))
            .into_response();
    };
    let who = match bearer(&req) {
        Some(key) => match app.authenticate(key).await {
            Ok(p) => p,
            Err(e) => return Problem::from(e).into_response(),
        },
        None => return Problem::from(AppError::Unauthorized).into_response(),
    };
    if let Err(e) = allowed(access, &who) {
        return Problem::from(e).into_response();
    }
    let rate = app.take_request(&who).await;
    let mut res = match &rate {
        Some(RateAnswer {
            retry_after: Some(secs),
            ..
        }) => {
            let mut res = Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
                format!("this key or its workspace made more requests than its rate allows; try again in {secs} s"),
            )
            .into_response();
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*secs));
            res
        }
        _ => {
            req.extensions_mut().insert(who);
            next.run(req).await
        }
    };
    if let Some(r) = rate {
        for (name, value) in [("ratelimit-policy", r.policy), ("ratelimit", r.current)] {
            if let Ok(v) = HeaderValue::from_str(&value) {
                res.headers_mut().insert(name, v);
            }
        }
    }
    res
}

/// Whether `who` may use a route with `access`.
pub fn allowed(access: Access, who: &Principal) -> Result<(), AppError> {
    let need = match access {
        Access::Public => return Ok(()),
        Access::Role(r) => {
            if who.workflows.is_some() {
                return Err(AppError::Forbidden(
                    "this key is limited to starting and reading runs of its workflows".into(),
                ));
            }
            r
        }
        Access::RunsOf(r) => r,
    };
    if who.role < need {
        return Err(AppError::Forbidden(format!(
            "this needs the {} role or above; the key has the {} role",
            need.as_str(),
            who.role.as_str()
        )));
    }
    Ok(())
}
