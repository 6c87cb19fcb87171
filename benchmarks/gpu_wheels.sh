#!/usr/bin/env bash
# Download the wheels the GPU check needs and the GPU machine lacks, for its Python, into a git-ignored
# folder (default .gpu-wheels/), on a machine with a network (the GPU machine has none).
#
#   benchmarks/gpu_wheels.sh [--python-version 3.12] [--platform manylinux2014_x86_64] [--dest .gpu-wheels]
#
# The GPU machine brings Python 3.12, PyTorch 2.11 (CUDA 13), numpy, scipy, scikit-image, tifffile,
# pandas, pyarrow, matplotlib (so pillow and packaging) and tqdm. The library's modules that the check
# imports need besides: pydantic and PyYAML (unet/config.py: every stage's config, the train loop's
# TrainConfig), nibabel (unet/io/nifti.py: lgg-predict writes NIfTI), and, for the CUDA tests, pytest.
# With their dependencies that is the list below, each --no-deps, binary only (pydantic-core and PyYAML
# are compiled: hence the platform tag). Versions: those of this checkout's .venv where it has them
# (what the tests ran with), else the pins below. benchmarks/gpu_check.py installs from the folder only
# what the machine misses or holds older, into a throw-away folder on PYTHONPATH; never torch.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
pyver=3.12
platform=manylinux2014_x86_64
dest=$repo/.gpu-wheels
while [ $# -gt 0 ]; do
    case "$1" in
        --python-version) pyver=$2; shift 2 ;;
        --platform) platform=$2; shift 2 ;;
        --dest) dest=$2; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_wheels.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

# distribution==default pin; the .venv's version replaces the pin where the .venv has the package
pins=(
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
    typing-extensions==4.16.0 pyyaml==6.0.4 nibabel==5.4.2 packaging==26.4
    pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 pygments==2.21.0 pytest-timeout==2.4.0
)
venv=$repo/.venv/bin/python
if [ -x "$venv" ]; then
    mapfile -t pins < <("$venv" - "${pins[@]}" <<'PY'
import importlib.metadata as metadata
import sys
for pin in sys.argv[1:]:
    name, version = pin.split("==")
    try:
        version = metadata.version(name)
    except metadata.PackageNotFoundError:
        pass
    print(f"{name}=={version}")
PY
)
fi
pip=$(if [ -x "$venv" ]; then echo "$venv -m pip"; else echo "python3 -m pip"; fi)
mkdir -p "$dest"
echo "downloading for Python $pyver on $platform into $dest: ${pins[*]}"
$pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version "$pyver" --implementation cp --platform "$platform" -d "$dest" "${pins[@]}"
ls -1 "$dest"
echo "$(ls -1 "$dest"/*.whl | wc -l) wheels, $(du -sh "$dest" | cut -f1); keep them out of git (.gitignore: /.gpu-wheels/)"
