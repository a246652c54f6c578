#!/bin/bash
# Mount the EFS file system that holds DATA_DIR, before the app starts on this instance.
# Fails the deploy (exit 1) when it cannot: an instance keeping links on its own disk
# would lose them at the next deploy and disagree with every other instance.
#
# The same file is .platform/confighooks/prebuild/01_mount_efs.sh: a configuration
# deployment (eb setenv EFS_FILE_SYSTEM_ID=...) runs confighooks, not hooks, and must
# remount when the id changed (tests/test_ebconfig.py checks the two are identical).
set -euo pipefail

# (These overrides exist only so tests can run this script.)
GET_CONFIG="${GET_CONFIG:-/opt/elasticbeanstalk/bin/get-config}"
FSTAB="${FSTAB:-/etc/fstab}"
MOUNT="${MOUNT:-mount}"
UMOUNT="${UMOUNT:-umount}"
MOUNTPOINT="${MOUNTPOINT:-mountpoint}"
CHOWN="${CHOWN:-chown}"
get() { "$GET_CONFIG" environment -k "$1" 2>/dev/null || true; }
fs_id="$(get EFS_FILE_SYSTEM_ID)"
mount_dir="$(get EFS_MOUNT_DIR)"
data_dir="$(get DATA_DIR)"
mount_dir="${mount_dir:-/mnt/efs}"

if [[ ! "$fs_id" =~ ^fs-[0-9a-f]{8,40}$ ]]; then
  echo "EFS_FILE_SYSTEM_ID is '$fs_id', not an EFS id (fs-...): set it with" \
       "'eb setenv EFS_FILE_SYSTEM_ID=fs-...' (docs/deploying.md, EFS)" >&2
  exit 1
fi

if [[ "$data_dir" != "$mount_dir"/* ]]; then
  echo "DATA_DIR is '$data_dir', not inside the EFS mount $mount_dir: links kept there" \
       "would be lost when this instance is replaced" >&2
  exit 1
fi

# A different file system in fstab for this directory: the id was changed. Forget it
# and detach it (lazily: the running app lets go of it when it restarts).
touch "$FSTAB"
previous="$(awk -v dir="$mount_dir" '$2 == dir && $3 == "efs" { print $1 }' "$FSTAB")"
if [[ -n "$previous" && "$previous" != "$fs_id:/" ]]; then
  echo "EFS_FILE_SYSTEM_ID changed from ${previous%:/} to $fs_id: remounting $mount_dir"
  awk -v dir="$mount_dir" '!($2 == dir && $3 == "efs")' "$FSTAB" > "$FSTAB.new"
  cat "$FSTAB.new" > "$FSTAB" && rm -f "$FSTAB.new"
  if "$MOUNTPOINT" -q "$mount_dir"; then "$UMOUNT" -l "$mount_dir"; fi
fi

mkdir -p "$mount_dir"
if ! grep -q "^$fs_id:/ $mount_dir " "$FSTAB"; then
  echo "$fs_id:/ $mount_dir efs _netdev,tls,noresvport 0 0" >> "$FSTAB"
fi
if ! "$MOUNTPOINT" -q "$mount_dir"; then
  "$MOUNT" "$mount_dir"
fi
"$MOUNTPOINT" -q "$mount_dir" || { echo "EFS $fs_id is not mounted on $mount_dir" >&2; exit 1; }

mkdir -p "$data_dir"
"$CHOWN" webapp:webapp "$data_dir"
echo "EFS $fs_id mounted on $mount_dir; DATA_DIR=$data_dir"
