#!/usr/bin/env bash
# Debian packages the platform and its tests use: rsync (make data), chromium (browser tests, never
# a downloaded browser), docker-compose (v1.29: validates and runs docker-compose.yaml), and for the
# container test (make stack-test) docker.io (engine + CLI) and debootstrap (local base images);
# orthanc + orthanc-dicomweb: the local PACS.
# Installed when missing.
set -euo pipefail
missing=()
command -v rsync >/dev/null || missing+=(rsync)
command -v chromium >/dev/null || missing+=(chromium)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
# the local PACS (make run, tests/web/test_pacs.py): Orthanc and its DICOMweb plug-in
command -v Orthanc >/dev/null || [ -x /usr/sbin/Orthanc ] || missing+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing+=(orthanc-dicomweb)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null; then
  echo "warning: cannot install ${missing[*]} (not root, no sudo); the tests that need them will be skipped" >&2
  exit 0
fi
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
echo "installing Debian packages: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" fonts-dejavu-core >/dev/null
