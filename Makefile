# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[cpu,test,bench,eval]'
	# compile the mihc query and keypoint matching kernels once, into numba's disk cache (else the first query does)
	$(PY) -c 'from shards.index import make_index; from shards import match_kernel; make_index("mihc").warm_up(); match_kernel.warm_up()'
	# export the bundled model's ONNX program once, into the cache (NEARDUP_CACHE_DIR, else ~/.cache/neardup): no later process imports torch to encode on CPU
	$(PY) -c 'from PIL import Image; from encoders.registry import get_encoder; get_encoder("deephash").encode([Image.new("RGB", (64, 64))])'
	touch $(STAMP)

demo: install
	$(VENV)/bin/neardup demo

test: install
	$(PY) -m pytest -q tests

bench: install
	$(PY) -m bench.shard_bench --quick

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
