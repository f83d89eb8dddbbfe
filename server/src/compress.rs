//! Compression of the REST API's JSON answers (brotli or gzip, as the client accepts) with
//! the `brotli` and `flate2` crates. Only complete JSON bodies of at least
//! [`COMPRESS_FROM`] bytes are compressed; event streams, WebSocket upgrades and small answers
//! pass as they are.

use std::io::Write;

use poem::http::{HeaderValue, header};
use poem::{Endpoint, IntoResponse, Middleware, Request, Response};

/// Smaller answers are sent as they are (compression would not pay).
pub const COMPRESS_FROM: usize = 1024;

pub struct Compress;

impl<E: Endpoint> Middleware<E> for Compress {
    type Output = CompressEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        CompressEndpoint(ep)
    }
}

pub struct CompressEndpoint<E>(E);

fn is_json(resp: &Response) -> bool {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json") || t.starts_with("application/problem+json"))
}

impl<E: Endpoint> Endpoint for CompressEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        let encoding = crate::dashboard::preferred_encoding(&req);
        let resp = self.0.call(req).await?.into_response();
        let Some(encoding) = encoding else { return Ok(resp) };
        if !is_json(&resp) || resp.headers().contains_key(header::CONTENT_ENCODING) {
            return Ok(resp);
        }
        let (mut parts, body) = resp.into_parts();
        let bytes = body.into_bytes().await?;
        if bytes.len() < COMPRESS_FROM {
            return Ok(Response::from_parts(parts, bytes.into()));
        }
        let packed = match encoding {
            "br" => {
                let mut out = Vec::with_capacity(bytes.len() / 4);
                let params = brotli::enc::BrotliEncoderParams { quality: 5, lgwin: 20, ..Default::default() };
                brotli::BrotliCompress(&mut bytes.as_ref(), &mut out, &params).map(|_| out)
            }
            _ => {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
                gz.write_all(&bytes).and_then(|()| gz.finish())
            }
        };
        let Ok(packed) = packed else { return Ok(Response::from_parts(parts, bytes.into())) };
        parts.headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding));
        parts.headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        parts.headers.remove(header::CONTENT_LENGTH);
        Ok(Response::from_parts(parts, packed.into()))
    }
}
