//! Side-by-side benchmark drivers live in `benches/`.
