#!/usr/bin/env bash
# Installs what building, running and testing the balancer needs on a fresh Debian 12 host.
# Idempotent: every step checks first and says what it does; a machine that has it all
# passes through in well under a second. Versions follow shared/TOOLCHAIN.md.
set -euo pipefail

say() { printf 'setup: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    say "must run as root (installs packages, mounts bpffs, attaches XDP)"
    exit 1
fi

apt_packages=(llvm-22-dev libpolly-22-dev bpftool iproute2 ethtool curl bind9-dnsutils dnsperf gdnsd)
# The Debian package: dpkg-shlibdeps (dpkg-dev) gives cargo-deb the Depends line;
# systemd-analyze (systemd) verifies the packaged unit in the package test.
apt_packages+=(dpkg-dev systemd)
# promtool (checks and unit-tests deploy/prometheus/lb-alerts.yml) comes with Prometheus.
apt_packages+=(prometheus)
# The drill draws its PNG with DejaVuSans.ttf (plotters' bitmap backend has no font of its own).
apt_packages+=(fonts-dejavu-core)
# `lb capture`'s integration test reads what it wrote with tcpdump.
apt_packages+=(tcpdump)
# The fleet: BIRD 2 announces the VIPs by BGP (birdc drives it); the fleet's tests cut links
# with nftables.
apt_packages+=(bird2 nftables)
missing=()
for pkg in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# nsenter (tests enter network namespaces) comes with util-linux, which Debian always has;
# install it only if it is somehow gone.
command -v nsenter >/dev/null 2>&1 || missing+=(util-linux)
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # The benchmark runs its own gdnsd on loopback; the package's service is not wanted.
    if [[ " ${missing[*]} " == *" gdnsd "* ]] && [ -d /run/systemd/system ]; then
        say "disabling the gdnsd service the package started (the benchmark runs its own)"
        systemctl disable --now gdnsd >/dev/null 2>&1 || true
    fi
    # The package starts a Prometheus server; the tests only need its promtool.
    if [[ " ${missing[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
        say "disabling the prometheus service the package started (the tests need only promtool)"
        systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
    # The package starts a BIRD with its own config; lb's BIRD is started by config/bird-lb.service
    # (and the tests run their own, each with its config and socket).
    if [[ " ${missing[*]} " == *" bird2 "* ]] && [ -d /run/systemd/system ]; then
        say "disabling the bird service the package started (lb's BIRD has its own unit)"
        systemctl disable --now bird >/dev/null 2>&1 || true
    fi
fi

if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
    say "adding rust-src to the nightly toolchain (needed to build core for bpfel)"
    rustup component add rust-src --toolchain nightly
fi

if ! command -v bpf-linker >/dev/null 2>&1 || ! bpf-linker --version 2>/dev/null | grep -q '0\.13\.0'; then
    say "installing bpf-linker 0.13.0 against LLVM 22 (about a minute)"
    PATH=/usr/lib/llvm-22/bin:$PATH cargo install --locked bpf-linker@0.13.0 \
        --no-default-features --features llvm-22
fi

if ! cargo deb --version 2>/dev/null | grep -q '3\.8\.0'; then
    say "installing cargo-deb 3.8.0 (makes the Debian package; a few minutes)"
    cargo install --locked cargo-deb@3.8.0
fi

if ! mountpoint -q /sys/fs/bpf; then
    say "mounting bpffs at /sys/fs/bpf"
    mkdir -p /sys/fs/bpf
    mount -t bpf bpf /sys/fs/bpf
fi
