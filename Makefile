# The two set-up commands of the README. Each creates its own virtual environment first.
# TORCH is the CPU build on these machines; override it where you want another build,
# e.g. `make test TORCH="torch --index-url https://download.pytorch.org/whl/cu124"`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
PROMPT ?= a red circle on a blue background

.PHONY: demo test clean

$(VENV)/.installed: pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[export,dev]'
	# TensorRT's type stubs: only their .pyi text is read (API surface test); their
	# dependency on the real tensorrt package cannot be met without NVIDIA's index.
	$(PY) -m pip install -q --disable-pip-version-check --no-deps tensorrt-stubs==10.13.0.35.1
	# cuda-python imports without a GPU: lets the API-surface test check the cudart names too.
	$(PY) -m pip install -q --disable-pip-version-check 'cuda-python>=12.6.1'
	touch $@

demo: $(VENV)/.installed
	@mkdir -p outputs
	$(VENV)/bin/sdrt generate "$(PROMPT)" --seed 1 --output outputs/demo.png

test: $(VENV)/.installed
	$(VENV)/bin/pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) engines/*/ outputs
