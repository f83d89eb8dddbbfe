//! Compression of the REST API's JSON answers (brotli or gzip, as the client accepts) with
//! the `brotli` and `flate2` crates. Only complete JSON bodies of at least
//! [`COMPRESS_FROM`] bytes are compressed; event streams, WebSocket upgrades and small answers
//! pass as they are.

use std::io::Write;

use poem::http::{HeaderValue, header};
use poem::{Endpoint, IntoResponse, Request, Response};

/// Smaller answers are sent as they are (compression would not pay).
pub const COMPRESS_FROM: usize = 1024;

/// The encodings the request accepts, of those Herald sends: brotli first, then gzip.
pub fn preferred_encoding(req: &Request) -> Option<&'static str> {
    let accept = req.headers().get(header::ACCEPT_ENCODING)?.to_str().ok()?;
    let takes = |coding: &str| {
        accept.split(',').any(|part| {
            let mut it = part.trim().split(';');
            let name = it.next().unwrap_or("").trim();
            let refused = it.any(|p| {
                p.trim().strip_prefix("q=").is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q <= 0.0))
            });
            name.eq_ignore_ascii_case(coding) && !refused
        })
    };
    if takes("br") {
        Some("br")
    } else if takes("gzip") {
        Some("gzip")
    } else {
        None
    }
}

fn is_json(resp: &Response) -> bool {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json") || t.starts_with("application/problem+json"))
}

fn pack(encoding: &str, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    match encoding {
        "br" => {
            let mut out = Vec::with_capacity(bytes.len() / 4);
            let params = brotli::enc::BrotliEncoderParams { quality: 5, lgwin: 20, ..Default::default() };
            brotli::BrotliCompress(&mut &bytes[..], &mut out, &params).map(|_| out)
        }
        _ => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
            gz.write_all(bytes).and_then(|()| gz.finish())
        }
    }
}

/// Compresses `ep`'s JSON answer when the request accepts it; used with
/// [`poem::EndpointExt::around`].
pub async fn compress<E: Endpoint>(ep: std::sync::Arc<E>, req: Request) -> poem::Result<Response> {
    let encoding = preferred_encoding(&req);
    let resp = ep.call(req).await?.into_response();
    let Some(encoding) = encoding else { return Ok(resp) };
    if !is_json(&resp) || resp.headers().contains_key(header::CONTENT_ENCODING) {
        return Ok(resp);
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = body.into_bytes().await?;
    if bytes.len() < COMPRESS_FROM {
        return Ok(Response::from_parts(parts, bytes.into()));
    }
    // CPU work: off the async workers, so a large answer never stalls other connections.
    let input = bytes.clone();
    let packed = tokio::task::spawn_blocking(move || pack(encoding, &input))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    let Ok(packed) = packed else { return Ok(Response::from_parts(parts, bytes.into())) };
    parts.headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding));
    parts.headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    parts.headers.remove(header::CONTENT_LENGTH);
    Ok(Response::from_parts(parts, packed.into()))
}
