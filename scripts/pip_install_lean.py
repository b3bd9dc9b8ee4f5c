"""Install a requirement into the running interpreter's environment with the least disk.

    python scripts/pip_install_lean.py ".[test]"

PyPI's torch for Linux pulls about 5 GB of CUDA libraries and a 1 GB compiler (triton). One plain
`pip install` holds every downloaded wheel until it ends, so its peak is the wheels plus what they
unpack to (about 10 GB). This resolves the requirement first (`pip install --dry-run --report`, which
reads only metadata), then installs the large distributions one `pip` call at a time with no cache,
so at most one wheel waits beside what is already installed, and finally the rest in one call.

triton is left out: torch needs it only to compile GPU code (`torch.compile` on CUDA), which the
tests never do. Everything else is installed at the versions pip resolved, with `--no-deps`, so
the result is what a plain install gives, less triton.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

SKIP = {"triton"}
LARGE_PREFIXES = ("torch", "nvidia-", "cuda-", "transformers", "diffusers", "scipy", "numpy")


def pip(*args):
    cmd = [sys.executable, "-m", "pip", *args]
    print("+ pip " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "PIP_NO_CACHE_DIR": "1"})


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: pip_install_lean.py REQUIREMENT")
    req = sys.argv[1]
    free = shutil.disk_usage(sys.prefix).free
    print(f"free disk where the environment lives: {free / 2**30:.1f} GiB", flush=True)
    total = 0
    # until the requirement resolves to nothing new: a fresh environment's first report has been
    # seen to leave out some distributions, which the next round installs
    for _ in range(3):
        n = install_round(req)
        if n == 0:
            break
        total += n
    else:
        sys.exit("pip_install_lean: the requirement still resolves to new distributions after 3 rounds")
    if local_needed(req):
        pip("install", "-q", "--no-deps", req)
    print(f"installed {total} distributions; free disk now "
          f"{shutil.disk_usage(sys.prefix).free / 2**30:.1f} GiB", flush=True)


def install_round(req):
    """Resolve req in the environment, install the missing third-party distributions (less SKIP)
    one large one at a time; return how many."""
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "report.json")
        pip("install", "-q", "--dry-run", "--report", report, req)
        with open(report) as f:
            items = json.load(f)["install"]
    pins = []
    for it in items:
        meta = it["metadata"]
        name = meta["name"].lower().replace("_", "-")
        if name in SKIP:
            print(f"leaving out {name} {meta['version']} (only for compiling GPU code)", flush=True)
            continue
        if not it["download_info"]["url"].startswith("file:"):
            pins.append(f"{name}=={meta['version']}")
    large = [p for p in pins if p.startswith(LARGE_PREFIXES)]
    small = [p for p in pins if p not in large]
    for p in large:
        pip("install", "-q", "--no-deps", p)
    if small:
        pip("install", "-q", "--no-deps", *small)
    return len(pins)


def local_needed(req):
    """Whether req names a local project (a path), which pip builds and installs itself."""
    return req.startswith((".", "/")) or os.path.isdir(req.split("[")[0])


if __name__ == "__main__":
    main()
