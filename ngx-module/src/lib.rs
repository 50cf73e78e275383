//! nginx dynamic module: not built yet (see the nginx module issue).
