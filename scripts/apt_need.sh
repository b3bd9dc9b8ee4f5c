# Sourced by the scripts that need Debian packages (bootstrap.sh, test_arm64.sh, test_mpi.sh).
# apt_need WHO PKG...: installs the packages that are not installed yet (as root), else names
# them and exits 1. A package NAME:ARCH (libcjson-dev:arm64) adds the foreign architecture first.
apt_need() {
  local who=$1 p arch hint=""
  shift
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    for p in "${missing[@]}"; do
      case $p in *:*) hint="; the ${p##*:} ones need 'dpkg --add-architecture ${p##*:}'" ;; esac
    done
    echo "$who: missing packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]}$hint)" >&2
    exit 1
  fi
  echo "$who: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  for p in "${missing[@]}"; do
    case $p in
      *:*) arch=${p##*:}
           dpkg --print-foreign-architectures | grep -qx "$arch" || dpkg --add-architecture "$arch" ;;
    esac
  done
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
