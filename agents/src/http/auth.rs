//! Who may use the HTTP server. Scripts and `manta job` send the cluster token
//! (`Authorization: Bearer <token>`); a browser logs in once at `/login` with
//! the token and then carries a session cookie (`HttpOnly`, `SameSite=Strict`,
//! random, kept only in this process; the token never appears in a URL or a
//! cookie). Without either, a page redirects to the login form and an API call
//! is answered 401.
//!
//! A cookie-authenticated request that changes something (any method but GET
//! and HEAD) must also carry `X-Manta-Dashboard: 1`, a header no other site's
//! form or plain link can add: SameSite already keeps the cookie off cross-site
//! requests, and this is the second fence.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, header};
use actix_web::middleware::Next;
use actix_web::{HttpRequest, HttpResponse, web};
use maud::{DOCTYPE, html};
use serde::Deserialize;

use super::AppState;

/// The session cookie's name.
pub const COOKIE: &str = "manta_session";
/// The header a cookie-authenticated change must carry.
pub const CHANGE_HEADER: &str = "x-manta-dashboard";
/// How long a login lasts.
const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at once; the oldest goes first past this.
const MAX_SESSIONS: usize = 1000;

/// Browser sessions: the blake3 hash of each session secret, with its expiry.
#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<blake3::Hash, Instant>>,
}

impl Sessions {
    /// Opens a session; returns the secret for the cookie.
    pub fn open(&self) -> String {
        let mut secret = [0u8; 32];
        rand::fill(&mut secret);
        let secret: String = secret.iter().map(|byte| format!("{byte:02x}")).collect();
        let now = Instant::now();
        let mut live = self.live.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        live.retain(|_, expiry| *expiry > now);
        while live.len() >= MAX_SESSIONS {
            let Some(oldest) = live.iter().min_by_key(|(_, expiry)| **expiry).map(|(key, _)| *key) else { break };
            live.remove(&oldest);
        }
        live.insert(blake3::hash(secret.as_bytes()), now + SESSION_LIFETIME);
        secret
    }

    /// True for a live session's secret.
    pub fn valid(&self, secret: &str) -> bool {
        let live = self.live.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        live.get(&blake3::hash(secret.as_bytes())).is_some_and(|expiry| *expiry > Instant::now())
    }

    /// Ends a session.
    pub fn close(&self, secret: &str) {
        self.live.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&blake3::hash(secret.as_bytes()));
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        (key == name).then_some(value)
    })
}

fn session_of(request: &HttpRequest) -> Option<String> {
    let header = request.headers().get(header::COOKIE)?.to_str().ok()?;
    cookie(header, COOKIE).map(str::to_string)
}

/// How a request proved itself.
enum Proof {
    Token,
    Session,
    WrongToken,
    Nothing,
}

fn proof(request: &HttpRequest, state: &AppState) -> Proof {
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    match bearer {
        Some(token) if blake3::hash(token.as_bytes()) == state.token_hash => Proof::Token,
        Some(_) => Proof::WrongToken,
        None if session_of(request).is_some_and(|secret| state.sessions.valid(&secret)) => Proof::Session,
        None => Proof::Nothing,
    }
}

/// True for paths that are pages (redirected to the login form) rather than API calls.
fn is_page(path: &str) -> bool {
    !path.starts_with("/api/")
}

/// Lets a request through with the cluster token or a live session.
pub async fn authorize(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    let Some(state) = request.app_data::<web::Data<AppState>>().cloned() else {
        return Ok(request.into_response(HttpResponse::InternalServerError().finish()));
    };
    let path = request.path().to_string();
    let refusal = match proof(request.request(), &state) {
        Proof::Token => None,
        Proof::Session if matches!(*request.method(), Method::GET | Method::HEAD) => None,
        Proof::Session if request.headers().contains_key(CHANGE_HEADER) => None,
        Proof::Session => Some(HttpResponse::Forbidden().body(format!(
            "a dashboard session may change things only from the dashboard's own pages (header {CHANGE_HEADER}); scripts send the cluster token"
        ))),
        Proof::WrongToken => Some(HttpResponse::Forbidden().body("the token presented is not this cluster's token")),
        Proof::Nothing if is_page(&path) => {
            let next = request.uri().path_and_query().map(|value| value.as_str()).unwrap_or("/").to_string();
            let location = format!("/login?next={}", percent(&next));
            Some(HttpResponse::SeeOther().insert_header((header::LOCATION, location)).finish())
        }
        Proof::Nothing => Some(HttpResponse::Unauthorized().insert_header(("WWW-Authenticate", "Bearer")).body(
            "this route needs the cluster token: send `Authorization: Bearer <token>` (the token is in <temp-dir>/token on the head), or log in at /login",
        )),
    };
    match refusal {
        Some(response) => Ok(request.into_response(response)),
        None => Ok(next.call(request).await?.map_into_boxed_body()),
    }
}

