#!/usr/bin/env bash
# System tools the device tests need, installed with apt-get only when missing (idempotent; apt-get update only
# when something is missing):
#   qemu-aarch64 (qemu-user)   runs the aarch64 builds for the Pi 5 and the phone on this machine
#   sshd / ssh (openssh-*)     the SSH device path is tested against a real server on 127.0.0.1
#   adb                        the ADB device path uses Debian's client
# The cross-compiler itself comes from PyPI (ziglang, the `build` extra), so none is installed here.
set -euo pipefail

declare -A want=(
    [qemu-aarch64]=qemu-user
    [sshd]=openssh-server
    [ssh]=openssh-client
    [ssh-keygen]=openssh-client
    [adb]=adb
)
# sshd lives in /usr/sbin, which is not on every PATH
export PATH="$PATH:/usr/sbin:/sbin"

missing=()
for tool in "${!want[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("${want[$tool]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
if ! command -v apt-get >/dev/null 2>&1; then
    echo "missing: ${missing[*]} (no apt-get here: install them with your system's package manager)" >&2
    exit 1
fi
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
echo "installing system packages: ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
