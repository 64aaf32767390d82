//! The `likeness:` URI scheme: the page's only way to see images. Photos and outputs are
//! decrypted from the vault in memory for each request and never written anywhere in the clear.
//!
//! - `likeness://localhost/output/<output id>`: a finished headshot
//! - `likeness://localhost/input/<job id>/<n>`: a job's n-th photo (the "before"; from memory for
//!   jobs made in this session, else from the vault while a job still needs it)
//! - `likeness://localhost/staged/<staged id>`: a photo picked or dropped, not yet in a job

use likeness_core::{JobId, OutputId};
use tauri::http::{header, Response, StatusCode};

use crate::commands::sniff_image;
use crate::error::IpcError;
use crate::state::{lock, AppState};

pub const SCHEME: &str = "likeness";

/// Answers one request path (the URI's path, e.g. `/output/abc`).
pub fn serve(state: &AppState, path: &str) -> Response<Vec<u8>> {
    match bytes_for(state, path) {
        Ok(bytes) => {
            let kind = sniff_image(&bytes).unwrap_or("application/octet-stream");
            Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, kind)
                .header(header::CACHE_CONTROL, "no-store")
                .header("X-Content-Type-Options", "nosniff")
                .body(bytes)
                .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "response"))
        }
        Err(e) => plain(if e.code == "not_found" { StatusCode::NOT_FOUND } else { StatusCode::BAD_REQUEST }, &e.message),
    }
}

fn plain(status: StatusCode, message: &str) -> Response<Vec<u8>> {
    let mut r = Response::new(message.as_bytes().to_vec());
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

fn bytes_for(state: &AppState, path: &str) -> Result<Vec<u8>, IpcError> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["output", id] => Ok(lock(state.library()?).get_output(&OutputId((*id).to_string()))?.to_vec()),
        ["input", job, n] => {
            let n: usize = n.parse().map_err(|_| IpcError::invalid(format!("'{n}' is not a photo number")))?;
            let remembered = lock(&state.before).iter().find(|(j, _)| j.0 == *job).and_then(|(_, p)| p.get(n).map(|b| b.to_vec()));
            if let Some(bytes) = remembered {
                return Ok(bytes);
            }
            let inputs = lock(state.library()?).job_inputs(&JobId((*job).to_string()))?;
            inputs
                .get(n)
                .map(|(_, b)| b.to_vec())
                .ok_or_else(|| IpcError::not_found(format!("job {job} has no photo {n} (photos are deleted once no job needs them)")))
        }
        ["staged", id] => lock(&state.staged)
            .get(*id)
            .map(|s| s.bytes.to_vec())
            .ok_or_else(|| IpcError::not_found(format!("photo {id} is no longer waiting"))),
        _ => Err(IpcError::not_found(format!("nothing at {path}"))),
    }
}