/// Percent-encodes everything but unreserved characters and `/`.
fn percent(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (byte as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// Where to go after logging in: a local path only, never another site.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(path) if path.starts_with('/') && !path.starts_with("//") && !path.contains('\\') => path.to_string(),
        _ => "/".to_string(),
    }
}

/// `?next=` of the login form.
#[derive(Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

/// The login form's fields.
#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
    next: Option<String>,
}

pub(super) fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/login", web::get().to(login_page))
        .route("/login", web::post().to(login))
        .route("/logout", web::post().to(logout));
}

fn login_html(next: &str, error: Option<&str>) -> HttpResponse {
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Log in · manta" }
                link rel="stylesheet" href="/static/app.css";
            }
            body.login {
                main.login-box {
                    h1 { "manta" }
                    p { "Paste the cluster token to open the dashboard. It is in " code { "<temp-dir>/token" } " on the head (by default " code { "/tmp/manta/token" } ")." }
                    @if let Some(error) = error { p.error role="alert" { (error) } }
                    form method="post" action="/login" {
                        input type="hidden" name="next" value=(next);
                        label for="token" { "Cluster token" }
                        input #token type="password" name="token" autocomplete="current-password" required autofocus;
                        button type="submit" { "Log in" }
                    }
                }
            }
        }
    };
    let status = if error.is_some() { actix_web::http::StatusCode::FORBIDDEN } else { actix_web::http::StatusCode::OK };
    HttpResponse::build(status).content_type("text/html; charset=utf-8").body(page.into_string())
}

async fn login_page(query: web::Query<LoginQuery>) -> HttpResponse {
    login_html(&safe_next(query.next.as_deref()), None)
}

async fn login(state: web::Data<AppState>, form: web::Form<LoginForm>) -> HttpResponse {
    let next = safe_next(form.next.as_deref());
    if blake3::hash(form.token.trim().as_bytes()) != state.token_hash {
        return login_html(&next, Some("That is not this cluster's token."));
    }
    let secret = state.sessions.open();
    let cookie =
        format!("{COOKIE}={secret}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}", SESSION_LIFETIME.as_secs());
    HttpResponse::SeeOther()
        .insert_header((header::SET_COOKIE, cookie))
        .insert_header((header::LOCATION, next))
        .finish()
}

async fn logout(state: web::Data<AppState>, request: HttpRequest) -> HttpResponse {
    if let Some(secret) = session_of(&request) {
        state.sessions.close(&secret);
    }
    let cookie = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    HttpResponse::SeeOther()
        .insert_header((header::SET_COOKIE, cookie))
        .insert_header((header::LOCATION, "/login"))
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_open_check_and_close() {
        let sessions = Sessions::default();
        let secret = sessions.open();
        assert_eq!(secret.len(), 64);
        assert!(sessions.valid(&secret));
        assert!(!sessions.valid("guess"));
        sessions.close(&secret);
        assert!(!sessions.valid(&secret));
    }

    #[test]
    fn sessions_are_bounded() {
        let sessions = Sessions::default();
        let first = sessions.open();
        for _ in 0..MAX_SESSIONS {
            sessions.open();
        }
        assert!(!sessions.valid(&first), "the oldest session went first");
        assert_eq!(sessions.live.lock().unwrap().len(), MAX_SESSIONS);
    }

    #[test]
    fn cookies_and_next_paths_are_parsed_safely() {
        assert_eq!(cookie("a=1; manta_session=abc; b=2", COOKIE), Some("abc"));
        assert_eq!(cookie("manta_sessionx=abc", COOKIE), None);
        assert_eq!(safe_next(Some("/jobs?x=1")), "/jobs?x=1");
        assert_eq!(safe_next(Some("//evil.example")), "/");
        assert_eq!(safe_next(Some("https://evil.example")), "/");
        assert_eq!(safe_next(None), "/");
        assert_eq!(percent("/jobs?a=b c"), "/jobs%3Fa%3Db%20c");
    }
}
