# Every target bootstraps .venv (stdlib venv + pip) and installs the project into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
FUZZ_EXAMPLES ?= 20000

.PHONY: all demo test serve bench fuzz lint soak corpus eval emulate clean venv browser

all: test

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[test,bench]'
	@touch $(BENCH_STAMP)

demo: $(STAMP)
	$(VENV)/bin/sori demo

# tests/scale start a real redis-server (Debian's package); they skip with the reason if it cannot be installed.
test: $(STAMP) browser
	@command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server) || echo "redis-server could not be installed: tests/scale will skip"
	$(PY) -m pytest

# Headless Chromium (and a Korean font) for tests/report/test_browser.py, which loads the HTML report and the
# admin /status page. When it cannot be installed (no root, no network) those tests skip and say why.
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) || true
	@fc-list :lang=ko 2>/dev/null | grep -q . || (apt-get update -qq && apt-get install -y -qq fonts-nanum) || true

serve: $(STAMP)
	$(VENV)/bin/sori serve $(ARGS)

emulate: $(STAMP)
	$(VENV)/bin/sori emulate-rtzr $(ARGS)

fuzz: $(STAMP)
	SORI_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest fuzz

soak: $(STAMP)
	SORI_SOAK=1 $(PY) -m pytest tests/reliability -m "slow or not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check engine tests fuzz bench conftest.py
	$(VENV)/bin/mypy

ASTERISK_SOUNDS := asterisk-core-sounds-en-wav asterisk-core-sounds-es-wav asterisk-core-sounds-fr-wav asterisk-core-sounds-it-wav
# the `extra` split's voices (ru, Italian Menardi: wav; Colombian Spanish, French Armelle: GSM 06.10, decoded by
# libgsm-tools' untoast)
ASTERISK_SOUNDS += asterisk-core-sounds-ru-wav asterisk-prompt-it-menardi-wav asterisk-prompt-es-co asterisk-prompt-fr-armelle libgsm-tools

# Full corpora (gitignored): bench/corpus_full (espeak-ng, synthetic) and bench/corpus_real_full
# (real recorded prompts, dev + test + extra splits). The committed subsets are bench/corpus and bench/corpus_real.
corpus: $(BENCH_STAMP)
	@command -v espeak-ng >/dev/null || (apt-get update -qq && apt-get install -y -qq espeak-ng)
	@dpkg -s $(ASTERISK_SOUNDS) >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq $(ASTERISK_SOUNDS))
	$(PY) bench/corpus.py --full
	$(PY) bench/corpus_real.py --full

eval: $(BENCH_STAMP)
	$(PY) bench/endpointing_eval.py $(ARGS)

bench: $(BENCH_STAMP)
	@command -v espeak-ng >/dev/null || (apt-get update -qq && apt-get install -y -qq espeak-ng) || true
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info
