# Sourced by the build and test scripts: picks the nginx flavor (INWASM_NGINX: debian or
# 1.28), prepares its tree, and exports NGINX_BUILD_DIR for the nginx-sys build.
flavor=${INWASM_NGINX:-debian}
unset NGINX # nginx reads NGINX as a list of inherited sockets
NGINX_BUILD_DIR=$(bash ci/nginx-tree.sh "$flavor")
export NGINX_BUILD_DIR
