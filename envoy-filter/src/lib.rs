//! Envoy dynamic module: not built yet (see the Envoy issue).
