//! A small built-in origin for trying cachet without any other service:
//! `cachet serve --config examples/cachet.toml --demo-origin 127.0.0.1:8000`.
//! Each page shows a different caching situation; the index links only to pages that exist,
//! and a test follows every link through cachet with the demo's plugin.

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Default)]
pub struct DemoOrigin {
    served: AtomicU64,
}

const INDEX: &str = "<!doctype html><title>cachet demo origin</title>
<h1>cachet demo origin</h1>
<ul>
<li><a href=\"/page\">/page</a> Cache-Control: max-age=30</li>
<li><a href=\"/static/app.css?utm_source=demo\">/static/app.css</a> no freshness headers</li>
<li><a href=\"/api/time\">/api/time</a> JSON, no freshness headers</li>
<li><a href=\"/private\">/private</a> Cache-Control: private</li>
</ul>
<p>Compare the Cache-Status response header, and the origin counter below.</p>\n";

impl DemoOrigin {
    fn page(&self, path: &str) -> (StatusCode, Vec<(&'static str, String)>, String) {
        let n = self.served.fetch_add(1, Ordering::Relaxed) + 1;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let counter = format!("origin response #{n} at unix time {now}\n");
        match path {
            "/" => (
                StatusCode::OK,
                vec![
                    ("content-type", "text/html".into()),
                    ("cache-control", "max-age=5".into()),
                ],
                format!("{INDEX}<p>{counter}</p>"),
            ),
            "/page" => (
                StatusCode::OK,
                vec![
                    ("content-type", "text/plain".into()),
                    ("cache-control", "max-age=30".into()),
                ],
                counter,
            ),
            "/static/app.css" => (
                StatusCode::OK,
                vec![("content-type", "text/css".into())],
                format!("/* {counter} */ body {{ font-family: sans-serif; }}\n"),
            ),
            "/api/time" => (
                StatusCode::OK,
                vec![("content-type", "application/json".into())],
                format!("{{\"unix_time\": {now}, \"origin_response\": {n}}}\n"),
            ),
            "/private" => (
                StatusCode::OK,
                vec![
                    ("content-type", "text/plain".into()),
                    ("cache-control", "private, max-age=60".into()),
                ],
                counter,
            ),
            _ => (
                StatusCode::NOT_FOUND,
                vec![("content-type", "text/plain".into())],
                "not found\n".into(),
            ),
        }
    }
}

#[async_trait]
impl ServeHttp for DemoOrigin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_owned();
        let (status, headers, body) = self.page(&path);
        let mut builder = Response::builder().status(status);
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        builder
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(body.into_bytes())
            .unwrap_or_default()
    }
}
