//! wscap demo (placeholder, being written).

fn main() {}
