#!/bin/bash
# Give the web process APP_VERSION = the version label being deployed (the git SHA that
# ops.release passes to `eb deploy --label`), so /healthz shows which version answers.
# The label is in the deployment manifest; a systemd drop-in hands it to web.service.
set -euo pipefail

# (The three overrides exist only so tests can run this script.)
manifest="${APP_VERSION_MANIFEST:-/opt/elasticbeanstalk/deployment/app_version_manifest.json}"
dropin_dir="${SYSTEMD_DROPIN_DIR:-/etc/systemd/system/web.service.d}"
systemctl="${SYSTEMCTL:-systemctl}"
label="$(python3 - "$manifest" <<'PY'
import json, sys
data = json.load(open(sys.argv[1]))
label = data.get("VersionLabel")
if not label:  # older manifests: {"RuntimeSources": {"<app>": {"<label>": {...}}}}
    sources = next(iter(data["RuntimeSources"].values()))
    label = next(iter(sources))
print(label)
PY
)"

if [[ ! "$label" =~ ^[A-Za-z0-9._-]{1,100}$ ]]; then
  echo "unexpected version label '$label' in $manifest" >&2
  exit 1
fi

mkdir -p "$dropin_dir"
printf '[Service]\nEnvironment=APP_VERSION=%s\n' "$label" > "$dropin_dir/app-version.conf"
"$systemctl" daemon-reload
echo "APP_VERSION=$label"
