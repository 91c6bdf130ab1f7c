//! The web page at `/`: plain HTML, CSS and JavaScript modules from `web/`, compiled into the
//! binary. The page talks only to `/api/v1` on the same origin and loads nothing from elsewhere;
//! its Content-Security-Policy says so to the browser as well.

use axum::Router;
use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::error::ApiError;

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Same origin only: scripts, styles, fetches and the live WebSocket.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const INDEX: &str = include_str!("../../web/index.html");

/// The assets under `/assets/`: file name, content type, content.
const ASSETS: &[(&str, &str, &str)] = &[
    ("app.js", JS, include_str!("../../web/app.js")),
    ("api.js", JS, include_str!("../../web/api.js")),
    ("live.js", JS, include_str!("../../web/live.js")),
    ("style.css", CSS, include_str!("../../web/style.css")),
];

/// The page and its assets. Needs no state, so it merges into any router.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/assets/{file}", get(asset))
}

async fn index() -> Response {
    serve(HTML, INDEX)
}

async fn asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    let (_, content_type, body) = ASSETS
        .iter()
        .find(|(name, _, _)| *name == file)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such asset"))?;
    Ok(serve(content_type, body))
}

/// A static body. `no-cache`: the browser asks again each time, so a new binary's page shows at once.
fn serve(content_type: &'static str, body: &'static str) -> Response {
    let headers = [
        (CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP)),
        (
            HeaderName::from_static("x-content-type-options"),
            HeaderValue::from_static("nosniff"),
        ),
    ];
    (headers, body).into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    async fn get(path: &str) -> (StatusCode, String, String) {
        let response = routes::<()>()
            .fallback(crate::api::error::not_found)
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let content_type = response.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_string();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn root_is_the_page_and_scripts_are_javascript() {
        let (status, content_type, body) = get("/").await;
        assert_eq!(status, StatusCode::OK);
        assert!(content_type.starts_with("text/html"), "{content_type}");
        assert!(body.contains(r#"src="/assets/app.js""#));
        for (file, _, _) in ASSETS.iter().filter(|(f, _, _)| f.ends_with(".js")) {
            let (status, content_type, _) = get(&format!("/assets/{file}")).await;
            assert_eq!(status, StatusCode::OK, "{file}");
            assert!(
                content_type.starts_with("text/javascript"),
                "{content_type}"
            );
        }
        let (_, content_type, _) = get("/assets/style.css").await;
        assert!(content_type.starts_with("text/css"), "{content_type}");
    }

    #[tokio::test]
    async fn unknown_assets_are_a_json_404() {
        let (status, content_type, body) = get("/assets/nope.js").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(
            content_type.starts_with("application/json"),
            "{content_type}"
        );
        assert!(body.contains("not_found"), "{body}");
    }

    #[test]
    fn every_module_the_page_imports_is_served() {
        let sources = ASSETS.iter().map(|(_, _, body)| *body).chain([INDEX]);
        for source in sources {
            for part in source.split("'./").skip(1) {
                let file = part.split('\'').next().unwrap();
                assert!(
                    ASSETS.iter().any(|(f, _, _)| *f == file),
                    "{file} not served"
                );
            }
        }
    }
}
