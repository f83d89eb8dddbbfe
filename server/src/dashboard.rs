//! The admin dashboard at `/admin/`: the files embedded in the binary at build time (see
//! `build.rs`: each with gzip and brotli versions made there), or, when `admin_dir` is set, the
//! files of that directory (for working on the dashboard). A path that is not a file gets
//! `index.html` (the dashboard's own routes).

use poem::http::{HeaderValue, StatusCode, header};
use poem::{Request, Response};

/// One embedded file.
pub struct Asset {
    pub path: &'static str,
    pub raw: &'static [u8],
    pub gzip: Option<&'static [u8]>,
    pub brotli: Option<&'static [u8]>,
}

include!(concat!(env!("OUT_DIR"), "/dashboard.rs"));

/// Whether this build carries the dashboard.
pub fn embedded() -> bool {
    !ASSETS.is_empty()
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

fn cache_control(path: &str) -> &'static str {
    if path == "index.html" { "no-cache" } else { "public, max-age=300" }
}

/// `/admin/*`.
#[poem::handler]
pub async fn admin(req: &Request, state: poem::web::Data<&crate::state::SharedState>) -> Response {
    let rel = req.uri().path().trim_start_matches("/admin").trim_start_matches('/');
    // Only plain relative paths.
    let safe = !rel.split('/').any(|seg| seg == ".." || seg.starts_with('.')) && !rel.contains('\\');
    let rel = if rel.is_empty() || !safe { "index.html" } else { rel };
    match &state.config.admin_dir {
        Some(dir) => from_disk(dir, rel).await,
        None => from_binary(req, rel),
    }
}

fn from_binary(req: &Request, rel: &str) -> Response {
    let Some(asset) =
        ASSETS.iter().find(|a| a.path == rel).or_else(|| ASSETS.iter().find(|a| a.path == "index.html"))
    else {
        return Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .content_type("text/html; charset=utf-8")
            .body(
                "<!doctype html><title>Herald</title><h1>The admin dashboard was left out of this build</h1>\
                 <p>This binary was built without <code>admin-ui/dist</code>. Build the dashboard with \
                 <code>cargo xtask dashboard</code> and then Herald again (<code>cargo xtask run</code> does \
                 both), or point <code>admin_dir</code> at a built dashboard. The REST API works without it.</p>",
            );
    };
    let (body, encoding) = match crate::compress::preferred_encoding(req) {
        Some("br") if asset.brotli.is_some() => (asset.brotli.unwrap_or_default(), Some("br")),
        Some(_) if asset.gzip.is_some() => (asset.gzip.unwrap_or_default(), Some("gzip")),
        _ => (asset.raw, None),
    };
    let mut resp = Response::builder()
        .content_type(content_type(asset.path))
        .header(header::CACHE_CONTROL, cache_control(asset.path))
        .header(header::VARY, "accept-encoding")
        .body(body);
    if let Some(e) = encoding {
        resp.headers_mut().insert(header::CONTENT_ENCODING, HeaderValue::from_static(e));
    }
    resp
}

async fn from_disk(dir: &std::path::Path, rel: &str) -> Response {
    let candidate = dir.join(rel);
    let path = if candidate.is_file() { candidate } else { dir.join("index.html") };
    match tokio::fs::read(&path).await {
        Ok(bytes) => {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let shown = if name == "index.html" { "index.html" } else { rel };
            Response::builder()
                .content_type(content_type(name))
                .header(header::CACHE_CONTROL, cache_control(shown))
                .body(bytes)
        }
        Err(_) => Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .content_type("text/html; charset=utf-8")
            .body(format!(
                "<!doctype html><title>Herald</title><h1>The admin dashboard is not in admin_dir</h1>\
                 <p>Expected it in <code>{}</code>. Build it with <code>cargo xtask dashboard</code>, or \
                 leave <code>admin_dir</code> unset to serve the one built into the binary.</p>",
                dir.display()
            )),
    }
}
