# Sourced by scripts/test.sh and scripts/bench-python-blocks.sh: installs what the Python client
# needs here when it is missing (python3, libatomic1 for its mapped writes, the cryptography
# package for its encrypted pools), puts a pip-installed package on PYTHONPATH, and defines
# `apt_install`.
# Debian packages, with sudo when not run as root.
apt_install() {
  local sudo=()
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then sudo=(sudo); fi
  "${sudo[@]}" apt-get update -qq && "${sudo[@]}" apt-get install -y -qq "$@"
}
if ! command -v python3 >/dev/null 2>&1; then
  echo "installing python3 (one time)" >&2
  apt_install python3
fi
# Its mapped block writes take the write side with libatomic's compare-and-swap (libatomic1),
# which the end-to-end tests expect to find.
if ! python3 -c 'import ctypes; ctypes.CDLL("libatomic.so.1")' 2>/dev/null; then
  echo "installing libatomic1 (one time)" >&2
  apt_install libatomic1
fi
# Its encrypted pools take their primitives from the cryptography package: Debian's for
# Debian's python3, else from pip into target/py.
if ! python3 -c 'import cryptography' 2>/dev/null; then
  echo "installing the cryptography package for python3 (one time)" >&2
  if [ "$(command -v python3)" = /usr/bin/python3 ]; then
    apt_install python3-cryptography
  else
    python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
    python3 -m pip install --quiet --disable-pip-version-check --target target/py cryptography
  fi
fi
if [ -d target/py/cryptography ]; then
  export PYTHONPATH="$PWD/target/py${PYTHONPATH:+:$PYTHONPATH}"
fi
