#!/usr/bin/env bash
# Installs the peers weir-bench measures weir against (idempotent: what is there is
# left alone):
#   - collectd 5.12 with its statsd and write_prometheus plugins (Debian collectd-core,
#     plus the two libraries write_prometheus links to, which collectd-core only
#     recommends),
#   - vmagent (Debian victoria-metrics ships it) and Prometheus 2.42 (agent mode),
#   - prometheus-cpp 1.0.1 headers and libraries (Debian prometheus-cpp-dev) for the
#     in-process comparison,
#   - the etsy StatsD daemon (npm statsd, pinned) into benches/peers/node_modules.
# Services the packages' postinst scripts start are stopped again, so that nothing
# holds a default port (8125, 9090, 8428, 9103).
# Usage: benches/setup-peers.sh
set -euo pipefail

cd "$(dirname "$0")"

as_root=()
if [ "$(id -u)" -ne 0 ]; then
    as_root=(sudo)
fi

packages=()
command -v collectd >/dev/null || packages+=(collectd-core)
[ -e /usr/lib/x86_64-linux-gnu/libmicrohttpd.so.12 ] || packages+=(libmicrohttpd12)
[ -e /usr/lib/x86_64-linux-gnu/libprotobuf-c.so.1 ] || packages+=(libprotobuf-c1)
command -v vmagent >/dev/null || packages+=(victoria-metrics)
command -v prometheus >/dev/null || packages+=(prometheus)
[ -e /usr/include/prometheus/counter.h ] || packages+=(prometheus-cpp-dev)
command -v node >/dev/null || packages+=(nodejs npm)
if [ "${#packages[@]}" -gt 0 ]; then
    "${as_root[@]}" apt-get update -q
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${packages[@]}"
    for service in collectd prometheus victoria-metrics; do
        if [ -x "/etc/init.d/$service" ] && "${as_root[@]}" "/etc/init.d/$service" status >/dev/null 2>&1; then
            echo "stopping the $service service the package started"
            "${as_root[@]}" "/etc/init.d/$service" stop
        fi
    done
fi

# The etsy StatsD daemon, local to benches/ (peers/ is git-ignored).
STATSD_VERSION=0.9.0
if [ ! -f peers/node_modules/statsd/package.json ] \
    || ! grep -q "\"version\": \"$STATSD_VERSION\"" peers/node_modules/statsd/package.json; then
    mkdir -p peers
    npm install --prefix peers --no-audit --no-fund --omit=optional "statsd@$STATSD_VERSION"
fi

echo "collectd:   $(collectd -h 2>&1 | grep -m1 -o 'collectd [0-9.]*' || echo missing)"
echo "statsd:     $(grep -m1 '"version"' peers/node_modules/statsd/package.json)"
echo "vmagent:    $(vmagent -version 2>&1 | head -1)"
echo "prometheus: $(prometheus --version 2>&1 | head -1)"
echo "prometheus-cpp: $(dpkg-query -W -f '${Version}' prometheus-cpp-dev 2>/dev/null || echo missing)"
