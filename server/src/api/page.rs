//! Keyset pagination: `?limit=&cursor=`, answered with `items` and `next_cursor`. Cursors are
//! opaque to clients (base64url of the last key seen).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::{ApiError, ApiResult, Code};

pub const DEFAULT_PAGE: u32 = 50;
pub const MAX_PAGE: u32 = 200;

pub struct PageParams {
    pub limit: u32,
    pub after: Option<String>,
}

pub struct Cursor;

impl Cursor {
    pub fn encode(key: &str) -> String {
        URL_SAFE_NO_PAD.encode(key.as_bytes())
    }

    pub fn decode(cursor: &str) -> ApiResult<String> {
        URL_SAFE_NO_PAD
            .decode(cursor.as_bytes())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .filter(|s| !s.is_empty() && s.len() <= 512)
            .ok_or_else(|| ApiError::new(Code::InvalidCursor, "cursor is malformed").with_field("cursor"))
    }
}

impl PageParams {
    pub fn new(limit: Option<u32>, cursor: Option<String>) -> ApiResult<Self> {
        let limit = limit.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(ApiError::new(Code::InvalidParameter, format!("limit must be 1..={MAX_PAGE}"))
                .with_field("limit"));
        }
        let after = cursor.as_deref().map(Cursor::decode).transpose()?;
        Ok(PageParams { limit, after })
    }

    /// How many rows to fetch: one more than the page, to learn whether another page exists.
    pub fn fetch(&self) -> u64 {
        u64::from(self.limit) + 1
    }

    /// Trims the extra row and returns the cursor of the next page, if any.
    pub fn finish<T>(&self, items: &mut Vec<T>, key: impl Fn(&T) -> String) -> Option<String> {
        if items.len() > self.limit as usize {
            items.truncate(self.limit as usize);
            items.last().map(|last| Cursor::encode(&key(last)))
        } else {
            None
        }
    }
}
