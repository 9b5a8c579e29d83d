//! wscap-envoy (placeholder).
