//! Nothing to compile: this package only makes `nginx-src` part of the lock file, so
//! `ci/nginx-tree.sh 1.28` can find its sources through `cargo metadata`.
