#!/usr/bin/env bash
# Installs a consul binary into <repo>/.cache/consul/bin/consul for the tests, without touching
# anything system-wide. Consul is not packaged for bookworm, so this fetches Debian bullseye's
# `consul` .deb from the mirror the machine already uses, with apt pointed at private sources,
# lists and cache under .cache/consul/apt/, and unpacks it with `dpkg -x` (never `dpkg -i`).
# Prints the binary's path as the last line on stdout; everything else goes to stderr.
set -euo pipefail

say() { echo "install-consul: $*" >&2; }

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
base="$repo_root/.cache/consul"
bin="$base/bin/consul"

if [[ -x "$bin" ]] && "$bin" version >/dev/null 2>&1; then
  say "already installed: $bin"
  echo "$bin"
  exit 0
fi

# The Debian mirror this machine's own apt sources use (one-line .list or deb822 .sources
# format), so nothing reaches for a host the machine doesn't already talk to.
find_mirror() {
  local files=() f
  [[ -f /etc/apt/sources.list ]] && files+=(/etc/apt/sources.list)
  for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [[ -f "$f" ]] && files+=("$f")
  done
  ((${#files[@]})) || return 0
  {
    # one-line: deb [opts] URI suite components...
    sed -nE 's/^[[:space:]]*deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([a-z+]+:\/\/[^[:space:]]+).*/\2/p' "${files[@]}"
    # deb822: URIs: URI [URI...]
    sed -nE 's/^[[:space:]]*URIs:[[:space:]]*//p' "${files[@]}" | tr ' ' '\n'
  } | sed -E 's:/+$::' | grep -E '^https?://[^/]+/(.*/)?debian$' | head -n 1
}

mirror=$(find_mirror || true)
if [[ -z "$mirror" ]]; then
  say "no Debian mirror (…/debian) found in /etc/apt/sources.list{,.d/*}"
  exit 1
fi
say "using mirror $mirror (suite bullseye, component main)"

apt_dir="$base/apt"
rm -rf "$apt_dir" "$base/root" "$base/bin"
mkdir -p "$apt_dir/sources.list.d" "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" \
  "$apt_dir/debs" "$base/root" "$base/bin"

# Drop the system's APT::Update hooks (PackageKit, AppStream refresh): they act on system state.
cat >"$apt_dir/apt.conf" <<'EOF'
#clear APT::Update::Post-Invoke-Success;
#clear APT::Update::Post-Invoke;
EOF

apt_opts=(
  -c "$apt_dir/apt.conf"
  -o "Dir::Etc::SourceList=$apt_dir/sources.list"
  -o "Dir::Etc::SourceParts=$apt_dir/sources.list.d"
  -o "Dir::State::Lists=$apt_dir/lists"
  -o "Dir::Cache=$apt_dir/cache"
  -o "Dir::Cache::pkgcache="
  -o "Dir::Cache::srcpkgcache="
  # Files under .cache/ are not readable by the _apt sandbox user in general; download as root.
  -o "APT::Sandbox::User=root"
)

# Prefer a signed-by keyring the machine already has (its archive keyring carries the bullseye
# keys); only if none verifies, fall back to an unverified repository, loudly.
keyrings=(
  /usr/share/keyrings/debian-archive-keyring.gpg
  /usr/share/keyrings/debian-archive-bullseye-stable.gpg
  /usr/share/keyrings/debian-archive-bullseye-automatic.gpg
  /usr/share/keyrings/debian-archive-bookworm-automatic.gpg
)
updated=
for keyring in "${keyrings[@]}"; do
  [[ -f "$keyring" ]] || continue
  echo "deb [signed-by=$keyring] $mirror bullseye main" >"$apt_dir/sources.list"
  say "apt-get update (private lists, signed-by=$keyring)"
  if apt-get "${apt_opts[@]}" -q update >&2; then
    updated=1
    break
  fi
  say "update with $keyring failed"
done
if [[ -z "$updated" ]]; then
  # Fallback: the .deb's content is not verified. Acceptable only because it runs as a throwaway
  # test fixture on loopback; the warning says so.
  say "WARNING: no local keyring verifies bullseye's Release file; using [trusted=yes]"
  echo "deb [trusted=yes] $mirror bullseye main" >"$apt_dir/sources.list"
  apt-get "${apt_opts[@]}" -o Acquire::AllowInsecureRepositories=true -q update >&2
fi

say "apt-get download consul"
(cd "$apt_dir/debs" && apt-get "${apt_opts[@]}" -q download consul >&2)
deb=$(ls "$apt_dir"/debs/consul_*.deb | head -n 1)
say "dpkg -x $(basename "$deb") $base/root"
dpkg -x "$deb" "$base/root"

if [[ ! -x "$base/root/usr/bin/consul" ]]; then
  say "the package did not contain usr/bin/consul"
  exit 1
fi
ln -sfn ../root/usr/bin/consul "$bin"
"$bin" version >&2
echo "$bin"
