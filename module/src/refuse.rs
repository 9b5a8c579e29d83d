//! `"refuse_with": "close_1013"`: a refusal a browser's page script can see.
//!
//! Browsers' WebSocket API hides the handshake's status: a `503` is only "connection failed".
//! With `close_1013` the module answers the upgrade itself with `101 Switching Protocols`
//! (a valid `sec-websocket-accept` for the client's key) and then one WebSocket close frame,
//! code 1013 "Try Again Later", with the refusal reason as its text, and ends the stream. The
//! page's `onclose` sees `code == 1013` and `reason`. Observed on Envoy 1.40.0 in
//! `tests/tests/refuse_close.rs` (a tungstenite client reads the close code and reason).

use base64::Engine as _;
use sha1::Digest as _;

/// How a refusal is answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RefuseWith {
    /// `503` with `retry-after` and `x-wscap-reason` (the default).
    #[default]
    Status503,
    /// `101`, then a close frame 1013 with the reason.
    Close1013,
}

impl RefuseWith {
    /// Parses `"503"` or `"close_1013"`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "503" => Ok(RefuseWith::Status503),
            "close_1013" => Ok(RefuseWith::Close1013),
            other => Err(format!(
                "\"refuse_with\" must be \"503\" or \"close_1013\" (got {other:?})"
            )),
        }
    }
}

/// The close code "Try Again Later" (RFC 6455 registry).
pub const TRY_AGAIN_LATER: u16 = 1013;

/// `sec-websocket-accept` for a client's `sec-websocket-key` (RFC 6455 section 4.2.2).
///
/// ```
/// // The example of RFC 6455 section 1.3.
/// assert_eq!(wscap::refuse::accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
/// ```
pub fn accept_key(key: &[u8]) -> String {
    let mut h = sha1::Sha1::new();
    h.update(key.trim_ascii());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// An unmasked server close frame with `code` and `reason` (cut to the 123 bytes a control
/// frame allows, at a character boundary).
///
/// ```
/// let f = wscap::refuse::close_frame(1013, "no_capacity");
/// assert_eq!(&f[..4], &[0x88, 13, 0x03, 0xF5]);
/// assert_eq!(&f[4..], b"no_capacity");
/// ```
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    let mut f = Vec::with_capacity(4 + reason.len());
    f.push(0x88);
    f.push(u8::try_from(2 + reason.len()).unwrap_or(125));
    f.extend_from_slice(&code.to_be_bytes());
    f.extend_from_slice(reason);
    f
}
