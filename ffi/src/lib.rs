//! wscap-ffi (placeholder).
