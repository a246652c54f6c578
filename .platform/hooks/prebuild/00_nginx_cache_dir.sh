#!/bin/bash
# Create the parent directory of every proxy_cache_path in .platform/nginx/conf.d/:
# nginx creates only the last component of a cache path, and the Amazon Linux 2023
# nginx package does not ship /var/cache/nginx. Without this, nginx cannot start on a
# new instance and every deploy fails (tests/test_nginx_platform.py shows both).
#
# The same file is .platform/confighooks/prebuild/00_nginx_cache_dir.sh, so a
# configuration deployment that replaces nginx's configuration gets it too.
set -euo pipefail

conf_dir="$(cd "$(dirname "$0")/../../nginx/conf.d" && pwd)"
paths="$(sed -n 's/^[[:space:]]*proxy_cache_path[[:space:]]\{1,\}\([^[:space:];]\{1,\}\).*/\1/p' \
  "$conf_dir"/*.conf)"
for path in $paths; do
  parent="$(dirname "$path")"
  mkdir -p "$parent"
  chmod 755 "$parent"
  echo "nginx cache parent $parent is ready for $path"
done
